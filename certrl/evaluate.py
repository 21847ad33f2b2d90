"""Natural and attacked returns over N seeded episodes.

Episode i is reset with seed ``seed + i``; actions are deterministic by default,
so a deterministic env gives the same returns every run. An attack (a callable
on network-input batches, see ``certrl.attacks.make_attack``) perturbs the
observation before each action (per-step budget); the env itself is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from certrl.agent import Agent
from certrl.envs import make_env


@dataclass
class EvalResult:
    """Per-episode returns and lengths with their summary."""

    returns: list[float]
    lengths: list[int]
    seeds: list[int]
    mean: float = 0.0
    std: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(agent: Agent, episodes: int = 10, seed: int = 0,
             attack: Callable[[torch.Tensor], torch.Tensor] | None = None,
             deterministic: bool = True, max_steps: int | None = None,
             on_episode: Callable[[int, float, int], None] | None = None,
             env_kwargs: dict | None = None) -> EvalResult:
    """Run ``episodes`` episodes (seeds seed..seed+N-1); mean and std (ddof 0) of returns."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    env = make_env(agent.env_id, seed, **(env_kwargs or {}))
    shape = tuple(env.observation_space.shape)
    if shape != agent.obs_shape:
        raise ValueError(f"env {agent.env_id} gives observations of shape {shape} but the "
                         f"agent expects {agent.obs_shape}")
    gen = torch.Generator().manual_seed(int(seed))
    agent.eval()
    returns, lengths, seeds = [], [], []
    flipped = steps_total = 0
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, length, done = 0.0, 0, False
            while not done:
                x = agent.preprocess(np.asarray(obs)[None])
                if attack is not None:
                    x_adv = attack(x)
                    action = agent.act(x_adv, deterministic, gen)
                    if agent.action_space_kind == "discrete":
                        flipped += int(action[0] != agent.act(x, True)[0])
                else:
                    action = agent.act(x, deterministic, gen)
                obs, r, term, trunc, _ = env.step(action[0])
                total += float(r)
                length += 1
                done = term or trunc or (max_steps is not None and length >= max_steps)
            returns.append(total)
            lengths.append(length)
            seeds.append(seed + i)
            steps_total += length
            if on_episode is not None:
                on_episode(i, total, length)
    finally:
        env.close()
    res = EvalResult(returns, lengths, seeds, float(np.mean(returns)), float(np.std(returns)))
    if attack is not None and agent.action_space_kind == "discrete":
        res.extra["action_change_rate"] = flipped / max(1, steps_total)
    return res
