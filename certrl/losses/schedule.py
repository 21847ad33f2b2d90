"""The "smoothed" eps schedule of CROWN-IBP / SA-DQN and the CROWN-IBP beta schedule.

With target eps E, warm-up end t0 = ``start``, ramp end t2 = start + length and the
switch point t1 = t0 + mid * (t2 - t0)::

    eps(t) = 0                                  t <= t0
    eps(t) = a (t - t0)^p                       t0 < t <= t1   (polynomial)
    eps(t) = a m^p + a p m^(p-1) (t - t1)        t1 < t <= t2   (linear, C^1 at t1)
    eps(t) = E                                  t > t2

with m = t1 - t0, n = t2 - t1 and a = E / (m^p + p m^(p-1) n) so that eps(t2) = E.
CROWN-IBP's mixing weight beta anneals 1 -> 0 with the ramp: beta(t) = 1 - eps(t) / E.
"""

from __future__ import annotations

from dataclasses import dataclass


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class EpsSchedule:
    """Warm-up / polynomial / linear / constant eps schedule (fractions of training steps).

    Attributes:
        warmup: fraction of ``total_steps`` with eps = 0 (plain training).
        ramp: fraction of ``total_steps`` over which eps grows to the target.
        mid: fraction of the ramp that is polynomial (the rest is linear).
        power: exponent p of the polynomial part.
        total_steps: the run's length in env steps (set by ``setup`` from the algorithm).
    """

    warmup: float = 0.2
    ramp: float = 0.4
    mid: float = 0.25
    power: float = 4.0
    total_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup", "ramp", "mid"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"EpsSchedule.{name} must lie in [0, 1]; got {v}")
        if self.warmup + self.ramp > 1.0 + 1e-9:
            raise ValueError("EpsSchedule: warmup + ramp must be <= 1")
        if self.power < 1.0:
            raise ValueError(f"EpsSchedule.power must be >= 1; got {self.power}")

    def fraction(self, step: int) -> float:
        """eps(step) / target in [0, 1]."""
        total = max(1, int(self.total_steps))
        t0 = self.warmup * total
        t2 = t0 + self.ramp * total
        t = float(step)
        if t <= t0:
            return 0.0
        if t >= t2:
            return 1.0
        t1 = t0 + self.mid * (t2 - t0)
        m, n, p = t1 - t0, t2 - t1, self.power
        if m <= 0:  # purely linear ramp
            return (t - t0) / (t2 - t0)
        a = 1.0 / (m ** p + p * m ** (p - 1) * n)
        if t <= t1:
            return a * (t - t0) ** p
        return a * m ** p + a * p * m ** (p - 1) * (t - t1)

    def eps(self, step: int, target: float) -> float:
        """The scheduled eps at ``step`` for the target radius."""
        return float(target) * self.fraction(step)

    def beta(self, step: int) -> float:
        """CROWN-IBP mixing weight 1 - eps(step)/target (1 at the start, 0 after the ramp)."""
        return 1.0 - self.fraction(step)


def ppo_reference_ramp() -> EpsSchedule:
    """The robust-PPO references' schedule (SA_PPO / CAR-RL / WocaR-PPO configs,
    ``robust_ppo_eps_scheduler_opts`` "start=1,length=732" of ``train_steps`` 976):
    eps linear from the start over the first 75% of training, then constant."""
    return EpsSchedule(warmup=0.0, ramp=0.75, mid=0.0, power=1.0)
