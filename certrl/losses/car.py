"""CAR-DQN and CAR-PPO (Li et al. 2024, consistent adversarial robustness via the
Bellman infinity-error).

CAR-DQN replaces the mean TD loss (once eps > 0) by a soft maximum over the batch of
worst-case TD errors:
    delta_i = max(|UB Q(s', a_i) - y_i|, |LB Q(s', a_i) - y_i|)   over s' in B(s_i, eps)  (IBP)
    delta_i = |Q(s_adv, a_i) - y_i|, s_adv = PGD argmax of (Q(s', a_i) - y_i)^2          (PGD)
    p = softmax(h(delta) / lambda)  (detached),   loss = sum_i p_i h(delta_i),
h the Huber loss. lambda -> 0 gives the hard max, lambda -> inf the mean. With ``kappa_end``
set (the reference's ``--trades`` True, kappa constant = ``--kappa-end``):
    loss = kappa mean_i h(TD_i) + (1 - kappa) sum_i p_i h(delta_i).

CAR-PPO as the reference (RyanHaoranLi/CAR-RL, ``robust_ppo_step`` with
``robust_add_clean_loss``): loss = L_clean + reg * sum_i p_i l_i(s_adv),
    l_i(s') = max(-A_i r_i', -A_i clip(r_i', 1 - c, 1 + c)),  r_i' = pi(a_i|s') / pi_old(a_i|s_i),
    p = softmax(l(s_adv) / lambda) (detached),  A normalized per minibatch,
s_adv the PGD (car_pgd) or SGLD (car_sgld) maximizer of l over B(s_i, eps), or the
worst-case log-prob from bounds. Options: kl_coef * KL(pi(.|s) || pi(.|s_adv)) (car_add_kl);
ratio "clean" (``adversarial_surrogate``: the clip uses the clean ratio, the gradient flows
through log pi(a|s_adv)); add_clean_loss False (the old certrl form: the soft max alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig, input_adversary, pgd_states
from certrl.losses.ppo_utils import (
    adversarial_surrogate,
    clipped_surrogate,
    log_prob,
    normalized,
)
from certrl.losses.radial import reference_ramp, worst_logprob_bounds
from certrl.losses.schedule import EpsSchedule, ppo_reference_ramp
from certrl.threat import ThreatModel


def soft_weights(values: Tensor, lam: float) -> Tensor:
    """p = softmax(values / lambda), detached; lambda = 0 gives the (tie-shared) hard max."""
    v = values.detach()
    if lam <= 0:
        top = (v == v.max()).to(v.dtype)
        return top / top.sum()
    return torch.softmax(v / lam, dim=0)


@dataclass
class CARConfig:
    """CAR-DQN: softmax temperature lam (lambda, reference 1), solver (ibp, crown-ibp or pgd:
    5 steps, the reference's training attack), eps schedule (the reference's RADIAL-style
    smoothed ramp over 8/9 of the run), kappa_end (None: the soft max alone, the reference's
    default ``--trades`` False; a value in [0, 1]: its ``--trades`` True form, the constant
    TD weight kappa of kappa TD + (1 - kappa) soft max, the reference's ``--kappa-end``
    default 0.8)."""

    lam: float = 1.0
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp", pgd_steps=5))
    schedule: EpsSchedule = field(default_factory=reference_ramp)
    kappa_end: float | None = None

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"CAR lambda must be >= 0; got {self.lam}")
        if self.kappa_end is not None and not 0.0 <= float(self.kappa_end) <= 1.0:
            raise ValueError(f"CAR kappa_end (--trades TD weight) must lie in [0, 1]; "
                             f"got {self.kappa_end}")


class CARDQNLoss(ScheduledLoss):
    """sum_i softmax(h(delta)/lambda)_i h(delta_i) over worst-case TD errors delta_i."""

    name = "car"
    algo = "dqn"
    config_cls = CARConfig
    omit_at = {"kappa_end": None}  # added 2026-12-06: older CAR runs keep their run group

    def worst_td_error(self, batch: dict[str, Tensor], q: nn.Module, eps: float,
                       threat: ThreatModel, step: int) -> Tensor:
        """(B,) delta_i: worst-case |Q(s', a_i) - y_i| over the ball (bound or PGD)."""
        x, a, y = batch["obs"], batch["actions"], batch["td_target"]
        if self.cfg.solver.kind == "pgd":
            def obj(z: Tensor) -> Tensor:
                return (q(z).gather(1, a[:, None]).squeeze(1) - y) ** 2
            xa = pgd_states(obj, x, threat, eps, self.cfg.solver.pgd_steps,
                            self.cfg.solver.pgd_step_size)
            return (q(xa).gather(1, a[:, None]).squeeze(1) - y).abs()
        lb, ub = self.bounds_of(q, x, eps, threat, step)
        lb_a = lb.gather(1, a[:, None]).squeeze(1)
        ub_a = ub.gather(1, a[:, None]).squeeze(1)
        return torch.maximum((ub_a - y).abs(), (lb_a - y).abs())

    def modify_td_loss(self, td_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """sum_i p_i h(delta_i), p = softmax(h(delta) / lambda) (detached), or
        kappa mean TD + (1 - kappa) of it with kappa_end set; the mean TD at eps 0."""
        eps = self.eps_at(ctx.step, ctx.threat)
        logs = {"train_eps": eps}
        if eps <= 0:
            return td_loss.mean(), logs
        delta = self.worst_td_error(ctx.batch, ctx.nets["q"], eps, ctx.threat, ctx.step)
        h = F.huber_loss(delta, torch.zeros_like(delta), reduction="none",
                         delta=float(ctx.huber_delta))
        p = soft_weights(h, self.cfg.lam)
        logs.update(car_worst_td=float(delta.detach().max()), car_weight_max=float(p.max()))
        worst = (p * h).sum()
        if self.cfg.kappa_end is None:
            return worst, logs
        k = float(self.cfg.kappa_end)
        return k * td_loss.mean() + (1 - k) * worst, logs


CAR_RATIOS = ("reference", "clean")


@dataclass
class CARPPOConfig:
    """CAR-PPO (RyanHaoranLi/CAR-RL ``config_hopper_car_ppo_pgd.json``): robust weight reg
    (``robust_ppo_reg`` 0.3), temperature lam (``robust_soft_lambda`` 1000), add_clean_loss
    (``robust_add_clean_loss`` true in every config: loss = clean surrogate + reg * the
    soft-max term), kl_coef (``car_add_kl``'s ``robust_ppo_reg_kl``; 0 = the car_pgd /
    car_sgld methods, which add no KL), ratio ("reference": pi(a|s_adv) / pi_old(a|s), the
    reference's; "clean": ``adversarial_surrogate``, the clean trust region), solver (pgd
    10 steps = car_pgd, sgld = car_sgld, or ibp / crown-ibp bounds), eps schedule (linear
    over 75% of training)."""

    reg: float = 0.3
    lam: float = 1000.0
    add_clean_loss: bool = True
    kl_coef: float = 0.0
    ratio: str = "reference"
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("pgd", pgd_steps=10))
    schedule: EpsSchedule = field(default_factory=ppo_reference_ramp)

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"CAR lambda must be >= 0; got {self.lam}")
        if self.ratio not in CAR_RATIOS:
            raise ValueError(f"CAR-PPO ratio must be one of {CAR_RATIOS}; got {self.ratio!r}")


def policy_kl(policy: nn.Module, out: Tensor, out_adv: Tensor) -> Tensor:
    """Per-sample KL(pi(.|out) || pi(.|out_adv)) (shared std for Gaussian policies)."""
    if hasattr(policy, "log_std"):
        var = policy.log_std.exp().expand_as(out) ** 2
        return ((out - out_adv) ** 2 / (2 * var)).sum(1)
    p = torch.log_softmax(out, dim=1)
    q = torch.log_softmax(out_adv, dim=1)
    return (p.exp() * (p - q)).sum(1)


def car_robust_term(l_adv: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """(sum_i p_i l_i, p) with p = softmax(l / lambda) detached: CAR's soft maximum."""
    p = soft_weights(l_adv, lam)
    return (p * l_adv).sum(), p


class CARPPOLoss(ScheduledLoss):
    """Clean PPO surrogate + reg * soft max over the batch of surrogates at adversarial states."""

    name = "car"
    algo = "ppo"
    config_cls = CARPPOConfig
    solvers = ("ibp", "crown-ibp", "pgd", "sgld")

    def adversarial_logprob(self, ctx: TrainContext, adv: Tensor,
                            eps: float) -> tuple[Tensor, Tensor]:
        """(log pi(a | s_adv) (B,), per-sample KL(pi(s) || pi(s_adv))): s_adv the PGD / SGLD
        maximizer of the per-sample clipped surrogate with the coupled ratio (the
        reference's objective), or the worst-case log-prob from bounds (KL 0 there)."""
        batch, policy, clip = ctx.batch, ctx.nets["policy"], float(ctx.clip_coef)
        old, acts, out = batch["logprobs"], batch["actions"], batch["mean"]
        if self.cfg.solver.kind in ("pgd", "sgld"):
            def obj(z: Tensor) -> Tensor:
                return clipped_surrogate(log_prob(policy, policy(z), acts), old, adv, clip)
            xa = input_adversary(self, obj, batch["obs"], ctx.threat, eps)
            out_adv = policy(xa)
            return log_prob(policy, out_adv, acts), policy_kl(policy, out, out_adv)
        lb, ub = self.bounds_of(policy, batch["obs"], eps, ctx.threat, ctx.step)
        lo, hi = worst_logprob_bounds(policy, lb, ub, acts)
        return torch.where(adv >= 0, lo, hi), out.new_zeros(out.shape[0])

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """L_clean + reg * sum_i p_i l_i(s_adv) (+ kl_coef * mean KL); without
        ``add_clean_loss`` only the soft-max term (+ KL). Unchanged at eps 0."""
        eps = self.eps_at(ctx.step, ctx.threat)
        logs = {"train_eps": eps}
        if eps <= 0:
            return pg_loss, logs
        batch, policy, clip = ctx.batch, ctx.nets["policy"], float(ctx.clip_coef)
        adv = normalized(batch["advantages"])
        logp_adv, kl = self.adversarial_logprob(ctx, adv, eps)
        if self.cfg.ratio == "reference":
            l_i = clipped_surrogate(logp_adv, batch["logprobs"], adv, clip)
        else:
            l_i = adversarial_surrogate(logp_adv, log_prob(policy, batch["mean"],
                                                           batch["actions"]),
                                        batch["logprobs"], adv, clip)
        robust, p = car_robust_term(l_i, self.cfg.lam)
        loss = pg_loss + self.cfg.reg * robust if self.cfg.add_clean_loss else robust
        if self.cfg.kl_coef:
            loss = loss + self.cfg.kl_coef * kl.mean()
        logs.update(car_robust=float(robust.detach()), car_kl=float(kl.detach().mean()),
                    car_weight_max=float(p.max()))
        return loss, logs
