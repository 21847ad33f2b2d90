"""bounds: sound output bounds of neural networks over l_p perturbation sets.

Public contract (see docs/bounds.md)::

    ball = bounds.LpBall(x, eps, norm=float("inf"), lower=None, upper=None)
    lb, ub = bounds.compute(net, ball, method="crown", C=None, backend="native")
    lbm = bounds.margin_lower(net, ball, labels, method="crown", backend="native")
"""

from bounds.layers import Normalize
from bounds.perturbation import LpBall

__all__ = ["LpBall", "Normalize"]
__version__ = "0.1.0"
