"""RADIAL-DQN and RADIAL-PPO (Oikarinen et al. 2021, adversarial loss from IBP bounds).

RADIAL-DQN: loss = kappa_t * TD + (1 - kappa_t) * L_adv with, for the taken action a,
    Q_diff(s, y) = max(0, Q(s, a) - Q(s, y))                       (detached weight)
    ovl(s, y)    = max(0, UB Q(s', y) - LB Q(s', a) + eta), eta = 0.5 Q_diff(s, y)
    L_adv        = mean_s sum_{y != a} Q_diff(s, y) * ovl(s, y),
bounds over B(s, eps_t) by IBP (or CROWN-IBP). As in the reference (radial_rl_v2,
``approach_2``) kappa_t = kappa_end throughout by default (``constant_kappa``); the linear
form kappa_t = 1 - (1 - kappa_end) eps_t / eps is the reference's ``--linear-kappa``.

Dueling networks (``dueling_bounds="advantage"``, the reference's way): the bounds are
    [LB, UB] Q(s', .) = V(s) (clean state, detached) + IBP bounds of the centred advantage
    A(s', .) - mean A(s', .) over the ball,
i.e. only the advantage stream is bounded (a training surrogate, not a sound bound of Q:
V is held at its clean value). ``dueling_bounds="full"`` bounds the full folded Q instead
(sound; what a non-dueling net always gets).

RADIAL-PPO: loss = kappa_t * L_PPO + (1 - kappa_t) * L_adv, L_adv the clipped surrogate
with the worst-case log-probability of the taken action over the bounds of the
action mean (A >= 0: the mean farthest from a; A < 0: the nearest one) or of the
logits (sound interval bounds on log-softmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig, annealed_kappa
from certrl.losses.ppo_utils import clipped_surrogate, normalized
from certrl.losses.schedule import EpsSchedule
from certrl.threat import ThreatModel

DUELING_BOUNDS = ("advantage", "full")


def reference_ramp() -> EpsSchedule:
    """RADIAL / CAR-DQN reference ramp (radial_rl_v2 ``EpsilonScheduler("smoothed", ...)``):
    smoothed (mid 0.25, power 4) from the start of learning to frame 4M of a 4.5M-frame
    fine-tune, i.e. 8/9 of the run, then constant."""
    return EpsSchedule(warmup=0.0, ramp=8.0 / 9.0, mid=0.25, power=4.0)


@dataclass
class RadialConfig:
    """RADIAL: TD / PPO weight kappa_end, constant_kappa (None: constant for DQN as in the
    reference, linear for PPO), dueling_bounds, solver (ibp or crown-ibp), eps schedule."""

    kappa_end: float = 0.8
    constant_kappa: bool | None = None
    dueling_bounds: str = "advantage"
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp"))
    schedule: EpsSchedule = field(default_factory=reference_ramp)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.kappa_end) <= 1.0:
            raise ValueError(f"RADIAL kappa_end must lie in [0, 1]; got {self.kappa_end}")
        if self.dueling_bounds not in DUELING_BOUNDS:
            raise ValueError(f"RADIAL dueling_bounds must be one of {DUELING_BOUNDS}; "
                             f"got {self.dueling_bounds!r}")


class _RadialBase(ScheduledLoss):
    config_cls = RadialConfig
    solvers = ("ibp", "crown-ibp")
    constant_by_default = False

    def kappa_at(self, step: int) -> float:
        """kappa_end if constant, else 1 - (1 - kappa_end) * eps_t / eps."""
        constant = self.cfg.constant_kappa
        if constant is None:
            constant = self.constant_by_default
        if constant:
            return float(self.cfg.kappa_end)
        return annealed_kappa(self.cfg.kappa_end, self.cfg.schedule.fraction(step))


def radial_overlap_loss(q: Tensor, lb: Tensor, ub: Tensor, actions: Tensor) -> Tensor:
    """Per-sample sum_y Q_diff(s, y) * max(0, UB_y - LB_a + Q_diff / 2), Q_diff detached."""
    q_a = q.gather(1, actions[:, None])
    q_diff = (q_a - q).clamp_min(0).detach()
    lb_a = lb.gather(1, actions[:, None])
    ovl = (ub - lb_a + 0.5 * q_diff).clamp_min(0)
    own = torch.nn.functional.one_hot(actions, q.shape[1]).bool()
    return (q_diff * ovl).masked_fill(own, 0.0).sum(1)


class RadialDQNLoss(_RadialBase):
    """kappa_t * TD + (1 - kappa_t) * overlap loss on IBP bounds (dueling: advantage stream)."""

    name = "radial"
    algo = "dqn"
    constant_by_default = True

    def modify_td_loss(self, td_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """kappa_t * mean TD loss."""
        return self.kappa_at(ctx.step) * td_loss.mean(), {}

    def q_bounds(self, net: nn.Module, x: Tensor, eps: float, threat: ThreatModel,
                 step: int) -> tuple[Tensor, Tensor]:
        """(lb, ub) of Q(s', .) over B(x, eps); dueling + "advantage": V(x) detached plus
        the bounds of the centred advantage stream (the reference's bounds)."""
        if getattr(net, "dueling", False) and self.cfg.dueling_bounds == "advantage":
            la, ua = self.bounds_of(net, x, eps, threat, step, form="advantage")
            v = net.value(x).detach()
            return la + v, ua + v
        return self.bounds_of(net, x, eps, threat, step)

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0:
            return batch["q"].new_zeros(()), {"train_eps": eps}
        net, x = nets["q"], batch["obs"]
        lb, ub = self.q_bounds(net, x, eps, threat, step)
        adv = radial_overlap_loss(net(x), lb, ub, batch["actions"]).mean()
        k = self.kappa_at(step)
        return (1 - k) * adv, {"train_eps": eps, "radial_adv": float(adv.detach()), "kappa": k}


def worst_logprob_bounds(policy: nn.Module, lb: Tensor, ub: Tensor,
                         actions: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of log pi(a | s') over s' in the ball, from bounds [lb, ub] of the mean/logits.

    Gaussian: per dim, min at the end of [lb, ub] farthest from a, max at clamp(a, lb, ub).
    Categorical: log p_a in [lb_a - logsumexp(lb_a, ub_{j!=a}), ub_a - logsumexp(ub_a, lb_{j!=a})].
    """
    if hasattr(policy, "log_std"):
        std = policy.log_std.exp().expand_as(lb)
        far = torch.where((actions - lb).abs() > (actions - ub).abs(), lb, ub)
        near = torch.maximum(torch.minimum(actions, ub), lb)
        normal = torch.distributions.Normal
        lo = normal(far, std).log_prob(actions).sum(-1)
        hi = normal(near, std).log_prob(actions).sum(-1)
        return lo, hi
    a = actions.long()[:, None]
    own = torch.nn.functional.one_hot(actions.long(), lb.shape[1]).bool()
    lo = lb.gather(1, a).squeeze(1) - torch.logsumexp(torch.where(own, lb, ub), dim=1)
    hi = ub.gather(1, a).squeeze(1) - torch.logsumexp(torch.where(own, ub, lb), dim=1)
    return lo, hi


class RadialPPOLoss(_RadialBase):
    """kappa_t * L_PPO + (1 - kappa_t) * clipped surrogate at the worst-case log-probability."""

    name = "radial"
    algo = "ppo"

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """kappa_t * clipped surrogate."""
        return self.kappa_at(ctx.step) * pg_loss, {}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0:
            return batch["mean"].new_zeros(()), {"train_eps": eps}
        policy = nets["policy"]
        lb, ub = self.bounds_of(policy, batch["obs"], eps, threat, step)
        lo, hi = worst_logprob_bounds(policy, lb, ub, batch["actions"])
        adv = normalized(batch["advantages"])
        worst = torch.where(adv >= 0, lo, hi)
        clip = float(ctx.clip_coef)
        l_adv = clipped_surrogate(worst, batch["logprobs"], adv, clip).mean()
        k = self.kappa_at(step)
        return (1 - k) * l_adv, {"train_eps": eps, "radial_adv": float(l_adv.detach())}
