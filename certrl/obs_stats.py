"""Observation statistics for per-dimension threat models.

SA-DQN's classic-control code (kept by CAR-DQN) perturbs each observation
dimension by eps times that dimension's standard deviation, so one eps means
the same *relative* change for a cart position (std ~0.7) and a pole angle
(std ~0.12). ``measure_obs_std`` measures that std on an agent's own greedy
trajectories, in network-input space (after the agent's preprocessing), ready
to be a ``ThreatModel.scale``:

    scale = measure_obs_std(vanilla_agent, episodes=10, seed=0)
    tm = agent.threat_model.with_scale(scale)

Floor for constant dimensions: a dimension whose std is below
``rel_floor * max_i std_i`` (default 1 % of the largest std) gets that value
instead, so every scale entry is positive (a zero entry would forbid any
perturbation of the dimension; the floor keeps it small but non-zero). All
dimensions constant is an error.

``REFERENCE_STD`` holds the constants hard-coded in the reference code
(SA-DQN / CAR-DQN ``attacks.py``: CARTPOLE_STD, ACROBOT_STD), measured there on
raw observations of their own vanilla agents.
"""

from __future__ import annotations

import numpy as np

from certrl.rollout import acting, play

REFERENCE_STD: dict[str, tuple[float, ...]] = {
    "CartPole": (0.7322321, 1.0629482, 0.12236707, 0.43851405),
    "Acrobot": (0.36641926, 0.65119815, 0.6835106, 0.67652863, 2.0165246, 3.0202584),
}


def reference_std(env_id: str) -> tuple[float, ...]:
    """The reference code's per-dimension std for ``env_id`` (CartPole-*, Acrobot-*)."""
    for prefix, std in REFERENCE_STD.items():
        if str(env_id).startswith(prefix):
            return std
    raise ValueError(f"no reference std for env {env_id!r}; known: "
                     f"{', '.join(k + '-*' for k in REFERENCE_STD)} (use measure_obs_std)")


def collect_inputs(agent, episodes: int = 10, seed: int = 0,
                   max_steps: int | None = None) -> np.ndarray:
    """Network inputs x (N, n) (flattened) of every step of ``episodes`` greedy episodes
    (episode i reset with env seed ``seed + i``, as in ``certrl.rollout``)."""
    if int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    rows: list[np.ndarray] = []

    def keep(i, step) -> None:
        rows.append(step.x.detach().reshape(-1).double().cpu().numpy())

    play(agent, list(range(int(episodes))), int(seed), lambda i: acting(agent), max_steps,
         keep)
    return np.stack(rows)


def floored_std(inputs: np.ndarray, rel_floor: float = 0.01) -> np.ndarray:
    """Per-column std of ``inputs`` (N, n), raised to ``rel_floor * max std`` where lower."""
    if not 0 < float(rel_floor) <= 1:
        raise ValueError(f"rel_floor must be in (0, 1]; got {rel_floor}")
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 observations (N, n); got shape {x.shape}")
    std = x.std(axis=0)
    top = float(std.max())
    if not np.isfinite(top) or top <= 0:
        raise ValueError("every observation dimension is constant on these trajectories: "
                         "no per-dimension scale can be measured")
    return np.maximum(std, float(rel_floor) * top)


def measure_obs_std(agent, episodes: int = 10, seed: int = 0, max_steps: int | None = None,
                    rel_floor: float = 0.01) -> np.ndarray:
    """Per-dimension std (n,) of the agent's network inputs on its greedy trajectories,
    floored at ``rel_floor`` times the largest std (see the module docstring)."""
    return floored_std(collect_inputs(agent, episodes, seed, max_steps), rel_floor)
