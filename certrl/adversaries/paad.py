"""PA-AD (Sun et al. 2022): a director picks a policy-perturbation direction, an actor
realizes it inside the ball.

Director (trained by PPO, ``certrl.adversaries.ppo_lite``): observes the clean network input
x and outputs a direction d in the victim's action space (continuous: R^k; discrete: the
space of action probabilities, R^n); reward = minus the victim's reward.

Actor (``paad_step``): ``steps`` steps of SA-PPO's attack loop
(``certrl.attacks.pgd_minimize_ref``: random start in the eps / steps box, sign steps of
eps / steps, last iterate) maximizing the victim's policy deviation along d,

    <pi~(z) - pi~(x), d / ||d||>,

pi~ the victim's relaxed action (mean, or softmax probabilities). PA-AD's MuJoCo actor
(``perturb_obs_fgsm``) takes one FGSM step of size eps on cos(D, d) + ||D|| instead (see
docs/attacks.md for why certrl does not). As an attack the director is deterministic
(d = its mean).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from certrl.adversaries.victim import action_dim, soft_action
from certrl.adversaries.victim_env import VictimEnv
from certrl.agent import Agent
from certrl.attacks import pgd_minimize_ref
from certrl.threat import ThreatModel


def paad_step(agent: Agent, x: torch.Tensor, d: torch.Tensor, threat: ThreatModel,
              eps: float, steps: int = 10, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """The actor's perturbation of ``x`` toward direction ``d`` (see the module); detached."""
    x = x.detach()
    with torch.no_grad():
        a0 = soft_action(agent, agent.forward(x))
        dn = d.reshape(a0.shape)
        dn = dn / dn.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def toward(z: torch.Tensor) -> torch.Tensor:  # minus the deviation along d
        return -((soft_action(agent, agent.forward(z)) - a0) * dn).sum(1)

    if eps == 0:
        return x.clone()
    return pgd_minimize_ref(toward, x, threat, eps, steps, None, generator)


class DirectorEnv(VictimEnv):
    """The victim's env seen by the PA-AD director: observation = the clean network input,
    action = a direction d in the victim's action space, reward = - victim reward."""

    def __init__(self, agent: Agent, threat: ThreatModel, eps: float, seed: int = 0,
                 deterministic: bool = True, steps: int = 10):
        super().__init__(agent, threat, eps, action_dim(agent), seed, deterministic)
        self.steps = int(steps)

    def perturbed_input(self, action: np.ndarray) -> torch.Tensor:
        """The actor's perturbation of x toward the direction d = ``action``."""
        d = torch.as_tensor(np.asarray(action, dtype=np.float32))[None]
        return paad_step(self.agent, self.x, d, self.threat, self.eps, self.steps, self.gen)


def paad_attack(director: nn.Module, agent: Agent, threat: ThreatModel, eps: float,
                steps: int = 10, seed: int = 0):
    """The trained director and the actor as an attack x -> x' (d = the director's mean)."""
    gen = torch.Generator().manual_seed(int(seed))

    def attack(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = director(x)
        return paad_step(agent, x, d, threat, eps, steps, gen)

    return attack
