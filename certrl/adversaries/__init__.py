"""Attacks on a fixed victim that go beyond one-step gradients: the critic attack, Robust
Sarsa (RS, RS+MAD), the SA-RL optimal adversary and PA-AD (see docs/attacks.md).

Modules: ``victim`` (what the attacks read from the victim), ``rollouts`` (victim
transitions), ``sarsa`` (robust Q^pi and its objective), ``ppo_lite``, ``victim_env`` (the
victim's env as an adversary sees it), ``sarl`` and ``paad`` (the adversary policy /
director and their envs), ``checkpoint`` (attacker files tied to a victim),
``learned`` (train or load), ``factory`` (attacks as callables x -> x').
"""

from certrl.adversaries.factory import RS_MAD_RATIO, VALUE_ATTACKS, value_attack

LEARNED = ("rs", "rs+mad", "sa-rl", "pa-ad")

__all__ = ["LEARNED", "RS_MAD_RATIO", "VALUE_ATTACKS", "value_attack"]
