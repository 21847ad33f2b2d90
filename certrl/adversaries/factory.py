"""Attacks built on the victim's value or on a learned attacker, as callables x -> x'.

* ``critic``: minimize the victim's own value (``victim.critic_objective``) by SA-PPO's
  attack loop (``certrl.attacks.pgd_minimize_ref``: ``steps`` sign steps of eps / steps
  from a random start in the eps / steps box, last iterate);
* ``rs`` / ``rs+mad``: the same loop on the Robust Sarsa objective
  (``sarsa.rs_objective``, ratio 0 / ``ratio``);
* ``sa-rl``: the learned adversary's deterministic perturbation (``sarl.sarl_attack``);
* ``pa-ad``: the learned director's direction realized by the actor (``paad.paad_attack``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from certrl.adversaries.paad import paad_attack
from certrl.adversaries.sarl import sarl_attack
from certrl.adversaries.sarsa import rs_objective
from certrl.adversaries.victim import critic_objective
from certrl.agent import Agent
from certrl.attacks import pgd_minimize_ref
from certrl.threat import ThreatModel

VALUE_ATTACKS = ("critic", "rs", "rs+mad", "sa-rl", "pa-ad")
RS_MAD_RATIO = 0.5  # SA-PPO's configs: attack_sarsa_action_ratio 0.5 (its scan: 1e-6 .. 3e-2)


def value_attack(name: str, agent: Agent, threat: ThreatModel, eps: float, steps: int = 10,
                 step_size: float | None = None, seed: int = 0, attacker: nn.Module | None = None,
                 ratio: float = RS_MAD_RATIO) -> Callable[[torch.Tensor], torch.Tensor]:
    """The attack ``name`` (one of ``VALUE_ATTACKS``) at radius ``eps`` of ``threat``;
    ``attacker``: the Sarsa Q-network (rs, rs+mad), the adversary policy (sa-rl) or the
    director (pa-ad)."""
    if name not in VALUE_ATTACKS:
        raise ValueError(f"unknown attack {name!r}; use one of {', '.join(VALUE_ATTACKS)}")
    if name != "critic" and attacker is None:
        raise ValueError(f"{name} needs a trained attacker network")
    tm = threat.with_eps(eps)
    if name == "sa-rl":
        return sarl_attack(attacker, tm, eps)
    if name == "pa-ad":
        return paad_attack(attacker, agent, tm, eps, steps, seed)
    gen = torch.Generator().manual_seed(int(seed))

    def attack(x: torch.Tensor) -> torch.Tensor:
        if name == "critic":
            obj = critic_objective(agent, x)
        else:
            obj = rs_objective(agent, attacker, x, ratio if name == "rs+mad" else 0.0)
        return pgd_minimize_ref(obj, x, tm, eps, steps, step_size, gen)

    return attack
