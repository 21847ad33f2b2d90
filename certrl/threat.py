"""The threat model: who may perturb what, by how much, and in which space.

An adversary adds delta to the *observation* the agent sees (true state and
dynamics are untouched), with ||delta||_p <= eps measured on the network input
(after preprocessing), the result clipped to the input domain [lower, upper].

With a per-dimension ``scale`` s (one positive entry per element of the
flattened network input) the set is {x' : ||(x' - x) / s||_p <= eps} clipped to
the domain: a box of half-widths eps * s_i for l_inf, an axis-scaled ellipsoid
for l_2 and cross-polytope for l_1 (SA-DQN's classic-control convention scales
eps by each dimension's state std; see ``certrl.obs_stats``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

import bounds
from bounds.perturbation import parse_norm  # the project's one norm parser

SPACE_PIXELS = "[0,1]-scaled pixels"
SPACE_NORMALIZED = "running-mean/std normalized observation"
SPACE_RAW = "raw observation"
BUDGETS = ("per-step", "episode")


def norm_name(norm: float) -> str:
    """'inf', '2' or '1' (a JSON-safe spelling of the norm)."""
    return "inf" if norm == math.inf else str(int(norm))


@dataclass
class ThreatModel:
    """An l_p observation perturbation of radius ``eps`` in network-input space.

    Attributes:
        norm: inf, 2 or 1.
        eps: radius (>= 0, finite), measured in ``space``.
        space: words naming the space eps is measured in (network input).
        lower, upper: domain clip of the perturbed input (None = unbounded).
        budget: "per-step" (a fresh eps-ball at each step) or "episode"
            (a total budget over the episode, used by trajectory certificates).
        scale: None (the plain eps-ball) or one positive finite factor per
            element of the flattened network input: the set becomes
            {x' : ||(x' - x) / scale||_p <= eps} (per-dimension radius
            eps * scale_i for l_inf).
    """

    norm: float = math.inf
    eps: float = 0.0
    space: str = "network input"
    lower: float | None = None
    upper: float | None = None
    budget: str = "per-step"
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.norm = parse_norm(self.norm)
        self.scale = parse_scale(self.scale)
        self.eps = check_eps(self.eps)
        for name in ("lower", "upper"):
            v = getattr(self, name)
            if v is not None:
                v = float(v)
                if math.isnan(v):
                    raise ValueError(f"ThreatModel.{name} is NaN")
                setattr(self, name, v)
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"ThreatModel: lower {self.lower} > upper {self.upper}")
        if self.budget not in BUDGETS:
            raise ValueError(f"ThreatModel.budget must be one of {BUDGETS}; got {self.budget!r}")
        if not isinstance(self.space, str) or not self.space:
            raise ValueError("ThreatModel.space must be a non-empty string")

    def with_eps(self, eps: float) -> ThreatModel:
        """A copy with another radius."""
        d = self.to_dict()
        d["eps"] = eps
        return ThreatModel.from_dict(d)

    def eps_tensor(self, eps, x: torch.Tensor) -> torch.Tensor:
        """The radius of every element of ``x`` (B, *shape), broadcastable to ``x``.

        ``eps``: None (this model's radius), one radius (checked by ``check_eps``)
        or a tensor of per-state radii (B,) (not checked here: ``bounds.LpBall``
        checks them). Returns eps * scale: a 0-dim tensor (scalar eps, no scale),
        (B, 1, ..., 1) (per-state eps, no scale), (*shape) (scalar eps with scale) or
        (B, *shape) (per-state eps with scale); dtype and device of ``x``.
        ValueError if the scale's length is not the number of input elements.
        """
        if eps is None:
            e = torch.tensor(self.eps, dtype=x.dtype, device=x.device)
        elif isinstance(eps, torch.Tensor) and eps.dim() > 0:
            if eps.numel() != x.shape[0]:
                raise ValueError(f"per-state eps has {eps.numel()} entries for a batch of "
                                 f"{x.shape[0]} states")
            e = eps.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))
        else:
            e = torch.tensor(check_eps(eps), dtype=x.dtype, device=x.device)
        if self.scale is None:
            return e
        return e * self.scale_tensor(x)

    def scale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The scale shaped like one input ``x[0]`` (ones when there is no scale);
        ValueError when its length differs from the input's element count."""
        shape = tuple(x.shape[1:])
        if self.scale is None:
            return torch.ones(shape, dtype=x.dtype, device=x.device)
        n = math.prod(shape)
        if len(self.scale) != n:
            raise ValueError(
                f"threat-model scale has {len(self.scale)} entries but the network input "
                f"{shape} has {n} elements (one scale entry per input element)")
        return torch.tensor(self.scale, dtype=x.dtype, device=x.device).reshape(shape)

    def ball(self, x: torch.Tensor, eps=None) -> bounds.LpBall:
        """The perturbation set around the batch ``x`` (B, *shape) as a ``bounds.LpBall``.

        ``eps``: None (this model's radius), one radius (checked by ``check_eps``)
        or a tensor of per-state radii (B,) (checked by ``bounds.LpBall``: finite,
        >= 0): state b gets the ball of radius eps[b]. With a ``scale`` the ball's
        eps is the elementwise tensor ``eps_tensor(eps, x)`` = eps * scale.
        """
        if self.scale is None and not (isinstance(eps, torch.Tensor) and eps.dim() > 0):
            e = self.eps if eps is None else check_eps(eps)  # a plain scalar, as before
        else:
            e = self.eps_tensor(eps, x)
        return bounds.LpBall(x, e, norm=self.norm, lower=self.lower, upper=self.upper)

    def max_shift(self, eps=None, norm: float = math.inf, dim: int | None = None) -> float:
        """sup ||x' - x||_norm over the (unclipped) set at radius ``eps`` (default this
        model's): the radius of the smallest plain ``norm``-ball holding the set.

        l_inf target: eps * max(scale). l_2 target: eps * ||scale||_2 for an l_inf
        model (eps * sqrt(dim) without a scale, ``dim`` = input elements), else
        eps * max(scale). Used to convert to plain-ball certificates (Lipschitz,
        randomized smoothing, policy smoothing): the set lies inside that ball.
        """
        e = self.eps if eps is None else check_eps(eps)
        target = parse_norm(norm)
        if target not in (math.inf, 2.0):
            raise ValueError("max_shift: target norm must be inf or 2")
        s = np.ones(1) if self.scale is None else np.asarray(self.scale, dtype=np.float64)
        if target == math.inf or self.norm != math.inf:
            return e * float(s.max())
        if self.scale is None:
            if dim is None or int(dim) < 1:
                raise ValueError("max_shift: give dim (input elements) for an l_inf model")
            return e * math.sqrt(int(dim))
        return e * float(np.linalg.norm(s))

    def describe(self) -> str:
        """One human-readable line for captions, e.g.
        "l_inf eps 0.05 x scale (0.732, 1.06, 0.122, 0.439), raw observation"."""
        text = f"{'l_inf' if self.norm == math.inf else f'l_{int(self.norm)}'} eps {self.eps:g}"
        if self.scale is not None:
            text += " x scale (" + ", ".join(f"{v:.3g}" for v in self.scale) + ")"
        text += f", {self.space}"
        if self.lower is not None or self.upper is not None:
            lo = "-inf" if self.lower is None else f"{self.lower:g}"
            hi = "inf" if self.upper is None else f"{self.upper:g}"
            text += f", clipped to [{lo}, {hi}]"
        if self.budget != "per-step":
            text += f", {self.budget} budget"
        return text

    def with_scale(self, scale) -> ThreatModel:
        """A copy with another per-dimension scale (None: the plain ball)."""
        d = self.to_dict()
        d.pop("scale", None)
        if scale is not None:
            d["scale"] = scale
        return ThreatModel.from_dict(d)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Clip ``x`` to the domain [lower, upper] (no-op where unbounded)."""
        if self.lower is None and self.upper is None:
            return x
        return x.clamp(min=self.lower, max=self.upper)

    def to_dict(self) -> dict:
        """JSON-able dict (norm spelled 'inf', '2' or '1'); "scale" (a list) only when set,
        so unscaled threat models serialise (and hash) exactly as before it existed."""
        d = asdict(self)
        d["norm"] = norm_name(self.norm)
        if self.scale is None:
            d.pop("scale")
        else:
            d["scale"] = list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ThreatModel:
        """Inverse of ``to_dict``; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"threat model must be a dict; got {type(d).__name__}")
        known = {"norm", "eps", "space", "lower", "upper", "budget", "scale"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown threat-model fields: {sorted(extra)}")
        return cls(**d)


def parse_scale(scale) -> tuple[float, ...] | None:
    """A per-dimension scale as a tuple of positive finite floats, or None.

    Accepts None, "none" / "" (no scale), a comma-separated string ("0.73,1.06"), or a
    sequence / numpy array / tensor of numbers (flattened). ValueError otherwise:
    empty, non-numeric, NaN, infinite, <= 0, or too large for float32.
    """
    if scale is None or (isinstance(scale, str) and scale.strip().lower() in ("", "none")):
        return None
    if isinstance(scale, str):
        parts = [p for p in scale.replace(" ", "").split(",") if p]
    elif isinstance(scale, (Sequence, np.ndarray, torch.Tensor)):
        parts = list(np.asarray(scale.detach().cpu() if isinstance(scale, torch.Tensor)
                                else scale, dtype=object).reshape(-1))
    else:
        raise ValueError(f"scale must be None, a comma-separated string or a sequence of "
                         f"numbers; got {type(scale).__name__}")
    if not parts:
        raise ValueError("scale is empty; give one positive factor per input element")
    out = []
    for i, p in enumerate(parts):
        v = as_number(p, f"scale[{i}]")
        if not math.isfinite(v) or v <= 0 or v > FLOAT32_MAX:
            raise ValueError(f"scale[{i}] must be positive and finite; got {v}")
        out.append(v)
    return tuple(out)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def as_number(v, what: str) -> float:
    """float(v); ValueError naming ``what`` for a bool or anything float() refuses."""
    if isinstance(v, bool):
        raise ValueError(f"{what} must be a number; got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number; got {v!r}") from None


def check_eps(eps) -> float:
    """Return eps as a float; raise ValueError if negative, NaN, infinite, or too large
    to be finite in float32 (the networks' dtype: such an eps would turn into inf)."""
    value = as_number(eps, "eps")
    if math.isnan(value):
        raise ValueError("eps is NaN")
    if math.isinf(value):
        raise ValueError("eps must be finite")
    if value < 0:
        raise ValueError(f"eps must be >= 0; got {value}")
    if value > FLOAT32_MAX:
        raise ValueError(
            f"eps {value:g} is too large: it overflows float32 (largest finite value "
            f"{FLOAT32_MAX:g})"
        )
    return value


def default_threat_model(env_family: str, eps: float = 0.0, norm=math.inf) -> ThreatModel:
    """Conventional threat model of an env family: 'atari', 'mujoco' or 'classic'."""
    if env_family == "atari":
        return ThreatModel(norm=norm, eps=eps, space=SPACE_PIXELS, lower=0.0, upper=1.0)
    if env_family == "mujoco":
        return ThreatModel(norm=norm, eps=eps, space=SPACE_NORMALIZED)
    if env_family == "classic":
        return ThreatModel(norm=norm, eps=eps, space=SPACE_RAW)
    raise ValueError(f"unknown env family {env_family!r}")
