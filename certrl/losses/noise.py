"""Gaussian noise augmentation (training for randomized-smoothing certificates).

DQN (``NoiseDQNLoss``): the TD loss is taken at noisy states,

    loss = mean_i Huber(Q(x_i + sigma_t z_i, a_i) - y_i),   z_i ~ N(0, I) fresh per row and
                                                            per gradient step,

with y_i the double-DQN target at the clean next state x'_i (S-DQN's denoiser loss keeps
the target clean), or at x'_i + sigma_t z'_i with ``noise_next`` (the policy-smoothing
training wrapper puts noise on every observation, so s and s' are both noisy).

PPO (``NoisePPOLoss``): the clipped surrogate is taken at noisy states,
L = mean max(-A r, -A clip(r, 1 - c, 1 + c)), r = pi(a | x + sigma_t z) / pi_old(a | x).

The noise is isotropic N(0, sigma^2 I) in the network-input space, the distribution
``bounds.smoothing`` and ``certrl.certify`` smooth with (their certificates are for that
noise; a per-dimension threat-model scale enters the certificates only through the
conversion of eps to an l2 radius). sigma_t = schedule.fraction(t) * sigma (default: no
warm-up and no ramp, a constant sigma as in S-DQN's released configs). The noise comes
from the loss's own generator (seeded from the run seed; its state is saved for
``--resume``). See docs/smoothing.md "Training for smoothing".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig
from certrl.losses.schedule import EpsSchedule

NOISE_SEED_OFFSET = 104_729  # the generator is seeded with run seed + this (any fixed int)


def constant_schedule() -> EpsSchedule:
    """sigma_t = sigma from the first step (no warm-up, no ramp)."""
    return EpsSchedule(warmup=0.0, ramp=0.0)


@dataclass
class NoiseConfig:
    """Noise augmentation: std ``sigma`` (> 0, network-input units), ``noise_next`` (also
    noise s' in the DQN target), sigma schedule (``warmup`` / ``ramp`` fractions).
    ``solver`` is unused (there is no inner problem) and kept only so the shared
    ``make_loss`` can build this loss like the others; it is not recorded."""

    sigma: float = 0.1
    noise_next: bool = False
    schedule: EpsSchedule = field(default_factory=constant_schedule)
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (
                math.isfinite(s) and s > 0):
            raise ValueError(f"noise sigma must be a finite number > 0; got {s!r}")
        self.sigma = float(s)
        self.noise_next = bool(self.noise_next)


class _NoiseLoss(ScheduledLoss):
    """Shared parts: the generator, the sigma schedule, resume state, config."""

    config_cls = NoiseConfig
    name = "noise"

    def __init__(self, cfg: Any = None):
        super().__init__(cfg)
        self.generator = torch.Generator().manual_seed(NOISE_SEED_OFFSET)

    def setup(self, nets: dict[str, nn.Module], cfg: Any) -> None:
        """Schedule length = the run's steps; the noise generator seeded from its seed."""
        super().setup(nets, cfg)
        seed = int(getattr(cfg, "seed", 0))
        self.generator = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)

    def sigma_at(self, step: int) -> float:
        """sigma_t = schedule.fraction(step) * sigma (sigma throughout without warm-up and
        ramp; the schedule itself gives 0 at step 0 then)."""
        sched = self.cfg.schedule
        if sched.warmup == 0 and sched.ramp == 0:
            return self.cfg.sigma
        return sched.eps(step, self.cfg.sigma)

    def noisy(self, x: Tensor, sigma: float) -> Tensor:
        """x + sigma z, z ~ N(0, I) drawn fresh for every element (rows never share noise)."""
        if sigma <= 0:
            return x
        z = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return x + sigma * z.to(x.device)

    def state_dict(self) -> dict:
        """The generator state (so a resumed run draws the same noise)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def config(self) -> dict:
        """JSON-able config (without the unused solver)."""
        d = {"name": self.name, "algo": self.algo, **dataclasses.asdict(self.cfg)}
        d.pop("solver", None)
        return d


class NoiseDQNLoss(_NoiseLoss):
    """Huber TD loss of Q at x + sigma z (target at the clean x', or noisy with
    ``noise_next``); adds no separate term."""

    algo = "dqn"

    def td_target(self, ctx: TrainContext) -> Tensor | None:
        """With ``noise_next``: the double-DQN target at x' + sigma z'; else None (clean)."""
        if not self.cfg.noise_next:
            return None
        b, sigma = ctx.batch, self.sigma_at(ctx.step)
        xn = self.noisy(b["next_obs"], sigma)
        with torch.no_grad():
            a_next = ctx.nets["q"](xn).argmax(1, keepdim=True)
            q_next = ctx.nets["target"](xn).gather(1, a_next).squeeze(1)
        return b["rewards"] + ctx.gamma * (1.0 - b["dones"]) * q_next

    def modify_td_loss(self, td_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Replace the clean TD loss by mean Huber(Q(x + sigma z, a) - y)."""
        b, sigma = ctx.batch, self.sigma_at(ctx.step)
        xn = self.noisy(b["obs"], sigma)
        q = ctx.nets["q"](xn).gather(1, b["actions"].unsqueeze(1)).squeeze(1)
        delta = 1.0 if ctx.huber_delta is None else ctx.huber_delta
        td = F.huber_loss(q, b["td_target"], reduction="none", delta=delta)
        return td.mean(), {"noise_sigma": sigma, "clean_td_loss": float(td_loss.detach().mean())}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        return ctx.batch["q"].new_zeros(()), {}


class NoisePPOLoss(_NoiseLoss):
    """PPO's clipped surrogate at x + sigma z (value loss and entropy unchanged)."""

    algo = "ppo"

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        b, sigma = ctx.batch, self.sigma_at(ctx.step)
        policy = ctx.nets["policy"]
        xn = self.noisy(b["obs"], sigma)
        dist = policy.distribution(xn)
        logp = dist.log_prob(b["actions"])
        if logp.dim() > 1:
            logp = logp.sum(-1)
        ratio = (logp - b["logprobs"]).exp()
        adv = b["advantages"]
        if adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        c = ctx.clip_coef if ctx.clip_coef is not None else 0.2
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c, 1 + c)).mean()
        return pg, {"noise_sigma": sigma, "clean_pg_loss": float(pg_loss.detach())}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        return ctx.batch["mean"].new_zeros(()), {}


def loss_sigma(config: dict | None) -> float | None:
    """The noise sigma of a stored training config's robust loss (None if not noise)."""
    loss = (config or {}).get("robust_loss") if isinstance(config, dict) else None
    if isinstance(loss, dict) and loss.get("name") == "noise":
        s = loss.get("sigma")
        return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None
    return None
