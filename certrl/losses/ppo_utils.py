"""Log-probabilities and the clipped surrogate shared by the PPO losses."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def log_prob(policy: nn.Module, out: Tensor, actions: Tensor) -> Tensor:
    """log pi(a | out) for a Gaussian (out = mean, std from ``policy.log_std``) or categorical
    (out = logits) policy; summed over action dimensions. (B,)."""
    if hasattr(policy, "log_std"):
        std = policy.log_std.exp().expand_as(out)
        return torch.distributions.Normal(out, std).log_prob(actions).sum(-1)
    return torch.log_softmax(out, dim=1).gather(1, actions.long()[:, None]).squeeze(1)


def normalized(adv: Tensor) -> Tensor:
    """Advantages normalized per minibatch (as PPO does)."""
    if adv.numel() > 1:
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def clipped_surrogate(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> Tensor:
    """Per-sample PPO loss max(-A r, -A clip(r, 1 - c, 1 + c)), r = exp(logp - old_logp)."""
    ratio = (logp - old_logp).exp()
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))


def adversarial_surrogate(logp_adv: Tensor, logp: Tensor, old_logp: Tensor, adv: Tensor,
                          clip: float) -> Tensor:
    """Clipped surrogate at an adversarial state with the trust region of the clean one.

    ratio' = r.detach() * exp(logp_adv - logp_adv.detach()), r = pi(a|s) / pi_old(a|s):
    its value (and so the clip) is the clean ratio r, its gradient is r * grad log pi(a|s_adv).
    With the coupled ratio pi(a|s_adv) / pi_old(a|s) the adversary scales each sample's
    gradient: it drives the ratio up for A < 0 (weight >> 1, and the pessimistic branch never
    clips it) and down for A > 0 (weight << 1), biasing the update towards "move away from
    the actions taken". Here the trust region is PPO's own, measured on clean states.
    """
    ratio = (logp - old_logp).detach().exp() * (logp_adv - logp_adv.detach()).exp()
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
