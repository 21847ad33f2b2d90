"""WocaR-DQN and a reduced WocaR-PPO (Liang et al. 2022, worst-case-aware training).

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

WocaR-PPO (reduced, no separate worst-attack critic): the advantage is mixed with a
worst-case one, A_mix = (1 - r) A + r (A - (V(s) - LB V(s'))), LB by IBP over the ball
(the value an attacker can knock off the critic), and reg * the SA-PPO deviation
term is added.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig, annealed_kappa, hinge_margin
from certrl.losses.ppo_utils import clipped_surrogate, log_prob, normalized
from certrl.losses.sa import mean_deviation
from certrl.losses.schedule import EpsSchedule
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


class WocarDQNLoss(ScheduledLoss):
    """Worst-case Q network with its own optimizer, worst-case-aware main target and the
    (1 - kappa_t)-weighted bound regression on the main Q (the reference's WocaR-DQN).

    Per DQN update: ``td_target`` (the first hook) first takes Q_w's own Adam step when
    due (as the reference does before the main loss), then returns the main target.
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
        self._calls = 0
        self._worst_logs: Logs = {}

    def extra_networks(self) -> dict[str, nn.Module]:
        return {"worst_q": self.worst}

    def jointly_optimized(self) -> dict[str, nn.Module]:
        """None: Q_w is trained by its own optimizer (``worst_optimizer``)."""
        return {}

    def state_dict(self) -> dict:
        """Q_w's optimizer state, the update counter and the lagged Q_w^- (if any)."""
        st = {"worst_optimizer": self.worst_optimizer.state_dict(), "calls": self._calls}
        if self.worst_target is not None:
            st["worst_target"] = self.worst_target.state_dict()
        return st

    def load_state_dict(self, state: dict) -> None:
        self._calls = int(state["calls"])
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
        if self._calls % int(self.cfg.worst_every) == 0:
            with torch.enable_grad():
                self._worst_logs = self.worst_step(ctx)
        self._calls += 1
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
        n = self._calls // int(self.cfg.worst_every) + 1
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


# Deliberate parallel (duplicates lists it): typed loss configs share one shape (see sa.py).
@dataclass
class WocarPPOConfig:
    """Reduced WocaR-PPO: worst-case advantage weight r, deviation weight reg, solver, schedule."""

    worst_weight: float = 0.05
    reg: float = 0.1
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp"))
    schedule: EpsSchedule = field(default_factory=EpsSchedule)


class WocarPPOLoss(ScheduledLoss):
    """Surrogate on A_mix = A - r (V(s) - LB V(s')) plus reg * SA-PPO deviation (reduced WocaR)."""

    name = "wocar"
    algo = "ppo"
    config_cls = WocarPPOConfig
    solvers = ("ibp", "crown-ibp")

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Clipped surrogate on the worst-case-mixed advantage; unchanged at eps 0."""
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.worst_weight == 0:
            return pg_loss, {}
        value, policy, x = nets["value"], nets["policy"], batch["obs"]
        with torch.no_grad():
            v = value(x).squeeze(1)
            lbv, _ = self.bounds_of(value, x, eps, threat, step)
            drop = v - lbv.squeeze(1)
        adv = normalized(batch["advantages"] - self.cfg.worst_weight * drop)
        logp = log_prob(policy, batch["mean"], batch["actions"])
        return clipped_surrogate(logp, batch["logprobs"], adv, float(ctx.clip_coef)).mean(), {}

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.reg == 0:
            return batch["mean"].new_zeros(()), {"train_eps": eps}
        d = mean_deviation(self, nets["policy"], batch["obs"], batch["mean"], eps, threat,
                           step).mean()
        return self.cfg.reg * d, {"train_eps": eps, "sa_reg": float(d.detach())}
