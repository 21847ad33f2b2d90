"""bounds: sound output bounds of neural networks over l_p perturbation sets.

Public contract (see docs/bounds.md)::

    ball = bounds.LpBall(x, eps, norm=float("inf"), lower=None, upper=None)
    lb, ub = bounds.compute(net, ball, method="crown", C=None, backend="native")
    lbm = bounds.margin_lower(net, ball, labels, method="crown", backend="native")
"""

from bounds.api import BACKENDS, METHODS, certified, compute, margin_lower, preactivation_bounds
from bounds.graph import UnsupportedLayerError, unsupported_layers
from bounds.layers import Normalize
from bounds.perturbation import LpBall
from bounds.spec import margin_spec

__all__ = [
    "BACKENDS",
    "METHODS",
    "LpBall",
    "Normalize",
    "UnsupportedLayerError",
    "certified",
    "compute",
    "margin_lower",
    "margin_spec",
    "preactivation_bounds",
    "unsupported_layers",
]
__version__ = "0.1.0"
