"""CAR-DQN and CAR-PPO (Li et al. 2024, consistent adversarial robustness via the
Bellman infinity-error).

CAR-DQN replaces the mean TD loss (once eps > 0) by a soft maximum over the batch of
worst-case TD errors:
    delta_i = max(|UB Q(s', a_i) - y_i|, |LB Q(s', a_i) - y_i|)   over s' in B(s_i, eps)  (IBP)
    delta_i = |Q(s_adv, a_i) - y_i|, s_adv = PGD argmax of (Q(s', a_i) - y_i)^2          (PGD)
    p = softmax(h(delta) / lambda)  (detached),   loss = sum_i p_i h(delta_i),
h the Huber loss. lambda -> 0 gives the hard max, lambda -> inf the mean.

CAR-PPO replaces the clipped surrogate by the same soft maximum of per-sample clipped
surrogates at adversarial states (PGD on the surrogate itself, or the worst-case
log-prob from bounds), plus kl_coef * KL(pi(.|s) || pi(.|s_adv)) (Gaussian: sum
(mu - mu')^2 / (2 sigma^2); categorical: the KL of the softmaxes). The weights p_i come
from the worst-case surrogate; each term is ``adversarial_surrogate``: its clip uses the
clean ratio pi(a|s) / pi_old(a|s) and its gradient flows through log pi(a|s_adv), so the
adversary chooses where the gradient is taken but cannot rescale it (with the coupled ratio
pi(a|s_adv) / pi_old(a|s) it inflates every A < 0 sample's weight and shrinks every A > 0
one). On InvertedPendulum both forms train alike: they keep 1000 at train eps 0.1 and both
collapse at 0.5 (docs/robust-training.md, "CAR-PPO at eps 0.5").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig, pgd_states
from certrl.losses.ppo_utils import (
    adversarial_surrogate,
    clipped_surrogate,
    log_prob,
    normalized,
)
from certrl.losses.radial import reference_ramp, worst_logprob_bounds
from certrl.losses.schedule import EpsSchedule
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
    smoothed ramp over 8/9 of the run)."""

    lam: float = 1.0
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp", pgd_steps=5))
    schedule: EpsSchedule = field(default_factory=reference_ramp)

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"CAR lambda must be >= 0; got {self.lam}")


class CARDQNLoss(ScheduledLoss):
    """sum_i softmax(h(delta)/lambda)_i h(delta_i) over worst-case TD errors delta_i."""

    name = "car"
    algo = "dqn"
    config_cls = CARConfig

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
        """sum_i p_i h(delta_i), p = softmax(h(delta) / lambda) (detached); the mean at eps 0."""
        eps = self.eps_at(ctx.step, ctx.threat)
        logs = {"train_eps": eps}
        if eps <= 0:
            return td_loss.mean(), logs
        delta = self.worst_td_error(ctx.batch, ctx.nets["q"], eps, ctx.threat, ctx.step)
        h = F.huber_loss(delta, torch.zeros_like(delta), reduction="none",
                         delta=float(ctx.huber_delta))
        p = soft_weights(h, self.cfg.lam)
        logs.update(car_worst_td=float(delta.detach().max()), car_weight_max=float(p.max()))
        return (p * h).sum(), logs


@dataclass
class CARPPOConfig:
    """CAR-PPO: temperature lam (large), KL weight, solver (pgd or ibp / crown-ibp), schedule."""

    lam: float = 10.0
    kl_coef: float = 0.1
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("pgd"))
    schedule: EpsSchedule = field(default_factory=EpsSchedule)


def policy_kl(policy: nn.Module, out: Tensor, out_adv: Tensor) -> Tensor:
    """Per-sample KL(pi(.|out) || pi(.|out_adv)) (shared std for Gaussian policies)."""
    if hasattr(policy, "log_std"):
        var = policy.log_std.exp().expand_as(out) ** 2
        return ((out - out_adv) ** 2 / (2 * var)).sum(1)
    p = torch.log_softmax(out, dim=1)
    q = torch.log_softmax(out_adv, dim=1)
    return (p.exp() * (p - q)).sum(1)


class CARPPOLoss(ScheduledLoss):
    """Soft max over the batch of clipped surrogates at adversarial states, plus a KL term."""

    name = "car"
    algo = "ppo"
    config_cls = CARPPOConfig

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """sum_i p_i l_i(s_adv) + kl_coef * KL(pi(.|s) || pi(.|s_adv)); unchanged at eps 0."""
        eps = self.eps_at(ctx.step, ctx.threat)
        logs = {"train_eps": eps}
        if eps <= 0:
            return pg_loss, logs
        batch, policy, clip = ctx.batch, ctx.nets["policy"], float(ctx.clip_coef)
        adv = normalized(batch["advantages"])
        old, acts, out = batch["logprobs"], batch["actions"], batch["mean"]
        if self.cfg.solver.kind == "pgd":
            def obj(z: Tensor) -> Tensor:
                return clipped_surrogate(log_prob(policy, policy(z), acts), old, adv, clip)
            xa = pgd_states(obj, batch["obs"], ctx.threat, eps, self.cfg.solver.pgd_steps,
                            self.cfg.solver.pgd_step_size)
            out_adv = policy(xa)
            logp_adv = log_prob(policy, out_adv, acts)
            kl = policy_kl(policy, out, out_adv).mean()
        else:
            lb, ub = self.bounds_of(policy, batch["obs"], eps, ctx.threat, ctx.step)
            lo, hi = worst_logprob_bounds(policy, lb, ub, acts)
            logp_adv = torch.where(adv >= 0, lo, hi)
            kl = out.new_zeros(())
        # weights from the worst-case surrogate; gradient with the clean trust region
        p = soft_weights(clipped_surrogate(logp_adv, old, adv, clip), self.cfg.lam)
        l_i = adversarial_surrogate(logp_adv, log_prob(policy, out, acts), old, adv, clip)
        logs.update(car_kl=float(kl.detach()), car_weight_max=float(p.max()))
        return (p * l_i).sum() + self.cfg.kl_coef * kl, logs
