"""WocaR-DQN and a reduced WocaR-PPO (Liang et al. 2022, worst-case-aware training).

WocaR-DQN keeps an extra network Q_w (``worst_q``, same spec as Q) estimating the
value under the worst attack:
    A_adv(s') = {a : UB Q(s', a) >= max_j LB Q(s', j)}     (actions an attacker can force,
                                                             IBP bounds of Q over B(s', eps))
    a_w = argmin_{a in A_adv(s')} Q_w(s', a),   y_w = r + gamma (1 - d) Q_w^-(s', a_w)
    L_w = mean Huber(Q_w(s, a) - y_w)                        (Q_w^- a lagged copy)
The main TD target bootstraps through a' = argmax_a (1 - r) Q(s', a) + r Q_w(s', a)
(r = ``worst_weight``, 0.05): y = r + gamma (1 - d) Q^-(s', a'). An optional SA-style
hinge kappa * max(-min_j LB[Q(s, a*) - Q(s, j)], -c) keeps the greedy action stable.

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
from certrl.losses.common import ScheduledLoss, SolverConfig, hinge_margin
from certrl.losses.ppo_utils import clipped_surrogate, log_prob, normalized
from certrl.losses.sa import mean_deviation
from certrl.losses.schedule import EpsSchedule
from certrl.nets import build_network


# Deliberate parallel (duplicates lists it): typed loss configs share one shape (see sa.py).
@dataclass
class WocarConfig:
    """WocaR-DQN: worst-case weight r, hinge kappa / c, worst-net target period, solver."""

    worst_weight: float = 0.05
    kappa: float = 0.01
    c: float = 1.0
    target_update_interval: int = 500
    solver: SolverConfig = field(default_factory=lambda: SolverConfig("ibp"))
    schedule: EpsSchedule = field(default_factory=EpsSchedule)


def attackable_actions(lb: Tensor, ub: Tensor) -> Tensor:
    """(B, K) bool: actions whose UB reaches the largest LB (they may become greedy)."""
    return ub >= lb.max(dim=1, keepdim=True).values


class WocarDQNLoss(ScheduledLoss):
    """Worst-case Q network + worst-case-aware main target (+ optional SA hinge)."""

    name = "wocar"
    algo = "dqn"
    config_cls = WocarConfig
    solvers = ("ibp", "crown-ibp")

    def setup(self, nets: dict[str, nn.Module], cfg) -> None:
        super().setup(nets, cfg)
        self.worst = build_network(nets["q"].spec)
        self.worst.load_state_dict(nets["q"].state_dict())
        self.worst_target = copy.deepcopy(self.worst)
        self._calls = 0

    def extra_networks(self) -> dict[str, nn.Module]:
        return {"worst_q": self.worst}

    def state_dict(self) -> dict:
        """The lagged worst-case net Q_w^- and the update counter (for ``--resume``)."""
        return {"worst_target": self.worst_target.state_dict(), "calls": self._calls}

    def load_state_dict(self, state: dict) -> None:
        self.worst_target.load_state_dict(state["worst_target"])
        self._calls = int(state["calls"])

    def td_target(self, ctx: TrainContext) -> Tensor | None:
        """y = r + gamma (1 - d) Q^-(s', argmax_a (1 - r) Q(s', a) + r Q_w(s', a))."""
        b, nets = ctx.batch, ctx.nets
        x2, rw = b["next_obs"], self.cfg.worst_weight
        with torch.no_grad():
            a_next = ((1 - rw) * nets["q"](x2) + rw * nets["worst_q"](x2)).argmax(1, keepdim=True)
            q_next = nets["target"](x2).gather(1, a_next).squeeze(1)
            return b["rewards"] + ctx.gamma * (1 - b["dones"]) * q_next

    def worst_case_target(self, ctx: TrainContext) -> tuple[Tensor, float]:
        """(y_w, mean number of attackable actions): y_w = r + gamma (1 - d) Q_w^-(s', a_w)."""
        b, q, qw = ctx.batch, ctx.nets["q"], ctx.nets["worst_q"]
        x2 = b["next_obs"]
        with torch.no_grad():
            eps = self.eps_at(ctx.step, ctx.threat)
            lb, ub = self.bounds_of(q, x2, eps, ctx.threat, ctx.step)
            possible = attackable_actions(lb, ub)
            a_w = qw(x2).masked_fill(~possible, float("inf")).argmin(1, keepdim=True)
            q_w = self.worst_target(x2).gather(1, a_w).squeeze(1)
            y_w = b["rewards"] + ctx.gamma * (1 - b["dones"]) * q_w
        return y_w, float(possible.float().sum(1).mean())

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        y_worst, n_possible = self.worst_case_target(ctx)
        qw_a = nets["worst_q"](batch["obs"]).gather(1, batch["actions"][:, None]).squeeze(1)
        lw = F.huber_loss(qw_a, y_worst, reduction="mean", delta=float(ctx.huber_delta))
        self._calls += 1
        if self._calls % max(1, self.cfg.target_update_interval) == 0:
            self.worst_target.load_state_dict(self.worst.state_dict())
        eps = self.eps_at(step, threat)
        logs = {"train_eps": eps, "worst_td": float(lw.detach()),
                "attackable_actions": n_possible}
        loss = lw
        if eps > 0 and self.cfg.kappa > 0:
            q, x = nets["q"], batch["obs"]
            with torch.no_grad():
                a_star = q(x).argmax(1)
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
