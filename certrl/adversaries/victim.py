"""What the attacks read from the victim: its relaxed action, its value, its policy change.

A victim is a certrl ``Agent`` (DQN: Q-values; PPO: logits or the Gaussian mean, plus a
value head). All maps work on network-input batches x (B, *shape):

* ``soft_action(agent, out)``: the action the victim takes, relaxed so that it is
  differentiable: softmax(out) for discrete agents (a point of the simplex; the one-hot
  greedy action in the limit), the action mean mu for continuous agents (SA-PPO's attacks
  use the mean, ``policy_model(states)[0]``).
* ``policy_change(agent, out_adv, out_clean)``: the MAD term. Continuous:
  mean_k ((mu_k(x') - mu_k(x)) / sigma_k)^2 with sigma divided by its mean (SA-PPO's
  ``sarsa+action``); discrete: KL(softmax(out_clean) || softmax(out_adv)).
* ``value(agent, x)``: PPO's value head V(x) (B,); DQN's max_a Q(x, a).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from certrl.agent import Agent


def is_discrete(agent: Agent) -> bool:
    """True for a discrete action space."""
    return agent.action_space_kind == "discrete"


def action_dim(agent: Agent) -> int:
    """Width of the (relaxed) action vector: the number of actions or of action entries."""
    if is_discrete(agent):
        return int(agent.action_space["n"])
    n = 1
    for v in agent.action_space["shape"]:
        n *= int(v)
    return n


def flat_input_dim(agent: Agent) -> int:
    """Elements of one network input; ValueError for image inputs (the learned attackers
    take flat vectors, as the references' MuJoCo code)."""
    if len(agent.obs_shape) != 1:
        raise ValueError(f"learned attacks (rs, rs+mad, sa-rl) need flat observations; "
                         f"{agent.env_id} has shape {agent.obs_shape}")
    return int(agent.obs_shape[0])


def soft_action(agent: Agent, out: torch.Tensor) -> torch.Tensor:
    """softmax(out) (discrete) or the action mean itself (continuous), flattened (B, k)."""
    if is_discrete(agent):
        return torch.softmax(out, dim=1)
    return out.reshape(out.shape[0], -1)


def action_input(agent: Agent, actions: torch.Tensor) -> torch.Tensor:
    """Actions played (B,) int or (B, ...) float -> the Sarsa network's action input
    (B, k): one-hot for discrete agents, the flattened action otherwise."""
    if is_discrete(agent):
        return F.one_hot(actions.long().reshape(-1), action_dim(agent)).float()
    return actions.reshape(actions.shape[0], -1).float()


def policy_change(agent: Agent, out_adv: torch.Tensor, out_clean: torch.Tensor) -> torch.Tensor:
    """The MAD objective (B,), see the module docstring."""
    if is_discrete(agent):
        logp = F.log_softmax(out_clean, dim=1)
        return (logp.exp() * (logp - F.log_softmax(out_adv, dim=1))).sum(1)
    std = agent.net.log_std.exp().detach()
    std = std / std.mean()
    d = (out_adv - out_clean).reshape(out_adv.shape[0], -1) / std.reshape(1, -1)
    return (d * d).mean(1)


def value(agent: Agent, x: torch.Tensor) -> torch.Tensor:
    """V(x) (PPO's value head) or max_a Q(x, a) (DQN), shape (B,)."""
    if "value" in agent.nets:
        return agent.nets["value"](x).reshape(-1)
    return agent.forward(x).max(1).values


def critic_objective(agent: Agent, x: torch.Tensor):
    """The critic attack's objective z -> (B,), to be minimized over the ball around x.

    PPO (a value head): V(z), the victim's value of the perturbed input (SA-PPO's
    ``critic`` attack, after Pattanaik et al.). DQN: sum_a softmax(Q(z))_a Q(x, a), the
    clean Q-value of the action the victim takes at z (relaxed), so the attack drives
    the victim to its own worst action (Pattanaik et al.'s DQN attack).
    """
    if "value" in agent.nets:
        return lambda z: agent.nets["value"](z).reshape(-1)
    with torch.no_grad():
        q_clean = agent.forward(x)
    return lambda z: (torch.softmax(agent.forward(z), dim=1) * q_clean).sum(1)
