"""The threat model: who may perturb what, by how much, and in which space.

An adversary adds delta to the *observation* the agent sees (true state and
dynamics are untouched), with ||delta||_p <= eps measured on the network input
(after preprocessing), the result clipped to the input domain [lower, upper].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
    """

    norm: float = math.inf
    eps: float = 0.0
    space: str = "network input"
    lower: float | None = None
    upper: float | None = None
    budget: str = "per-step"

    def __post_init__(self) -> None:
        self.norm = parse_norm(self.norm)
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

    def ball(self, x: torch.Tensor, eps=None) -> bounds.LpBall:
        """The perturbation set around the batch ``x`` (B, *shape) as a ``bounds.LpBall``.

        ``eps``: None (this model's radius), one radius (checked by ``check_eps``)
        or a tensor of per-state radii (B,) (checked by ``bounds.LpBall``: finite,
        >= 0): state b gets the ball of radius eps[b].
        """
        if eps is None:
            e = self.eps
        elif isinstance(eps, torch.Tensor) and eps.dim() > 0:
            e = eps.to(x.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))
        else:
            e = check_eps(eps)
        return bounds.LpBall(x, e, norm=self.norm, lower=self.lower, upper=self.upper)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        """Clip ``x`` to the domain [lower, upper] (no-op where unbounded)."""
        if self.lower is None and self.upper is None:
            return x
        return x.clamp(min=self.lower, max=self.upper)

    def to_dict(self) -> dict:
        """JSON-able dict (norm spelled 'inf', '2' or '1')."""
        d = asdict(self)
        d["norm"] = norm_name(self.norm)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ThreatModel:
        """Inverse of ``to_dict``; unknown keys raise ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"threat model must be a dict; got {type(d).__name__}")
        known = {"norm", "eps", "space", "lower", "upper", "budget"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown threat-model fields: {sorted(extra)}")
        return cls(**d)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_eps(eps) -> float:
    """Return eps as a float; raise ValueError if negative, NaN, infinite, or too large
    to be finite in float32 (the networks' dtype: such an eps would turn into inf)."""
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a number; got {eps!r}")
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps must be a number; got {eps!r}") from None
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
