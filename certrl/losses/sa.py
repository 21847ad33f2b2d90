"""SA-DQN and SA-PPO (Zhang et al. 2020, state-adversarial MDPs).

SA-DQN: loss = TD + kappa * mean_i max(-min_{j != a*} LB[Q(s', a*) - Q(s', j)], -c),
a* = argmax_a Q(s_i, a), the lower bound over s' in B(s_i, eps) by IBP or CROWN-IBP
(beta 1 -> 0), or the margin at a PGD state (solver "pgd").

SA-PPO: loss = PPO + reg * mean_i sum_k max(|LB_k - mu_k|, |UB_k - mu_k|)^2 / sigma_k^2,
[LB, UB] bounds of the action mean mu(s') over the ball (logits for discrete
policies, sigma = 1), or the deviation at an SGLD (the reference's) or PGD state;
sigma = exp(log_std) is not detached (the reference's default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import (
    ScheduledLoss,
    SolverConfig,
    hinge_margin,
    input_adversary,
)
from certrl.losses.schedule import EpsSchedule, ppo_reference_ramp
from certrl.threat import ThreatModel


def sa_reference_ramp() -> EpsSchedule:
    """SA-DQN's schedule (chenhongge/SA_DQN defaults.json): natural training for 1.5M of 6M
    frames, then a smoothed ramp (mid 0.25, power 4) of 4M frames: warm-up 0.25, ramp 2/3."""
    return EpsSchedule(warmup=0.25, ramp=4.0 / 6.0, mid=0.25, power=4.0)


# Deliberate parallel (duplicates lists it): each loss has a typed config of one shape.
@dataclass
class SAConfig:
    """SA-DQN: hinge weight kappa (reference default 0.005; 0.01-0.02 in some games),
    hinge cap c (1), solver (CROWN-IBP, beta 1 -> 0; "pgd": 5 steps, the reference's
    training attack), eps schedule (the reference's)."""

    kappa: float = 0.005
    c: float = 1.0
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("crown-ibp", pgd_steps=5))
    schedule: EpsSchedule = field(default_factory=sa_reference_ramp)


class SADQNLoss(ScheduledLoss):
    """kappa * mean hinge on the certified (or PGD) action margin; TD loss unchanged."""

    name = "sa"
    algo = "dqn"
    config_cls = SAConfig

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        q = nets["q"]
        if eps <= 0 or self.cfg.kappa == 0:
            return batch["q"].new_zeros(()), {"train_eps": eps}
        x = batch["obs"]
        with torch.no_grad():
            a_star = q(x).argmax(1)
        m = self.margins_of(q, x, a_star, eps, threat, step)
        hinge = hinge_margin(m, self.cfg.c).mean()
        return self.cfg.kappa * hinge, {"train_eps": eps, "sa_hinge": float(hinge.detach())}


@dataclass
class SAPPOConfig:
    """SA-PPO (huanzhang12/SA_PPO Hopper configs): regularizer weight reg (0.1), solver
    (crown-ibp = the reference's convex relaxation, beta 1 -> 0 with the ramp; "sgld": its
    SGLD solver, 10 steps; "pgd": certrl's PGD), eps schedule (the reference's linear ramp
    over 75% of training), detach_sigma (False: the reference's
    ``robust_ppo_detach_stdev`` false, so the regularizer also trains log_std)."""

    reg: float = 0.1
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("crown-ibp",
                                                                      pgd_steps=10))
    schedule: EpsSchedule = field(default_factory=ppo_reference_ramp)
    detach_sigma: bool = False


def policy_sigma(policy: nn.Module, like: Tensor, detach: bool = False) -> Tensor:
    """The Gaussian policy's std exp(log_std) (detached if ``detach``), or ones for a
    categorical policy (logits)."""
    if hasattr(policy, "log_std"):
        log_std = policy.log_std.detach() if detach else policy.log_std
        return log_std.exp().expand_as(like)
    return torch.ones_like(like)


def mean_deviation(loss: ScheduledLoss, policy: nn.Module, x: Tensor, mu: Tensor, eps: float,
                   threat: ThreatModel, step: int) -> Tensor:
    """Per-sample sum_k dev_k^2 / sigma_k^2, dev_k the worst change of mu_k over the ball:
    max(|LB_k - mu_k|, |UB_k - mu_k|) (bounds), or mu_k(s_adv) - mu_k(s) at an SGLD / PGD
    state s_adv maximizing sum_k ((mu_k(s') - mu_k(s)) / sigma_k)^2 (sigma detached inside
    the inner loop; SGLD detaches mu(s) as the reference). sigma is not detached unless
    ``detach_sigma``."""
    sigma = policy_sigma(policy, mu, bool(getattr(loss.cfg, "detach_sigma", False)))
    if loss.cfg.solver.kind in ("pgd", "sgld"):
        mu0, sig0 = mu.detach(), sigma.detach()

        def obj(z: Tensor) -> Tensor:
            return (((policy(z) - mu0) / sig0) ** 2).sum(1)
        xa = input_adversary(loss, obj, x, threat, eps)
        dev = policy(xa) - (mu0 if loss.cfg.solver.kind == "sgld" else mu)
    else:
        lb, ub = loss.bounds_of(policy, x, eps, threat, step)
        dev = torch.maximum((lb - mu).abs(), (ub - mu).abs())
    return ((dev / sigma) ** 2).sum(1)


# Deliberate parallel (duplicates lists it): every loss's __call__ opens the same way
# (unpack the TrainContext, read the scheduled eps).
class SAPPOLoss(ScheduledLoss):
    """reg * mean_i sum_k max(|LB_k - mu_k|, |UB_k - mu_k|)^2 / sigma_k^2 (PPO loss unchanged)."""

    name = "sa"
    algo = "ppo"
    config_cls = SAPPOConfig
    solvers = ("ibp", "crown-ibp", "pgd", "sgld")

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.reg == 0:
            return batch["mean"].new_zeros(()), {"train_eps": eps}
        d = mean_deviation(self, nets["policy"], batch["obs"], batch["mean"], eps, threat, step)
        r = d.mean()
        return self.cfg.reg * r, {"train_eps": eps, "sa_reg": float(r.detach())}
