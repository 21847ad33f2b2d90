"""SortNet DQN: a 1-Lipschitz (l_inf) Q-network trained with TD + a hinge on the
closed-form certified margin.

The Q-network is ``certrl.nets.LipschitzQNetwork`` (type "lipschitz_q"): Q = s * f(x)
with f a ``bounds.lipschitz.LipschitzMLP``, so each Q-value is s-Lipschitz and
    LB[Q(s', a*) - Q(s', j)] = Q(s, a*) - Q(s, j) - 2 s eps   for all s' in B(s, eps)
(exact for the worst case of a 1-Lipschitz bound; with a per-dimension threat scale the
set lies in the l_inf ball of radius eps * max(scale) = ``threat.max_shift(eps)``, which
replaces eps). The loss adds
    kappa * mean_i max(-min_{j != a*} (Q(s_i, a*) - Q(s_i, j) - 2 s eps), -c),
the SA-DQN hinge on that margin; no solver is needed. ``sortnet_q_spec`` gives the
network spec for ``DQNConfig(q_spec=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certrl.losses.base import Logs, TrainContext
from certrl.losses.common import ScheduledLoss, SolverConfig, hinge_margin
from certrl.losses.schedule import EpsSchedule


def sortnet_q_spec(hidden: int = 128, depth: int = 3, scale: float = 10.0,
                   kind: str = "sortnet") -> dict:
    """Spec of a Lipschitz Q-network (in_dim / n_out are filled in by DQN)."""
    return {"type": "lipschitz_q", "hidden": int(hidden), "depth": int(depth),
            "scale": float(scale), "kind": kind}


@dataclass
class SortNetConfig:
    """SortNet DQN: hinge weight kappa, cap c, eps schedule (solver unused: closed form)."""

    kappa: float = 0.1
    c: float = 1.0
    solver: SolverConfig = field(default_factory=SolverConfig)
    schedule: EpsSchedule = field(default_factory=EpsSchedule)


def lipschitz_margins(q: Tensor, labels: Tensor, eps: float, lipschitz: float) -> Tensor:
    """(B, K) certified margin lower bounds q_label - q_j - 2 L eps; +inf at the label."""
    m = q.gather(1, labels[:, None]) - q - 2.0 * lipschitz * eps
    own = torch.nn.functional.one_hot(labels, q.shape[1]).bool()
    return m.masked_fill(own, float("inf"))


class SortNetLoss(ScheduledLoss):
    """TD + kappa * hinge on the closed-form certified margin of a Lipschitz Q-network."""

    name = "sortnet"
    algo = "dqn"
    config_cls = SortNetConfig

    def setup(self, nets: dict[str, nn.Module], cfg) -> None:
        super().setup(nets, cfg)
        if not hasattr(nets["q"], "lipschitz_linf"):
            raise ValueError("the sortnet loss needs a Lipschitz Q-network: "
                             "DQNConfig(q_spec=certrl.losses.sortnet.sortnet_q_spec())")

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        batch, nets, threat, step = ctx.batch, ctx.nets, ctx.threat, ctx.step
        eps = self.eps_at(step, threat)
        if self.cfg.kappa == 0:
            return batch["q"].new_zeros(()), {"train_eps": eps}
        q = nets["q"]
        out = q(batch["obs"])
        labels = out.detach().argmax(1)
        shift = threat.max_shift(eps, norm=float("inf")) if eps > 0 else 0.0
        m = lipschitz_margins(out, labels, shift, float(q.lipschitz_linf))
        hinge = hinge_margin(m, self.cfg.c).mean()
        return self.cfg.kappa * hinge, {"train_eps": eps, "sa_hinge": float(hinge.detach())}
