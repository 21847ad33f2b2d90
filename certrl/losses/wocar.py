"""WocaR-DQN and WocaR-PPO (Liang et al. 2022, worst-case-aware training).

WocaR-DQN as in the reference (umd-huang-lab/WocaR-RL, ``WocaR-DQN/RA-DQN/train.py``).
An extra network Q_w (``worst_q``, same spec as Q, fresh weights) estimates the value
under the worst attack and is trained by its *own* Adam every ``worst_every`` updates
(``worst_init="q"`` starts it from the main Q instead, for short fine-tunes):
    A_adv(s) = {a : UB Q(s~, a) >= max_j LB Q(s~, j), s~ in B(s, e_A)}
        (IBP bounds of the main Q at the *current* state s with a small radius e_A; the
         reference applies this set at s' although it is computed at s. The reference's
         e_A is 1e-3 on [0,1] pixels against a target eps of 1/255, i.e. 0.255 eps: here
         e_A = ``attack_set_fraction`` * eps (the threat model's target eps), so it keeps
         its meaning in any eps unit; ``attack_set_eps`` gives an absolute radius instead)
    a_w = argmin_{a in A_adv(s)} Q_w(s', a),   y_w = r + gamma (1 - d) Q_w(s', a_w) (detached)
    L_w = mean h(Q_w(s, a) - y_w)
The main Q's target bootstraps through a' = argmax_a (1 - r) Q(s', a) + r Q_w(s', a)
(r = ``worst_weight``): y = r + gamma (1 - d) Q^-(s', a'), and its loss is
    kappa_t * mean h(Q(s, a) - y) + (1 - kappa_t) * L_b,
    L_b = mean_i sum_j h(d_ij),  t_ij = y_i if j = a_i else Q(s_i, j) (not detached),
    d_ij = max(|UB_ij - t_ij|, |LB_ij - t_ij|)     (``worse_bound``, the reference default;
                                                   else |W_ij - t_ij|, W = LB at a, UB elsewhere)
[LB, UB] the bounds of the main Q over B(s, eps_t) (the solver, IBP in the reference), h
the DQN's Huber loss, kappa_t = 1 - (1 - kappa_end) eps_t / eps (linear, like eps_t).
At eps_t = 0, L_b is the TD loss itself. An optional SA hinge (``kappa`` > 0, not in the
reference) adds kappa * max(-min_j LB[Q(s, a*) - Q(s, j)], -c).

WocaR-PPO as the reference (``WocaR-PPO/src/policy_gradients/steps.py``,
``robust_q_ppo_step`` and ``worst_q_step``; ``pgd_act.worst_action_pgd``): a worst-attack
critic Q_w(s, a) with its own Adam and a soft-updated copy Q_w^- (tau),
    L_w = mean (Q_w(s, a) - y_w)^2,  y_w = r + gamma (1 - d) Q_w^-(s', a_w),
    a_w = argmin_{a in [LB, UB]} Q_w(s', a) by action-space PGD from mu(s'), [LB, UB] the
          IBP bounds of the policy mean over B(s', e_A) (the attackable set),
the PPO surrogate on A' = norm(A) + q_weight_t norm(Q_w^-(s, a)) with q_weight_t rising
linearly 0 -> q_weight (0.8) over training, plus reg * the SA-PPO regularizer (SGLD).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import (
    ScheduledLoss,
    SolverConfig,
    annealed_kappa,
    hinge_margin,
    output_bounds,
)
from certrl.losses.ppo_utils import clipped_surrogate, log_prob, normalized
from certrl.losses.sa import mean_deviation
from certrl.losses.schedule import EpsSchedule, ppo_reference_ramp
from certrl.nets import build_network
from certrl.threat import ThreatModel

WORST_INITS = ("fresh", "q")


def linear_ramp() -> EpsSchedule:
    """WocaR-DQN reference schedule: eps_t and kappa_t linear from the first step to the end."""
    return EpsSchedule(warmup=0.0, ramp=1.0, mid=0.0, power=1.0)


# Deliberate parallel (duplicates lists it): typed loss configs share one shape (see sa.py).
@dataclass
class WocarConfig:
    """WocaR-DQN (reference constants): worst_weight r, kappa_end, worst-net period, lr
    (None: the DQN's lr) and init ("fresh" as the reference, or "q": a copy of the main Q),
    attack-set radius (attack_set_fraction * target eps, or the absolute attack_set_eps),
    worse_bound; optional SA hinge kappa / c (0: off); target_update_interval of a lagged
    Q_w copy (0: the live Q_w, as the reference)."""

    worst_weight: float = 0.05
    kappa_end: float = 0.5
    worst_every: int = 10
    worst_lr: float | None = None
    attack_set_fraction: float = 0.255
    attack_set_eps: float | None = None
    worst_init: str = "fresh"
    worse_bound: bool = True
    kappa: float = 0.0
    c: float = 1.0
    target_update_interval: int = 0
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp"))
    schedule: EpsSchedule = field(default_factory=linear_ramp)

    def __post_init__(self) -> None:
        if int(self.worst_every) < 1:
            raise ValueError(f"WocaR worst_every must be >= 1; got {self.worst_every}")
        if self.worst_lr is not None and not float(self.worst_lr) > 0:
            raise ValueError(f"WocaR worst_lr must be > 0; got {self.worst_lr}")
        if self.attack_set_eps is not None and not float(self.attack_set_eps) >= 0:
            raise ValueError(f"WocaR attack_set_eps must be >= 0; got {self.attack_set_eps}")
        if not float(self.attack_set_fraction) >= 0:
            raise ValueError("WocaR attack_set_fraction must be >= 0; "
                             f"got {self.attack_set_fraction}")
        if self.worst_init not in WORST_INITS:
            raise ValueError(f"WocaR worst_init must be one of {WORST_INITS}; "
                             f"got {self.worst_init!r}")
        if not 0.0 <= float(self.kappa_end) <= 1.0:
            raise ValueError(f"WocaR kappa_end must lie in [0, 1]; got {self.kappa_end}")
        if int(self.target_update_interval) < 0:
            raise ValueError("WocaR target_update_interval must be >= 0 (0: live Q_w)")


def attackable_actions(lb: Tensor, ub: Tensor) -> Tensor:
    """(B, K) bool: actions whose UB reaches the largest LB (they may become greedy)."""
    return ub >= lb.max(dim=1, keepdim=True).values


def bound_regression(q: Tensor, lb: Tensor, ub: Tensor, actions: Tensor, y: Tensor,
                     worse_bound: bool, delta: float) -> Tensor:
    """Per-sample sum_j h(d_j): t_j = y at the taken action, Q(s, j) elsewhere (not
    detached); d_j = max(|UB_j - t_j|, |LB_j - t_j|) (worse_bound) or |W_j - t_j| with
    W = LB at the taken action and UB elsewhere; h the Huber loss with ``delta``."""
    own = F.one_hot(actions, q.shape[1]).bool()
    t = torch.where(own, y.detach()[:, None], q)
    if worse_bound:
        d = torch.maximum((ub - t).abs(), (lb - t).abs())
    else:
        d = (torch.where(own, lb, ub) - t).abs()
    return F.huber_loss(d, torch.zeros_like(d), reduction="none", delta=delta).sum(1)


class WorstCriticLoss(ScheduledLoss):
    """Base of the WocaR losses: a worst-attack critic Q_w (``self.worst``, set by ``setup``)
    saved with the agent as ``worst_q`` and trained by its own optimizer, not jointly."""

    worst: nn.Module

    def extra_networks(self) -> dict[str, nn.Module]:
        return {"worst_q": self.worst}

    def jointly_optimized(self) -> dict[str, nn.Module]:
        """None: Q_w is trained by its own optimizer (``worst_optimizer``)."""
        return {}


class WocarDQNLoss(WorstCriticLoss):
    """Worst-case Q network with its own optimizer, worst-case-aware main target and the
    (1 - kappa_t)-weighted bound regression on the main Q (the reference's WocaR-DQN).

    Per DQN update: ``td_target`` (the first hook) first takes Q_w's own Adam step when
    due (as the reference does before the main loss), then returns the main target.
    ``calls`` counts those updates (saved with the loss state).
    """

    name = "wocar"
    algo = "dqn"
    config_cls = WocarConfig
    solvers = ("ibp", "crown-ibp")

    def setup(self, nets: dict[str, nn.Module], cfg) -> None:
        super().setup(nets, cfg)
        self.worst = build_network(nets["q"].spec)  # fresh weights, as the reference
        if self.cfg.worst_init == "q":
            self.worst.load_state_dict(nets["q"].state_dict())
        lr = self.cfg.worst_lr if self.cfg.worst_lr is not None else float(cfg.lr)
        self.worst_optimizer = torch.optim.Adam(self.worst.parameters(), lr=lr)
        self.worst_target = copy.deepcopy(self.worst) if self.cfg.target_update_interval else None
        self.calls = 0
        self._worst_logs: Logs = {}

    def state_dict(self) -> dict:
        """Q_w's optimizer state, the update counter and the lagged Q_w^- (if any)."""
        st = {"worst_optimizer": self.worst_optimizer.state_dict(), "calls": self.calls}
        if self.worst_target is not None:
            st["worst_target"] = self.worst_target.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
        if "worst_optimizer" in state:
            self.worst_optimizer.load_state_dict(state["worst_optimizer"])
        if self.worst_target is not None and "worst_target" in state:
            self.worst_target.load_state_dict(state["worst_target"])

    def attack_set_radius(self, threat: ThreatModel) -> float:
        """e_A: ``attack_set_eps`` if given, else ``attack_set_fraction`` * threat.eps."""
        if self.cfg.attack_set_eps is not None:
            return float(self.cfg.attack_set_eps)
        return float(self.cfg.attack_set_fraction) * float(threat.eps)

    def kappa_at(self, step: int) -> float:
        """kappa_t = 1 - (1 - kappa_end) eps_t / eps."""
        return annealed_kappa(self.cfg.kappa_end, self.cfg.schedule.fraction(step))

    def td_target(self, ctx: TrainContext) -> Tensor | None:
        """Q_w's own step when due, then y = r + gamma (1 - d) Q^-(s', argmax_a (1 - r)
        Q(s', a) + r Q_w(s', a))."""
        if self.calls % int(self.cfg.worst_every) == 0:
            with torch.enable_grad():
                self._worst_logs = self.worst_step(ctx)
        self.calls += 1
        b, nets = ctx.batch, ctx.nets
        x2, rw = b["next_obs"], self.cfg.worst_weight
        with torch.no_grad():
            mix = (1 - rw) * nets["q"](x2) + rw * self.worst(x2)
            q_next = nets["target"](x2).gather(1, mix.argmax(1, keepdim=True)).squeeze(1)
            return b["rewards"] + ctx.gamma * (1 - b["dones"]) * q_next

    def worst_case_target(self, ctx: TrainContext) -> tuple[Tensor, float]:
        """(y_w, mean size of A_adv): y_w = r + gamma (1 - d) Q_w(s', a_w), a_w the lowest
        Q_w(s', .) among the actions attackable at s (radius ``attack_set_radius``)."""
        b, q = ctx.batch, ctx.nets["q"]
        with torch.no_grad():
            lb, ub = self.bounds_of(q, b["obs"], self.attack_set_radius(ctx.threat),
                                    ctx.threat, ctx.step)
            possible = attackable_actions(lb, ub)
            a_w = self.worst(b["next_obs"]).masked_fill(~possible, float("inf"))
            a_w = a_w.argmin(1, keepdim=True)
            boot = self.worst if self.worst_target is None else self.worst_target
            q_w = boot(b["next_obs"]).gather(1, a_w).squeeze(1)
            y_w = b["rewards"] + ctx.gamma * (1 - b["dones"]) * q_w
        return y_w, float(possible.float().sum(1).mean())

    def worst_step(self, ctx: TrainContext) -> Logs:
        """One Adam step of Q_w on L_w = mean h(Q_w(s, a) - y_w); returns its logs."""
        b = ctx.batch
        y_w, n_possible = self.worst_case_target(ctx)
        qw_a = self.worst(b["obs"]).gather(1, b["actions"][:, None]).squeeze(1)
        lw = F.huber_loss(qw_a, y_w, reduction="mean", delta=float(ctx.huber_delta))
        self.worst_optimizer.zero_grad(set_to_none=True)
        lw.backward()
        self.worst_optimizer.step()
        n = self.calls // int(self.cfg.worst_every) + 1
        every = int(self.cfg.target_update_interval)
        if self.worst_target is not None and n % every == 0:
            self.worst_target.load_state_dict(self.worst.state_dict())
        return {"worst_td": float(lw.detach()), "attackable_actions": n_possible}

    def modify_td_loss(self, td_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """kappa_t * mean TD loss."""
        return self.kappa_at(ctx.step) * td_loss.mean(), {}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """(1 - kappa_t) * L_b (+ kappa * SA hinge); logs of the last Q_w step."""
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps, k = self.eps_at(step, threat), self.kappa_at(step)
        q, x = nets["q"], batch["obs"]
        out = q(x)
        lb, ub = self.bounds_of(q, x, eps, threat, step)
        reg = bound_regression(out, lb, ub, batch["actions"], batch["td_target"],
                               self.cfg.worse_bound, float(ctx.huber_delta)).mean()
        loss = (1 - k) * reg
        logs = {"train_eps": eps, "kappa": k, "bound_regression": float(reg.detach()),
                **self._worst_logs}
        if eps > 0 and self.cfg.kappa > 0:
            a_star = out.detach().argmax(1)
            hinge = hinge_margin(self.margins_of(q, x, a_star, eps, threat, step),
                                 self.cfg.c).mean()
            loss = loss + self.cfg.kappa * hinge
            logs["sa_hinge"] = float(hinge.detach())
        return loss, logs


Q_WEIGHT_SCHEDULES = ("linear", "constant")


# Deliberate parallel (duplicates lists it): typed loss configs share one shape (see sa.py).
@dataclass
class WocarPPOConfig:
    """WocaR-PPO (umd-huang-lab/WocaR-RL ``config_hopper_robust_q_ppo_sgld.json``): q_weight
    (0.8) and its schedule ("linear": q_weight * t / T, the reference's; "constant"), SA
    regularizer weight reg (0.1) with its solver (sgld, 10 steps) and detach_sigma (False),
    worst-Q Adam lr q_lr (4e-4), soft target rate tau (1e-3), attack-set radius
    (attack_set_fraction * target eps: the reference's 0.01 against its eps 0.075, or the
    absolute attack_set_eps), action-PGD steps (50), worst-Q hidden sizes (None: the
    policy's), eps schedule (linear over 75% of training)."""

    q_weight: float = 0.8
    weight_schedule: str = "linear"
    reg: float = 0.1
    q_lr: float = 4e-4
    tau: float = 1e-3
    attack_set_fraction: float = 0.01 / 0.075
    attack_set_eps: float | None = None
    action_pgd_steps: int = 50
    q_hidden: list[int] | None = None
    detach_sigma: bool = False
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("sgld", pgd_steps=10))
    schedule: EpsSchedule = field(default_factory=ppo_reference_ramp)

    def __post_init__(self) -> None:
        if self.weight_schedule not in Q_WEIGHT_SCHEDULES:
            raise ValueError(f"WocaR-PPO weight_schedule must be one of {Q_WEIGHT_SCHEDULES}; "
                             f"got {self.weight_schedule!r}")
        if not float(self.q_lr) > 0 or not 0 < float(self.tau) <= 1:
            raise ValueError("WocaR-PPO needs q_lr > 0 and tau in (0, 1]")
        if int(self.action_pgd_steps) < 1:
            raise ValueError("WocaR-PPO action_pgd_steps must be >= 1")
        if not float(self.attack_set_fraction) >= 0 or (
                self.attack_set_eps is not None and not float(self.attack_set_eps) >= 0):
            raise ValueError("WocaR-PPO attack-set radius must be >= 0")


def worst_q_spec(policy: nn.Module, hidden: list[int] | None) -> dict:
    """Q_w's spec: a value net on [s, a] (Gaussian policy, Q(s, a) as the reference's
    ``ValueDenseNet(state_dim + action_dim)``) or a Q net over the actions (categorical)."""
    body = dict(policy.spec["body"])
    if body.get("kind") != "mlp":
        raise ValueError("WocaR-PPO needs an MLP policy (vector observations)")
    if hidden is not None:
        body["hidden"] = [int(h) for h in hidden]
    n = int(policy.spec["n_out"])
    if hasattr(policy, "log_std"):
        return {"type": "value", "body": {**body, "in_dim": int(body["in_dim"]) + n}}
    return {"type": "q", "body": body, "n_out": n}


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, parameter-wise."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.mul_(1 - tau).add_(s, alpha=tau)


class WocarPPOLoss(WorstCriticLoss):
    """WocaR-PPO: worst-attack critic Q_w (own Adam, MSE to r + gamma (1 - d) Q_w^-(s', a_w),
    a_w the action-PGD minimizer of Q_w within the policy's attackable set), surrogate on
    norm(A) + q_weight_t norm(Q_w^-(s, a)), plus reg * the SA-PPO regularizer.

    Per PPO minibatch: ``modify_policy_loss`` first takes one Q_w step on the minibatch
    (the reference's q_epochs x minibatches steps per rollout equal PPO's update_epochs x
    num_minibatches with the defaults), soft-updates Q_w^-, then returns the surrogate.
    """

    name = "wocar"
    algo = "ppo"
    config_cls = WocarPPOConfig
    solvers = ("ibp", "crown-ibp", "pgd", "sgld")

    def setup(self, nets: dict[str, nn.Module], cfg) -> None:
        super().setup(nets, cfg)
        self.policy_ref = nets["policy"]
        self.worst = build_network(worst_q_spec(nets["policy"], self.cfg.q_hidden))
        self.worst_target = copy.deepcopy(self.worst)
        self.worst_optimizer = torch.optim.Adam(self.worst.parameters(), lr=float(self.cfg.q_lr))
        self._worst_logs: Logs = {}

    def state_dict(self) -> dict:
        return {"worst_optimizer": self.worst_optimizer.state_dict(),
                "worst_target": self.worst_target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.worst_optimizer.load_state_dict(state["worst_optimizer"])
        self.worst_target.load_state_dict(state["worst_target"])

    def q_weight_at(self, step: int) -> float:
        """q_weight * min(1, t / T) (linear) or q_weight (constant), capped at 1."""
        w = float(self.cfg.q_weight)
        if self.cfg.weight_schedule == "linear":
            w *= min(1.0, step / max(1, self.cfg.schedule.total_steps))
        return min(w, 1.0)

    def q_values(self, net: nn.Module, x: Tensor, a: Tensor) -> Tensor:
        """Q(s, a) (B,): the [s, a] value net, or the Q net's entry at the discrete action."""
        if hasattr(self.policy_ref, "log_std"):
            return net(torch.cat([x, a], dim=1)).squeeze(1)
        return net(x).gather(1, a.long()[:, None]).squeeze(1)

    def worst_actions(self, x: Tensor, threat: ThreatModel) -> Tensor:
        """a_w: Gaussian: from mu(s), ``action_pgd_steps`` sign steps of (UB - LB) / steps
        descending Q_w(s, .) inside [LB, UB], the IBP bounds of mu over B(s, e_A);
        categorical: the lowest Q_w among the actions the attacker can make greedy."""
        policy = self.policy_ref
        e_a = (float(self.cfg.attack_set_eps) if self.cfg.attack_set_eps is not None
               else float(self.cfg.attack_set_fraction) * float(threat.eps))
        with torch.no_grad():
            lb, ub = output_bounds(policy, x, e_a, threat, bound=self.bound_network(policy))
        if not hasattr(policy, "log_std"):
            with torch.no_grad():
                q = self.worst(x).masked_fill(~attackable_actions(lb, ub), float("inf"))
            return q.argmin(1)
        steps = int(self.cfg.action_pgd_steps)
        a, step = policy(x).detach(), (ub - lb) / steps
        for _ in range(steps):
            ar = a.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.worst(torch.cat([x, ar], 1)).sum(), ar)
            a = torch.minimum(torch.maximum(a - step * g.sign(), lb), ub)
        return a.detach()

    def worst_step(self, ctx: TrainContext) -> Logs:
        """One Adam step of Q_w on mean (Q_w(s, a) - y_w)^2, y_w = r + gamma (1 - d)
        Q_w^-(s', a_w(s')), then Q_w^- <- (1 - tau) Q_w^- + tau Q_w."""
        b = ctx.batch
        missing = {"rewards", "dones", "next_obs"} - set(b)
        if missing:
            raise ValueError(f"WocaR-PPO needs {sorted(missing)} in the PPO batch")
        a_w = self.worst_actions(b["next_obs"], ctx.threat)
        with torch.no_grad():
            y = b["rewards"] + ctx.gamma * (1 - b["dones"]) * self.q_values(
                self.worst_target, b["next_obs"], a_w)
        lw = F.mse_loss(self.q_values(self.worst, b["obs"], b["actions"]), y)
        self.worst_optimizer.zero_grad(set_to_none=True)
        lw.backward()
        self.worst_optimizer.step()
        soft_update(self.worst_target, self.worst, float(self.cfg.tau))
        return {"worst_q_loss": float(lw.detach())}

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Q_w's step, then mean max(-A' r, -A' clip(r)), A' = norm(A) + q_weight_t norm(Q_w^-)."""
        with torch.enable_grad():
            logs = self.worst_step(ctx)
        b, w = ctx.batch, self.q_weight_at(ctx.step)
        with torch.no_grad():
            q_w = self.q_values(self.worst_target, b["obs"], b["actions"])
        adv = normalized(b["advantages"]) + w * normalized(q_w)
        logp = log_prob(ctx.nets["policy"], b["mean"], b["actions"])
        pg = clipped_surrogate(logp, b["logprobs"], adv, float(ctx.clip_coef)).mean()
        return pg, {**logs, "q_weight": w, "worst_q": float(q_w.mean())}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """reg * the SA-PPO regularizer (``mean_deviation``)."""
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.reg == 0:
            return batch["mean"].new_zeros(()), {"train_eps": eps}
        d = mean_deviation(self, nets["policy"], batch["obs"], batch["mean"], eps, threat,
                           step).mean()
        return self.cfg.reg * d, {"train_eps": eps, "sa_reg": float(d.detach())}
