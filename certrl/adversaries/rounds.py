"""What the learned adversaries' trainers (Robust Sarsa, the adversary PPO) share: a budget
of victim env steps spent in rounds of ``steps_per_iter`` steps, each round ``epochs`` passes
over ``minibatches`` minibatches, and an MLP of widths ``hidden``."""

from __future__ import annotations

import math
from dataclasses import asdict

COUNTS = ("budget", "steps_per_iter", "epochs", "minibatches")


class RoundsConfig:
    """Mixin of the trainers' config dataclasses (fields ``budget``, ``steps_per_iter``,
    ``epochs``, ``minibatches``, ``hidden``): checks, round count, JSON form."""

    def __post_init__(self) -> None:
        for name in COUNTS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive integer; "
                                 f"got {v!r}")
        self.hidden = tuple(int(h) for h in self.hidden)

    @property
    def iterations(self) -> int:
        """Rounds: ceil(budget / steps_per_iter), at least 1."""
        return max(1, math.ceil(self.budget / self.steps_per_iter))

    def to_dict(self) -> dict:
        """The fields as JSON values (``hidden`` as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d
