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

import numpy as np
import torch
from torch import nn

from certrl.adversaries.victim import flat_input_dim
from certrl.adversaries.victim_env import VictimEnv
from certrl.agent import Agent
from certrl.attacks import project
from certrl.threat import ThreatModel


def perturb(x: torch.Tensor, u: torch.Tensor, threat: ThreatModel, eps: float) -> torch.Tensor:
    """x' = Proj(x + eps * s * hardtanh(u)) (see the module docstring); detached."""
    s = threat.scale_tensor(x)
    d = eps * s * torch.clamp(u.reshape(x.shape), -1.0, 1.0)
    return project(x + d, x, threat, eps).detach()


class AdversaryEnv(VictimEnv):
    """The victim's env seen by the adversary: observation = the victim's clean network
    input, action = u, reward = - victim reward (see the module docstring)."""

    def __init__(self, agent: Agent, threat: ThreatModel, eps: float, seed: int = 0,
                 deterministic: bool = True):
        super().__init__(agent, threat, eps, flat_input_dim(agent), seed, deterministic)

    def perturbed_input(self, action: np.ndarray) -> torch.Tensor:
        """x' = Proj(x + eps * s * hardtanh(u)), u = ``action``."""
        u = torch.as_tensor(np.asarray(action, dtype=np.float32))
        return perturb(self.x, u, self.threat, self.eps)


def sarl_attack(policy: nn.Module, threat: ThreatModel, eps: float):
    """The trained adversary as an attack x -> x' (u = its mean, deterministic)."""

    def attack(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            u = policy(x)
        return perturb(x, u, threat, eps)

    return attack
