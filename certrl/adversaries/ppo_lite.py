"""A small single-env PPO for learned adversaries (the SA-RL / ATLA adversary's trainer).

ATLA's adversary (``Trainer`` in ``adv_ppo`` mode with ``ppo_lr_adam = 0``) is trained by
the same PPO as the agents: one actor, T = 2048 steps per round, GAE (gamma 0.99,
lambda 0.95), 10 epochs x 32 minibatches, clipped surrogate (0.2), entropy 0, Adam 3e-4
for the policy and the value net, learning rates annealed linearly to 0, value clipping
(0.2), rewards scaled by the running std of the discounted return and clipped to +-10,
episode ends (time limits included) not bootstrapped. Policy: diagonal Gaussian, mean
= 64-64 tanh MLP, state-independent log std (certrl's ``gaussian_policy``); value: a
64-64 tanh MLP. ``train_ppo`` runs ``ceil(budget / 2048)`` rounds on any gymnasium env
with flat Box observations and actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from certrl.adversaries.rounds import RoundsConfig
from certrl.envs import RunningMeanStd
from certrl.nets import build_network


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class PPOLiteConfig(RoundsConfig):
    """Adversary PPO settings (ATLA's MuJoCo defaults; ``budget`` = env steps)."""

    budget: int = 488 * 2048  # ATLA's attack configs: train_steps 488 x T 2048
    steps_per_iter: int = 2048
    epochs: int = 10
    minibatches: int = 32
    lr: float = 3e-4
    value_lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    entropy: float = 0.0
    anneal_lr: bool = True
    hidden: tuple[int, ...] = (64, 64)
    seed: int = 0


def make_nets(obs_dim: int, act_dim: int, hidden=(64, 64)) -> dict[str, nn.Module]:
    """Fresh adversary policy and value networks."""
    body = {"kind": "mlp", "in_dim": int(obs_dim), "hidden": [int(h) for h in hidden],
            "activation": "tanh"}
    return {"policy": build_network({"type": "gaussian_policy", "body": body,
                                     "n_out": int(act_dim), "log_std_init": 0.0}),
            "value": build_network({"type": "value", "body": body})}


def gae(r: torch.Tensor, v: torch.Tensor, done: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A_t = sum_k (gamma lam)^k delta_{t+k} within the episode, delta_t = r_t +
    gamma V_{t+1} (1 - done_t) - V_t, V_{T} := V_{T-1} after the last step (ATLA's
    ``advantage_and_return``); R = A + V."""
    adv = torch.zeros_like(r)
    last = 0.0
    for t in range(r.shape[0] - 1, -1, -1):
        nv = v[t + 1] if t + 1 < r.shape[0] else v[t]
        nd = 1.0 - done[t]
        delta = r[t] + gamma * nv * nd - v[t]
        last = delta + gamma * lam * nd * last
        adv[t] = last
    return adv, adv + v


class Runner:
    """Steps one env with the current policy, scaling rewards as ATLA's env wrapper."""

    def __init__(self, env, gamma: float, seed: int):
        self.env, self.gamma = env, gamma
        self.obs, _ = env.reset(seed=seed)
        self.ret_rms, self.disc = RunningMeanStd(()), 0.0
        self.ep_ret, self.returns = 0.0, []

    def collect(self, policy: nn.Module, n: int, gen: torch.Generator) -> dict:
        keys = ("obs", "act", "logp", "rew", "done")
        buf: dict[str, list] = {k: [] for k in keys}
        for _ in range(n):
            x = torch.as_tensor(np.asarray(self.obs, dtype=np.float32))[None]
            with torch.no_grad():
                mean = policy(x)
                std = policy.log_std.exp().expand_as(mean)
                u = mean + std * torch.randn(mean.shape, generator=gen)
                logp = torch.distributions.Normal(mean, std).log_prob(u).sum(1)
            self.obs, r, term, trunc, _ = self.env.step(u[0].numpy())
            self.ep_ret += float(r)
            self.disc = self.disc * self.gamma + float(r)
            self.ret_rms.update(np.asarray([self.disc]))
            done = bool(term or trunc)
            for k, v in zip(keys, (x[0], u[0], logp[0], float(np.clip(
                    r / self.ret_rms.std, -10, 10)), float(done))):
                buf[k].append(v)
            if done:
                self.returns.append(self.ep_ret)
                self.ep_ret, self.disc = 0.0, 0.0
                self.obs, _ = self.env.reset()
        return {k: torch.stack(v) if isinstance(v[0], torch.Tensor) else torch.tensor(v)
                for k, v in buf.items()}


def ppo_update(nets: dict, opts: tuple, roll: dict, cfg: PPOLiteConfig,
               rng: np.random.Generator) -> dict:
    """``cfg.epochs`` passes of clipped-surrogate and clipped-value minibatch steps."""
    policy, value = nets["policy"], nets["value"]
    n = roll["obs"].shape[0]
    for _ in range(cfg.epochs):
        for idx in np.array_split(rng.permutation(n), cfg.minibatches):
            i = torch.as_tensor(idx)
            obs, adv = roll["obs"][i], roll["adv"][i]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(idx) > 1 else adv
            dist = policy.distribution(obs)
            logp = dist.log_prob(roll["act"][i]).sum(1)
            ratio = torch.exp(logp - roll["logp"][i])
            surr = torch.minimum(ratio * adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv)
            pl = -surr.mean() - cfg.entropy * dist.entropy().sum(1).mean()
            v = value(obs).reshape(-1)
            v_old = roll["val"][i]
            v_cl = v_old + (v - v_old).clamp(-cfg.value_clip, cfg.value_clip)
            vl = torch.maximum((v - roll["ret"][i]) ** 2, (v_cl - roll["ret"][i]) ** 2).mean()
            for opt, loss in zip(opts, (pl, vl)):
                opt.zero_grad()
                loss.backward()
                opt.step()
    return {"policy_loss": float(pl.detach()), "value_loss": float(vl.detach())}


def train_ppo(env, obs_dim: int, act_dim: int, cfg: PPOLiteConfig, progress=None
              ) -> tuple[dict[str, nn.Module], dict]:
    """Train an adversary policy on ``env``; returns (nets, info) with the mean return
    (in the env's reward units) of the episodes of the last round and of all rounds.
    ``progress``: optional callable(round, info) after each round."""
    torch.manual_seed(cfg.seed)
    nets = make_nets(obs_dim, act_dim, cfg.hidden)
    opts = (torch.optim.Adam(nets["policy"].parameters(), lr=cfg.lr, eps=1e-5),
            torch.optim.Adam(nets["value"].parameters(), lr=cfg.value_lr, eps=1e-5))
    n_it = cfg.iterations
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1 - i / n_it if cfg.anneal_lr
                                                else 1.0) for o in opts]
    runner = Runner(env, cfg.gamma, cfg.seed)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    info: dict = {}
    for it in range(n_it):
        seen = len(runner.returns)
        roll = runner.collect(nets["policy"], cfg.steps_per_iter, gen)
        with torch.no_grad():
            roll["val"] = nets["value"](roll["obs"]).reshape(-1)
        roll["adv"], roll["ret"] = gae(roll["rew"], roll["val"], roll["done"], cfg.gamma,
                                       cfg.gae_lambda)
        info.update(ppo_update(nets, opts, roll, cfg, rng))
        for s in scheds:
            s.step()
        last = runner.returns[seen:]
        info.update(iteration=it + 1, episodes=len(runner.returns),
                    round_return=float(np.mean(last)) if last else float("nan"))
        if progress is not None:
            progress(it + 1, info)
    return {k: n.eval() for k, n in nets.items()}, info
