"""SA-RL optimal attack (Zhang et al. 2021, ATLA's adversary): a policy over perturbations.

The adversary observes the victim's clean network input x and outputs u in R^d; the
victim sees

    x' = Proj_{B(x, eps) & domain}(x + eps * s * hardtanh(u))

(s the threat model's per-dimension scale; for l_inf the projection only clips to the
domain, for l_2 it shrinks the whitened step onto the l_2 ball), acts on x', and the
adversary receives minus the victim's reward. It is trained by PPO
(``certrl.adversaries.ppo_lite``) on ``AdversaryEnv`` with sampled u; as an attack it is
deterministic: u = the policy mean (ATLA's ``advpolicy`` attack).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from certrl.adversaries.victim import flat_input_dim
from certrl.agent import Agent
from certrl.attacks import project
from certrl.envs import make_env
from certrl.threat import ThreatModel


def perturb(x: torch.Tensor, u: torch.Tensor, threat: ThreatModel, eps: float) -> torch.Tensor:
    """x' = Proj(x + eps * s * hardtanh(u)) (see the module docstring); detached."""
    s = threat.scale_tensor(x)
    d = eps * s * torch.clamp(u.reshape(x.shape), -1.0, 1.0)
    return project(x + d, x, threat, eps).detach()


class AdversaryEnv(gym.Env):
    """The victim's env seen by the adversary: observation = the victim's clean network
    input, action = u, reward = - victim reward (see the module docstring)."""

    metadata: dict = {}

    def __init__(self, agent: Agent, threat: ThreatModel, eps: float, seed: int = 0,
                 deterministic: bool = True):
        d = flat_input_dim(agent)
        self.agent, self.threat, self.eps = agent, threat, float(eps)
        self.deterministic = bool(deterministic)
        self.env = make_env(agent.env_id, seed)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float32)
        self.x: torch.Tensor | None = None

    def _observe(self, obs) -> np.ndarray:
        self.x = self.agent.preprocess(np.asarray(obs)[None])
        return self.x[0].numpy()

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed)
        return self._observe(obs), info

    def step(self, action):
        u = torch.as_tensor(np.asarray(action, dtype=np.float32))
        x_adv = perturb(self.x, u, self.threat, self.eps)
        a = self.agent.act(x_adv, self.deterministic, self.gen)
        obs, r, term, trunc, info = self.env.step(a[0])
        return self._observe(obs), -float(r), term, trunc, info

    def close(self) -> None:
        self.env.close()


def sarl_attack(policy: nn.Module, threat: ThreatModel, eps: float):
    """The trained adversary as an attack x -> x' (u = its mean, deterministic)."""

    def attack(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u = policy(x)
        return perturb(x, u, threat, eps)

    return attack
