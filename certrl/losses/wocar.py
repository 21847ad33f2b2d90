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

from certrl.losses.common import ScheduledLoss, SolverConfig, hinge_margin
from certrl.losses.ppo_utils import clipped_surrogate, log_prob, normalized
from certrl.losses.sa import mean_deviation
from certrl.losses.schedule import EpsSchedule
from certrl.nets import build_network
from certrl.threat import ThreatModel


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
        self._y_worst: Tensor | None = None

    def extra_networks(self) -> dict[str, nn.Module]:
        return {"worst_q": self.worst}

    def state_dict(self) -> dict:
        """The lagged worst-case net Q_w^- and the update counter (for ``--resume``)."""
        return {"worst_target": self.worst_target.state_dict(), "calls": self._calls}

    def load_state_dict(self, state: dict) -> None:
        self.worst_target.load_state_dict(state["worst_target"])
        self._calls = int(state["calls"])

    def td_target(self, batch: dict[str, Tensor], nets: dict[str, nn.Module],
                  threat: ThreatModel, step: int) -> Tensor | None:
        gamma = float(getattr(self.algo_cfg, "gamma", 0.99))
        x2, r, d = batch["next_obs"], batch["rewards"], batch["dones"]
        q, qw = nets["q"], nets["worst_q"]
        rw = self.cfg.worst_weight
        with torch.no_grad():
            a_next = ((1 - rw) * q(x2) + rw * qw(x2)).argmax(1, keepdim=True)
            y = r + gamma * (1 - d) * nets["target"](x2).gather(1, a_next).squeeze(1)
            eps = self.eps_at(step, threat)
            lb, ub = self.bounds_of(q, x2, eps, threat, step)
            possible = attackable_actions(lb, ub)
            a_w = qw(x2).masked_fill(~possible, float("inf")).argmin(1, keepdim=True)
            self._y_worst = r + gamma * (1 - d) * self.worst_target(x2).gather(1, a_w).squeeze(1)
            self._n_possible = float(possible.float().sum(1).mean())
        return y

    def __call__(self, batch: dict[str, Tensor], nets: dict[str, nn.Module],
                 threat: ThreatModel, step: int) -> tuple[Tensor, dict[str, float]]:
        if self._y_worst is None:
            raise RuntimeError("WocarDQNLoss: td_target must run before the loss (DQN does this)")
        qw_a = nets["worst_q"](batch["obs"]).gather(1, batch["actions"][:, None]).squeeze(1)
        hd = float(getattr(self.algo_cfg, "huber_delta", 1.0))
        lw = F.huber_loss(qw_a, self._y_worst, reduction="mean", delta=hd)
        self._calls += 1
        if self._calls % max(1, self.cfg.target_update_interval) == 0:
            self.worst_target.load_state_dict(self.worst.state_dict())
        eps = self.eps_at(step, threat)
        logs = {"train_eps": eps, "worst_td": float(lw.detach()),
                "attackable_actions": self._n_possible}
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

    def modify_policy_loss(self, pg_loss: Tensor, batch: dict[str, Tensor],
                           nets: dict[str, nn.Module], threat: ThreatModel,
                           step: int) -> Tensor:
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.worst_weight == 0:
            return pg_loss
        value, policy, x = nets["value"], nets["policy"], batch["obs"]
        with torch.no_grad():
            v = value(x).squeeze(1)
            lbv, _ = self.bounds_of(value, x, eps, threat, step)
            drop = v - lbv.squeeze(1)
        adv = normalized(batch["advantages"] - self.cfg.worst_weight * drop)
        clip = float(getattr(self.algo_cfg, "clip_coef", 0.2))
        logp = log_prob(policy, batch["mean"], batch["actions"])
        return clipped_surrogate(logp, batch["logprobs"], adv, clip).mean()

    def __call__(self, batch: dict[str, Tensor], nets: dict[str, nn.Module],
                 threat: ThreatModel, step: int) -> tuple[Tensor, dict[str, float]]:
        eps = self.eps_at(step, threat)
        if eps <= 0 or self.cfg.reg == 0:
            return batch["mean"].new_zeros(()), {"train_eps": eps}
        d = mean_deviation(self, nets["policy"], batch["obs"], batch["mean"], eps, threat,
                           step).mean()
        return self.cfg.reg * d, {"train_eps": eps, "sa_reg": float(d.detach())}
