"""Robust Sarsa (RS): a robust Q^pi of the fixed victim, and the attacks that minimize it.

Training (SA-PPO, Zhang et al. 2020, ``Trainer.sarsa_steps`` and ``test.py
--sarsa-enable``): Q_theta(s, a) is an MLP on the concatenation [x, a] (x the victim's
network input, a the action input: one-hot for discrete agents), 64-64 tanh, orthogonal
init. ``iterations`` = ceil(budget / steps_per_iter) rounds; each collects
``steps_per_iter`` victim transitions (``certrl.adversaries.rollouts``) and runs ``epochs``
passes over ``minibatches`` shuffled minibatches of

    L = SmoothL1(Q(s_t, a_t), r_t + gamma (1 - term_t) Q(s_{t+1}, a_{t+1}).detach())
        + reg * mean_t max(ub_t - Q_t, Q_t - lb_t)^2,

[lb_t, ub_t] sound bounds on Q over the l_inf box around [x_t, a_t] of half-width
eps_sarsa (times the threat model's per-dimension scale on the state entries), mixed
beta * IBP + (1 - beta) * CROWN. Schedules (the reference's): eps_sarsa and beta ramp
linearly from 0 to their final values (eps_sarsa, 1) over the second third of the rounds
(per minibatch); the Adam learning rate (2.5e-4, eps 1e-5) is constant for two thirds of
the rounds and decays linearly to 0 over the last third (per round).

Attack (SA-PPO's ``sarsa`` / ``sarsa+action``, ``certrl.attacks.pgd_minimize_ref``):
minimize over x' in the ball (1 - ratio) Q~(x, x') - ratio * MAD(x', x), Q~ the Sarsa Q of
the action the victim takes at the perturbed input (``rs_objective``), ratio 0 for ``rs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import bounds
from certrl.adversaries.rollouts import Batch, VictimRollouts
from certrl.adversaries.rounds import RoundsConfig
from certrl.adversaries.victim import (
    action_dim,
    flat_input_dim,
    is_discrete,
    policy_change,
    soft_action,
)
from certrl.agent import Agent
from certrl.nets import build_network


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class SarsaConfig(RoundsConfig):
    """Robust Sarsa settings (defaults: SA-PPO's MuJoCo config and ``test.py``)."""

    budget: int = 30 * 2048  # victim env steps: the reference's 30 Sarsa steps x T = 2048
    steps_per_iter: int = 2048
    epochs: int = 10
    minibatches: int = 32
    lr: float = 2.5e-4
    gamma: float = 0.99
    sarsa_eps: float = 0.02
    sarsa_reg: float = 0.1
    hidden: tuple[int, ...] = (64, 64)
    deterministic: bool = True
    explore: float = 0.1  # discrete deterministic victims only (see rollouts)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "sarsa_eps", "sarsa_reg"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ValueError(f"SarsaConfig.{name} must be finite and >= 0; got {v}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"SarsaConfig.gamma must be in (0, 1]; got {self.gamma}")


def sarsa_spec(agent: Agent, hidden=(64, 64)) -> dict:
    """Network spec of Q(s, a): a certrl ``value`` network on [x, a] (tanh MLP)."""
    d = flat_input_dim(agent) + action_dim(agent)
    return {"type": "value", "body": {"kind": "mlp", "in_dim": d,
                                      "hidden": [int(h) for h in hidden], "activation": "tanh"}}


def as_sequential(net: nn.Module) -> nn.Sequential:
    """The value network as an ``nn.Sequential`` sharing its parameters (for bounds)."""
    return nn.Sequential(*net.body, net.head)


def ramp(progress: float, start: float, length: float) -> float:
    """0 before ``start``, 1 after ``start + length``, linear between (LinearScheduler)."""
    if length <= 0:
        return float(progress >= start)
    return float(min(1.0, max(0.0, (progress - start) / length)))


def joint_radius(agent: Agent, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """Per-entry l_inf radius of the box around [x, a]: eps * s_i on the state entries
    (s the threat model's scale, ones without one), eps on the action entries."""
    s = agent.threat_model.scale_tensor(x).reshape(-1)
    return torch.cat([eps * s, torch.full((k,), eps, dtype=x.dtype)])


def sarsa_loss(q_net: nn.Module, seq: nn.Sequential, batch: Batch, idx: torch.Tensor,
               gamma: float, reg: float, radius: torch.Tensor, beta: float) -> tuple:
    """SmoothL1 TD loss + robustness regularizer of one minibatch ``idx`` (see module)."""
    use = idx[(batch.cont[idx] + batch.term[idx]) > 0]
    inp = torch.cat([batch.x[use], batch.a[use]], dim=1)
    q = q_net(inp).reshape(-1)
    nxt = torch.clamp(use + 1, max=batch.x.shape[0] - 1)
    with torch.no_grad():
        q_next = q_net(torch.cat([batch.x[nxt], batch.a[nxt]], dim=1)).reshape(-1)
    target = batch.r[use] + gamma * (1 - batch.term[use]) * q_next
    td = F.smooth_l1_loss(q, target)
    if reg <= 0 or float(radius.max()) <= 0 or use.numel() == 0:
        return td, torch.zeros(())
    ball = bounds.LpBall(inp, radius.expand_as(inp), norm=math.inf)
    ilb, iub = bounds.compute(seq, ball, method="ibp")
    lb, ub = ilb, iub
    if beta < 1:
        clb, cub = bounds.compute(seq, ball, method="crown")
        lb, ub = beta * ilb + (1 - beta) * clb, beta * iub + (1 - beta) * cub
    diff = torch.maximum(ub.reshape(-1) - q, q - lb.reshape(-1))
    return td, reg * (diff * diff).mean()


def sarsa_step(q_net: nn.Module, seq: nn.Sequential, opt, batch: Batch, idx: torch.Tensor,
               cfg: SarsaConfig, radius: torch.Tensor, beta: float, info: dict
               ) -> tuple[float, float]:
    """One Adam step on ``sarsa_loss``. Where the CROWN part gives a non-finite gradient
    (the tanh relaxation of a near-zero-width box, at the start of the eps ramp) the
    step is redone with IBP bounds only (beta = 1); counted in info["ibp_fallbacks"]."""
    for b in (beta, 1.0):
        opt.zero_grad()
        td, reg = sarsa_loss(q_net, seq, batch, idx, cfg.gamma, cfg.sarsa_reg, radius, b)
        (td + reg).backward()
        if all(p.grad is None or bool(torch.isfinite(p.grad).all())
               for p in q_net.parameters()):
            break
        info["ibp_fallbacks"] = info.get("ibp_fallbacks", 0) + 1
    opt.step()
    return float(td.detach()), float(reg.detach())


def train_sarsa(agent: Agent, cfg: SarsaConfig, progress=None) -> tuple[nn.Module, dict]:
    """Fit the robust Q^pi of ``agent`` (see the module docstring); returns (net, info)
    with info = {"mean_return", "td_loss", "reg_loss", "q_mean", "episodes"}.
    ``progress``: an optional callable(iteration, info) called after each round."""
    flat_input_dim(agent)
    torch.manual_seed(cfg.seed)
    q_net = build_network(sarsa_spec(agent, cfg.hidden))
    seq = as_sequential(q_net)
    opt = torch.optim.Adam(q_net.parameters(), lr=cfg.lr, eps=1e-5)
    n_it = cfg.iterations
    decay_at = n_it * 2 / 3
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 if i < decay_at else max(0.0, (n_it - i) / (n_it - decay_at)))
    explore = cfg.explore if is_discrete(agent) and cfg.deterministic else 0.0
    runner = VictimRollouts(agent, cfg.seed, cfg.deterministic, explore)
    rng = np.random.default_rng(cfg.seed)
    k = action_dim(agent)
    info: dict = {"returns": [], "ibp_fallbacks": 0}
    try:
        for it in range(n_it):
            batch = runner.collect(cfg.steps_per_iter)
            info["returns"] += batch.returns
            n_mb = cfg.epochs * cfg.minibatches
            for j in range(n_mb):
                if j % cfg.minibatches == 0:
                    splits = np.array_split(rng.permutation(batch.x.shape[0]), cfg.minibatches)
                frac = it + (j + 1) / n_mb
                sch = ramp(frac, n_it / 3, n_it / 3)
                radius = joint_radius(agent, batch.x, k, cfg.sarsa_eps * sch)
                idx = torch.as_tensor(splits[j % cfg.minibatches])
                td, reg = sarsa_step(q_net, seq, opt, batch, idx, cfg, radius, sch, info)
            sched.step()
            info.update(td_loss=td, reg_loss=reg, iteration=it + 1)
            if progress is not None:
                progress(it + 1, info)
    finally:
        runner.close()
    rets = info.pop("returns")
    info["episodes"] = len(rets)
    info["mean_return"] = float(np.mean(rets)) if rets else float("nan")
    return q_net.eval(), info


def rs_objective(agent: Agent, q_net: nn.Module, x: torch.Tensor, ratio: float = 0.0):
    """z -> (1 - ratio) Q~(x, z) - ratio * MAD(z, x), per sample (B,), to be minimized over
    the ball around x (SA-PPO's ``sarsa`` / ``sarsa+action`` loss).

    Continuous victims: Q~ = Q(x, mu(z)), the Sarsa Q at the victim's mean action at z (as
    SA-PPO). Discrete victims: Q~ = sum_a softmax(out(z))_a Q(x, e_a), the expected Sarsa Q
    of the victim's relaxed action (Q was fitted on one-hot actions only, so it is read at
    the one-hot corners, not at the soft point)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the RS+MAD ratio must be in [0, 1]; got {ratio}")
    x = x.detach()
    with torch.no_grad():
        out_clean = agent.forward(x)

    q_each = None
    if is_discrete(agent):  # Q(x, e_a) for every action a, batch-major (B, n)
        n = action_dim(agent)
        eye = torch.eye(n, dtype=x.dtype).repeat(x.shape[0], 1)
        with torch.no_grad():
            q_each = q_net(torch.cat([x.repeat_interleave(n, 0), eye], 1)).reshape(-1, n)

    def obj(z: torch.Tensor) -> torch.Tensor:
        out = agent.forward(z)
        if q_each is not None:
            q = (soft_action(agent, out) * q_each).sum(1)
        else:
            q = q_net(torch.cat([x, soft_action(agent, out)], dim=1)).reshape(-1)
        if ratio == 0:
            return q
        return (1 - ratio) * q - ratio * policy_change(agent, out, out_clean)

    return obj
