"""The victim's env as a learned adversary sees it (SA-RL's adversary, PA-AD's director).

Observation: the victim's clean network input x (flat, float32); action: the adversary's
output a in R^k; the victim acts on ``perturbed_input(a)`` (a subclass's map, inside the
threat model's ball around x) and the adversary's reward is minus the victim's reward.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from certrl.adversaries.victim import flat_input_dim
from certrl.agent import Agent
from certrl.envs import make_env
from certrl.threat import ThreatModel


class VictimEnv(gym.Env):
    """Base of the adversaries' envs (see the module); subclasses give ``perturbed_input``."""

    metadata: dict = {}

    def __init__(self, agent: Agent, threat: ThreatModel, eps: float, action_width: int,
                 seed: int = 0, deterministic: bool = True):
        n = flat_input_dim(agent)
        self.agent, self.threat, self.eps = agent, threat, float(eps)
        self.deterministic = bool(deterministic)
        self.env = make_env(agent.env_id, seed)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (int(action_width),), np.float32)
        self.x: torch.Tensor | None = None

    def perturbed_input(self, action: np.ndarray) -> torch.Tensor:  # pragma: no cover
        """The input x' (1, n) the victim sees for the adversary's ``action``."""
        raise NotImplementedError

    def observe(self, obs) -> np.ndarray:
        """Store the clean network input x of ``obs`` and return it as the observation."""
        self.x = self.agent.preprocess(np.asarray(obs)[None])
        return self.x[0].numpy()

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed)
        return self.observe(obs), info

    def step(self, action):
        x_adv = self.perturbed_input(action)
        a = self.agent.act(x_adv, self.deterministic, self.gen)
        obs, r, term, trunc, info = self.env.step(a[0])
        return self.observe(obs), -float(r), term, trunc, info

    def close(self) -> None:
        self.env.close()
