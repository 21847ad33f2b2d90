"""bounds: sound output bounds of neural networks over l_p perturbation sets.

Public contract (see docs/bounds.md)::

    ball = bounds.LpBall(x, eps, norm=float("inf"), lower=None, upper=None)
    lb, ub = bounds.compute(net, ball, method="crown", C=None, backend="native")
    lbm = bounds.margin_lower(net, ball, labels, method="crown", backend="native")
    bound = bounds.bind(net, backend="native")   # checked once, reused for many balls
    lb, ub = bound.compute(ball, method="crown", C=None)
"""

from bounds import exact, lipschitz, smoothing
from bounds.api import (
    BACKENDS,
    METHODS,
    BoundNetwork,
    MarginProblem,
    bind,
    certified,
    compute,
    margin_lower,
    preactivation_bounds,
)
from bounds.exact import lp_margin, milp_margin
from bounds.graph import UnsupportedLayerError, unsupported_layers
from bounds.layers import Normalize
from bounds.lipschitz import (
    LinfDistLayer,
    LipschitzMLP,
    SortNetLayer,
    global_lipschitz,
    lipschitz_margin_certificate,
    lipsdp_l2,
    margin_radius,
)
from bounds.onnx_io import from_onnx as from_onnx  # needs the onnx package when called
from bounds.perturbation import LpBall, parse_norm
from bounds.smoothing import certified_linf, linf_to_l2
from bounds.spec import margin_spec
from bounds.verify import VerifyResult, verify
from bounds.vnnlib import VnnlibSpec, read_vnnlib, verify_vnnlib

__all__ = [
    "exact",
    "lipschitz",
    "smoothing",
    "LinfDistLayer",
    "LipschitzMLP",
    "SortNetLayer",
    "certified_linf",
    "global_lipschitz",
    "linf_to_l2",
    "lipschitz_margin_certificate",
    "lipsdp_l2",
    "margin_radius",
    "lp_margin",
    "milp_margin",
    "BACKENDS",
    "METHODS",
    "LpBall",
    "BoundNetwork",
    "MarginProblem",
    "bind",
    "parse_norm",
    "Normalize",
    "UnsupportedLayerError",
    "certified",
    "compute",
    "margin_lower",
    "margin_spec",
    "preactivation_bounds",
    "unsupported_layers",
    "VerifyResult",
    "verify",
    "VnnlibSpec",
    "read_vnnlib",
    "verify_vnnlib",
]
__version__ = "0.1.0"
