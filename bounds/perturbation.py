"""Perturbation sets: l_p balls around a batch of inputs, clipped to a domain."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensorish = float | int | torch.Tensor

_NORM_NAMES = {"inf": math.inf, "linf": math.inf, "infinity": math.inf, "2": 2.0, "l2": 2.0,
               "1": 1.0, "l1": 1.0}
_NORM_VALUES = (math.inf, 2.0, 1.0)


def parse_norm(norm) -> float:
    """The l_p norm named by ``norm`` as a float p in {inf, 2.0, 1.0}.

    Accepts numbers (``float("inf")``, 2, 1) and strings, case-insensitive, with
    or without underscores or an ``l`` prefix: "inf", "linf", "l_inf", "infinity",
    "2", "l2", "l_2", "1", "l1", "l_1" (numeric strings such as "2.0" too).
    Raises ValueError for anything else.
    """
    if isinstance(norm, str):
        key = norm.strip().lower().replace("_", "")
        if key in _NORM_NAMES:
            return _NORM_NAMES[key]
    try:
        value = float(norm)
    except (TypeError, ValueError):
        raise ValueError(f"unknown norm {norm!r}; use 'inf', 2 or 1") from None
    if value not in _NORM_VALUES:
        raise ValueError(f"unsupported norm {norm!r}; use float('inf'), 2 or 1")
    return value


def dual_norm(p: float) -> float:
    """Hoelder conjugate q of p (1/p + 1/q = 1): inf <-> 1, 2 <-> 2."""
    if p == float("inf"):
        return 1.0
    if p == 1.0:
        return float("inf")
    return 2.0


def _broadcasts_to(shape, target) -> bool:
    """True when a tensor of ``shape`` broadcasts *to* ``target`` (the result is ``target``).

    ``torch.broadcast_shapes`` alone also accepts shapes that would enlarge the
    result, e.g. eps (B, 1, d) with a center (B, d) gives (B, B, d).
    """
    try:
        return tuple(torch.broadcast_shapes(shape, target)) == tuple(target)
    except RuntimeError:
        return False


def _as_number_tensor(value, name: str, center: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor of the center's dtype/device; ValueError if it is not numeric."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ValueError(
            f"{name} must be a number or a tensor of numbers; got {type(value).__name__} "
            f"{value!r}"
        )
    try:
        return torch.as_tensor(value, dtype=center.dtype, device=center.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{name} must be a number or a tensor of numbers; got {type(value).__name__} "
            f"{_short(value)}"
        ) from None


def _short(value, limit: int = 80) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _non_finite_message(eps, eps_t: torch.Tensor, dtype: torch.dtype) -> str:
    """Why eps is not finite, stating the value the caller gave (no tensor dump)."""
    try:
        given = torch.as_tensor(eps, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        given = eps_t.double()
    name = str(dtype).removeprefix("torch.")
    if given.numel() and bool(torch.isfinite(given).all()):
        value = float(given.abs().max())
        what = f"eps {value:g}" if given.numel() == 1 else f"eps (largest entry {value:g})"
        return (f"{what} overflows {name} (largest finite value {torch.finfo(dtype).max:g}); "
                f"eps must be finite")
    if given.numel() == 1:
        return f"eps must be finite; got {float(given.reshape(()))}"
    bad = int((~torch.isfinite(eps_t)).sum())
    return f"eps must be finite; {bad} of its {eps_t.numel()} entries are NaN, inf or overflow"


@dataclass(frozen=True)
class LpBall:
    """The set {x' : ||(x' - x) / eps||_p <= 1} intersected with [lower, upper].

    Args:
        center: (B, *shape) batch of centers x.
        eps: radius; a scalar, or a tensor broadcastable to ``center`` for a
            per-dimension radius (an axis-aligned box for l_inf, an ellipsoid
            for l_2, a scaled cross-polytope for l_1). Must be >= 0 and finite.
        norm: float('inf'), 2 or 1 (strings 'inf', 'l2', ... accepted).
        lower, upper: optional domain clip (scalars or tensors broadcastable to
            ``center``); the perturbation set is intersected with the box
            [lower, upper]. The center itself must lie in the box.
    """

    center: torch.Tensor
    eps: torch.Tensor
    norm: float = float("inf")
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None

    def __init__(self, center, eps: Tensorish, norm=float("inf"), lower=None, upper=None):
        if not isinstance(center, torch.Tensor):
            center = torch.as_tensor(center, dtype=torch.get_default_dtype())
        if not center.is_floating_point():
            center = center.to(torch.get_default_dtype())
        if center.dim() < 2:
            raise ValueError(
                f"center must be a batch of shape (B, *in_shape); got shape {tuple(center.shape)}"
            )
        if not torch.isfinite(center).all():
            raise ValueError("center contains NaN or inf values")
        eps_t = _as_number_tensor(eps, "eps", center)
        if not torch.isfinite(eps_t).all():
            raise ValueError(_non_finite_message(eps, eps_t, center.dtype))
        if (eps_t < 0).any():
            raise ValueError(f"eps must be >= 0; got min eps {float(eps_t.min())}")
        if not _broadcasts_to(eps_t.shape, center.shape):
            raise ValueError(
                f"eps of shape {tuple(eps_t.shape)} does not broadcast to center shape "
                f"{tuple(center.shape)}"
            )
        p = parse_norm(norm)
        lo = self._bound(lower, center, "lower")
        hi = self._bound(upper, center, "upper")
        if lo is not None and hi is not None and (lo > hi).any():
            raise ValueError("domain clip has lower > upper somewhere")
        tol = 1e-6
        if lo is not None and (center < lo - tol).any():
            raise ValueError("center lies below the domain's lower bound")
        if hi is not None and (center > hi + tol).any():
            raise ValueError("center lies above the domain's upper bound")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "eps", eps_t)
        object.__setattr__(self, "norm", p)
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    @staticmethod
    def _bound(value, center: torch.Tensor, name: str) -> torch.Tensor | None:
        if value is None:
            return None
        t = _as_number_tensor(value, f"domain {name} bound", center)
        if torch.isnan(t).any():
            raise ValueError(f"domain {name} bound contains NaN")
        if not _broadcasts_to(t.shape, center.shape):
            raise ValueError(
                f"domain {name} bound of shape {tuple(t.shape)} does not broadcast to "
                f"center shape {tuple(center.shape)}"
            )
        return t

    @classmethod
    def trusted(cls, center: torch.Tensor, eps: torch.Tensor, norm: float,
                lower: torch.Tensor | None = None,
                upper: torch.Tensor | None = None) -> LpBall:
        """The ball with these fields as given, without any validation or conversion.

        For internal callers that derive a ball from an already validated one
        (e.g. folding a normalization into it): ``center`` (B, *shape) float
        tensor, ``eps`` >= 0 broadcastable to it, ``norm`` already parsed
        (inf, 2.0 or 1.0), ``lower`` <= center <= ``upper`` or None.
        """
        ball = cls.__new__(cls)
        object.__setattr__(ball, "center", center)
        object.__setattr__(ball, "eps", eps)
        object.__setattr__(ball, "norm", norm)
        object.__setattr__(ball, "lower", lower)
        object.__setattr__(ball, "upper", upper)
        return ball

    # ------------------------------------------------------------------ helpers
    @property
    def batch_size(self) -> int:
        return self.center.shape[0]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    @property
    def clipped(self) -> bool:
        return self.lower is not None or self.upper is not None

    def eps_full(self) -> torch.Tensor:
        """eps broadcast to the center's shape."""
        return self.eps.expand_as(self.center)

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Smallest axis-aligned box [xl, xu] containing the set (elementwise).

        For every norm each coordinate moves by at most eps_i, so the box is
        [x - eps, x + eps] intersected with the domain.
        """
        e = self.eps_full()
        xl, xu = self.center - e, self.center + e
        if self.lower is not None:
            xl = torch.maximum(xl, self.lower.expand_as(xl))
        if self.upper is not None:
            xu = torch.minimum(xu, self.upper.expand_as(xu))
        return xl, xu

    def concretize(self, A: torch.Tensor, sign: float = -1.0) -> torch.Tensor:
        """Bound of A x' over the set (batched): min (sign=-1) or max (sign=+1).

        A: (B, m, *in_shape). Returns (B, m). Uses the dual norm for the ball,
        ``min A x = A x - ||A * eps||_q``; for l_inf it is exact on the clipped
        box. For l_2 / l_1 with a domain clip it returns the tighter of the ball
        bound and the box bound (both are sound, the set lies in each).
        """
        B, m = A.shape[0], A.shape[1]
        Af = A.reshape(B, m, -1)
        if self.norm == float("inf") or self.clipped:
            xl, xu = self.box()
            xl = xl.reshape(B, 1, -1)
            xu = xu.reshape(B, 1, -1)
            mid, rad = (xu + xl) * 0.5, (xu - xl) * 0.5
            box_val = (Af * mid).sum(-1) + sign * (Af.abs() * rad).sum(-1)
            if self.norm == float("inf"):
                return box_val
        x = self.center.reshape(B, 1, -1)
        e = self.eps_full().reshape(B, 1, -1)
        q = dual_norm(self.norm)
        ball_val = (Af * x).sum(-1) + sign * torch.linalg.vector_norm(Af * e, ord=q, dim=-1)
        if self.clipped:
            pick = torch.maximum if sign < 0 else torch.minimum
            return pick(ball_val, box_val)
        return ball_val

    def contains(self, points: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
        """Which of ``points`` (B, *shape) or (N, B, *shape) lie in the set (bool)."""
        d = points - self.center
        e = self.eps_full()
        safe = torch.where(e > 0, e, torch.ones_like(e))
        scaled = torch.where(e > 0, d / safe, torch.where(d.abs() <= tol, 0.0, math.inf))
        flat = scaled.reshape(*scaled.shape[: scaled.dim() - self.center.dim() + 1], -1)
        ok = torch.linalg.vector_norm(flat, ord=self.norm, dim=-1) <= 1 + tol
        if self.lower is not None:
            ok &= (points >= self.lower - tol).reshape(*ok.shape, -1).all(-1)
        if self.upper is not None:
            ok &= (points <= self.upper + tol).reshape(*ok.shape, -1).all(-1)
        return ok

    def to(self, device) -> LpBall:
        return LpBall(
            self.center.to(device),
            self.eps.to(device),
            self.norm,
            None if self.lower is None else self.lower.to(device),
            None if self.upper is None else self.upper.to(device),
        )
