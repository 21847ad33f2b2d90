"""The one episode loop: step an agent in its env and hand every step to a callback.

Evaluation, attacks, trajectory certificates, smoothed episodes and the greedy
worst case all run episodes the same way (gymnasium API):

* episode ``i`` is reset with env seed ``seed + i``;
* at each step the raw observation is preprocessed into the network input
  ``x`` (1, *in_shape) and a *policy* maps ``x`` to the action batch (1, ...):
  the agent acting on ``x`` itself or on a transformed observation (an attack,
  smoothing noise; ``acting``), or any other rule (the worst case);
* the episode ends when the env terminates or truncates it (its own time
  limit), or is cut once ``max_steps`` steps were played. ``truncated`` in the
  result means *cut by max_steps* before the env ended it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from certrl.agent import Agent
from certrl.envs import make_env

Policy = Callable[[torch.Tensor], np.ndarray]  # network input (1, *shape) -> actions (1, ...)
Transform = Callable[[torch.Tensor], torch.Tensor]  # network input -> perturbed input


@dataclass
class Step:
    """One step played: its index, raw observation, clean network input (1, *shape), the
    action played (batch of 1) and the reward."""

    t: int
    obs: np.ndarray
    x: torch.Tensor
    action: np.ndarray
    reward: float


@dataclass
class EpisodeEnd:
    """What one episode gave: index, env seed, return, steps, cut by ``max_steps``."""

    index: int
    seed: int
    ret: float
    length: int
    truncated: bool


def acting(agent: Agent, transform: Transform | None = None, deterministic: bool = True,
           generator: torch.Generator | None = None) -> Policy:
    """The agent's policy on ``transform(x)`` (``x`` itself when ``transform`` is None)."""
    if transform is None:
        return lambda x: agent.act(x, deterministic, generator)
    return lambda x: agent.act(transform(x), deterministic, generator)


def cut(steps: int, max_steps: int | None) -> bool:
    """True once the user's ``max_steps`` is reached."""
    return max_steps is not None and steps >= max_steps


def play_episode(env, agent: Agent, index: int, seed: int, policy: Policy,
                 max_steps: int | None = None,
                 on_step: Callable[[Step], None] | None = None) -> EpisodeEnd:
    """Play episode ``index`` (env seed ``seed + index``) with ``policy``; ``on_step`` sees
    every step after the env took it."""
    obs, _ = env.reset(seed=seed + index)
    total, steps, ended = 0.0, 0, False
    while not ended and not cut(steps, max_steps):
        x = agent.preprocess(np.asarray(obs)[None])
        action = policy(x)
        step_obs = obs
        obs, r, term, trunc, _ = env.step(action[0])
        total += float(r)
        if on_step is not None:
            on_step(Step(steps, step_obs, x, action, float(r)))
        steps += 1
        ended = term or trunc
    return EpisodeEnd(index, seed + index, total, steps, not ended)


def env_kwargs_for(agent: Agent, env_kwargs: dict | None = None) -> dict:
    """The keyword arguments of the agent's env: ``env_kwargs`` if given, else the ones the
    agent was trained / imported with (``config["env_kwargs"]``), else none."""
    if env_kwargs is not None:
        return dict(env_kwargs)
    stored = agent.config.get("env_kwargs") if isinstance(agent.config, dict) else None
    return dict(stored) if isinstance(stored, dict) else {}


def play(agent: Agent, indices: list[int], seed: int, policy_for: Callable[[int], Policy],
         max_steps: int | None = None, on_step: Callable[[int, Step], None] | None = None,
         env_kwargs: dict | None = None,
         check_env: Callable[[Agent, object], None] | None = None,
         on_end: Callable[[EpisodeEnd], None] | None = None) -> list[EpisodeEnd]:
    """Play episodes ``indices`` in one env made with ``seed``; ``policy_for(i)`` is episode
    i's policy, ``on_step(i, step)`` sees its steps and ``on_end`` each finished episode.
    ``check_env(agent, env)`` may refuse the env before any episode."""
    env = make_env(agent.env_id, seed, **env_kwargs_for(agent, env_kwargs))
    out = []
    try:
        if check_env is not None:
            check_env(agent, env)
        agent.eval()
        for i in indices:
            hook = None if on_step is None else (lambda s, i=i: on_step(i, s))
            out.append(play_episode(env, agent, i, seed, policy_for(i), max_steps, hook))
            if on_end is not None:
                on_end(out[-1])
    finally:
        env.close()
    return out
