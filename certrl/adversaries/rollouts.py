"""Victim rollouts for training learned attackers (Robust Sarsa's data).

``collect(agent, n, seed, ...)`` plays the victim (unattacked) for ``n`` env steps in
its own env, episode k reset with env seed ``TRAIN_SEED_BASE + 1000 * seed + k`` (kept
apart from the evaluation seeds ``eval_seed + i`` of ``certrl attack``), and returns the
transitions as tensors:

* ``x`` (n, d): network inputs; ``a`` (n, k): the Sarsa action input of the action played
  (one-hot for discrete agents); ``r`` (n,): rewards (true env units);
* ``term`` (n,): 1 where the env terminated after the step (no bootstrap);
* ``cont`` (n,): 1 where step t + 1 continues the same episode (Sarsa bootstraps from it);
  steps with term = cont = 0 (time-limit truncation, the end of the batch) have no
  target and are left out of the Sarsa loss.

Actions: the victim's own (deterministic or sampled as asked); for a discrete victim
playing deterministically, with probability ``explore`` a uniform random action instead
(epsilon-greedy), so that Q(s, a) is also fitted off the greedy action.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from certrl.adversaries.victim import action_input, is_discrete
from certrl.agent import Agent
from certrl.envs import make_env

TRAIN_SEED_BASE = 1_000_000


@dataclass
class Batch:
    """Transitions of victim rollouts (see the module docstring)."""

    x: torch.Tensor
    a: torch.Tensor
    r: torch.Tensor
    term: torch.Tensor
    cont: torch.Tensor
    returns: list[float]


class VictimRollouts:
    """An env kept across calls so batches continue episodes (as the references' runners)."""

    def __init__(self, agent: Agent, seed: int, deterministic: bool = True,
                 explore: float = 0.0):
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be in [0, 1]; got {explore}")
        self.agent, self.seed, self.deterministic, self.explore = agent, int(seed), \
            bool(deterministic), float(explore)
        self.env = make_env(agent.env_id, TRAIN_SEED_BASE + 1000 * self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.episode = 0
        self.obs = self._reset()
        self.ep_ret = 0.0

    def _reset(self):
        obs, _ = self.env.reset(seed=TRAIN_SEED_BASE + 1000 * self.seed + self.episode)
        self.episode += 1
        return obs

    def _act(self, x: torch.Tensor) -> np.ndarray:
        a = self.agent.act(x, self.deterministic, self.gen)
        if is_discrete(self.agent) and self.explore > 0 and self.rng.random() < self.explore:
            a = np.asarray([self.rng.integers(int(self.agent.action_space["n"]))])
        return a

    def collect(self, n: int) -> Batch:
        """The next ``n`` transitions."""
        xs, acts, rs, terms, conts, rets = [], [], [], [], [], []
        for t in range(n):
            x = self.agent.preprocess(np.asarray(self.obs)[None])
            a = self._act(x)
            self.obs, r, term, trunc, _ = self.env.step(a[0])
            self.ep_ret += float(r)
            xs.append(x[0])
            acts.append(torch.as_tensor(np.asarray(a)))
            rs.append(float(r))
            terms.append(float(term))
            ended = term or trunc
            conts.append(0.0 if ended or t == n - 1 else 1.0)
            if ended:
                rets.append(self.ep_ret)
                self.ep_ret = 0.0
                self.obs = self._reset()
        a_in = action_input(self.agent, torch.cat([v.reshape(1, -1) for v in acts]))
        return Batch(torch.stack(xs), a_in, torch.tensor(rs), torch.tensor(terms),
                     torch.tensor(conts), rets)

    def close(self) -> None:
        self.env.close()
