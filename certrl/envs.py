"""Environment construction for the three families certrl supports.

- classic control (CartPole-v1, Acrobot-v1, MountainCar-v0, Pendulum-v1): raw obs;
- Atari (``ALE/<Game>-v5``): frameskip=1 base env, AtariPreprocessing (84x84 grey,
  frame_skip 4, noop_max 30), 4-frame stack -> uint8 obs (4, 84, 84); the agent
  divides by 255, so the network input (and eps) lives in [0, 1];
- MuJoCo v5 (Hopper, Walker2d, HalfCheetah, Ant, InvertedPendulum, ...): raw obs;
  the agent owns a ``RunningMeanStd`` that normalizes them and is frozen at save;
- any other registered gymnasium env with a Box observation space and a Discrete or
  Box action space (e.g. LunarLander-v3, or a user env as ``my_module:MyEnv-v0``, which
  gymnasium's ``make`` imports): generic defaults, the classic-control ones (raw obs,
  eps in raw-observation units), with a one-time warning.

Training envs (``make_env(..., episode_seeds=...)``) are wrapped in ``EpisodeSeeding``:
every episode is reset from a seed derived from (run seed, env index, episode index),
and the actions since the last reset are logged, so a checkpoint can rebuild the env
state exactly by resetting from that seed and replaying the actions.
"""

from __future__ import annotations

import importlib
import math
import warnings

import gymnasium as gym
import numpy as np

CLASSIC = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1",
           "MountainCarContinuous-v0")
MUJOCO_PREFIXES = ("Hopper", "Walker2d", "HalfCheetah", "Ant", "InvertedPendulum",
                   "InvertedDoublePendulum", "Swimmer", "Reacher", "Humanoid", "Pusher")

_ale_registered = False


def _register_ale() -> None:
    global _ale_registered
    if not _ale_registered:
        try:
            import ale_py
        except ImportError as e:  # pragma: no cover - depends on install
            raise ValueError("Atari envs need ale-py: pip install 'certrl[atari]'") from e
        gym.register_envs(ale_py)
        _ale_registered = True


def env_family(env_id: str) -> str:
    """'classic', 'atari' or 'mujoco' (the family that decides defaults).

    A registered gymnasium id outside the three families (``module:EnvId`` ids import
    ``module`` first) gets the generic defaults, those of 'classic', with a warning
    (once per id); an id gymnasium does not know is a ValueError.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env id must be a non-empty string; got {env_id!r}")
    if env_id.startswith("ALE/"):
        return "atari"
    if env_id in CLASSIC:
        return "classic"
    if env_id.split(":")[-1].split("-")[0] in MUJOCO_PREFIXES:
        return "mujoco"
    check_registered(env_id)
    if env_id not in _warned_generic:
        _warned_generic.add(env_id)
        warnings.warn(
            f"env {env_id!r} is not one certrl was tuned for (classic control, ALE/<Game>-v5, "
            "MuJoCo v5): using generic defaults (raw observations, eps in raw-observation "
            "units, classic-control hyperparameters)", UserWarning, stacklevel=2)
    return "classic"


_warned_generic: set[str] = set()


def check_registered(env_id: str) -> None:
    """ValueError unless gymnasium knows ``env_id`` (a ``module:`` prefix is imported)."""
    try:
        module, sep, name = env_id.rpartition(":")
        if sep:  # what gymnasium.make does with "module:EnvId"
            importlib.import_module(module)
        gym.spec(name)
    except (gym.error.Error, ImportError) as e:
        raise ValueError(
            f"unknown or unsupported env {env_id!r}: {e}. Use a registered gymnasium id "
            f"(e.g. {', '.join(CLASSIC[:2])}, ALE/Pong-v5, Hopper-v5, LunarLander-v3) or "
            "'my_module:MyEnv-v0' for an env that my_module registers on import"
        ) from None


def env_version(env_id: str) -> str:
    """The version suffix of an env id ('v5' for 'Hopper-v5')."""
    tail = env_id.rsplit("-", 1)
    return tail[1] if len(tail) == 2 and tail[1].startswith("v") else ""


def episode_seed(*key: int) -> int:
    """A 32-bit reset seed derived from integers, e.g. (run seed, env index, episode)."""
    if any(int(k) < 0 for k in key):
        raise ValueError(f"seeds must be non-negative integers; got {key}")
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


class EnvReplayError(RuntimeError):
    """Replaying logged actions did not reproduce the saved env state."""


class EpisodeSeeding(gym.Wrapper):
    """Reset episode k from ``episode_seed(*key, k)`` and log the actions since the reset.

    ``reset()`` without a seed starts the next episode of the stream (what vector-env
    autoreset and the training loops call); ``reset(seed=s)`` restarts the stream with
    key (s,). ``state()`` / ``restore(state)`` checkpoint the env: restore resets
    from the current episode's seed and replays its actions, which rebuilds the
    state exactly for deterministic envs (classic control, MuJoCo, ALE with its
    seeded sticky-action RNG). The caller should compare the returned observation
    with the saved one.
    """

    def __init__(self, env: gym.Env, key: tuple[int, ...]):
        super().__init__(env)
        self.key = tuple(int(k) for k in key)
        self.episode = -1
        self.actions: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.key, self.episode = (int(seed),), -1
        self.episode += 1
        self.actions = []
        return self.env.reset(seed=episode_seed(*self.key, self.episode), options=options)

    def step(self, action):
        self.actions.append(np.array(action, copy=True))
        return self.env.step(action)

    def state(self) -> dict:
        """Key, episode index and the actions of the current episode (checkpointable)."""
        acts = np.stack(self.actions) if self.actions else np.zeros((0,))
        return {"key": list(self.key), "episode": int(self.episode), "actions": acts}

    def restore(self, state: dict):
        """Rebuild the env state of ``state()``; returns the current observation."""
        self.key = tuple(int(k) for k in state["key"])
        self.episode = int(state["episode"])
        acts = np.asarray(state["actions"])
        obs, _ = self.env.reset(seed=episode_seed(*self.key, self.episode))
        self.actions = []
        for i in range(len(acts)):
            a = acts[i]
            obs, _r, term, trunc, _info = self.env.step(a)
            self.actions.append(np.array(a, copy=True))
            if term or trunc:  # the saved episode was still running after these actions
                raise EnvReplayError(f"episode ended after {i + 1} of {len(acts)} replayed "
                                     "actions")
        return obs


def make_env(env_id: str, seed: int = 0, episode_seeds: tuple[int, ...] | None = None,
             **kw) -> gym.Env:
    """Build one env of the right family with certrl's preprocessing.

    The env is reset once with ``seed`` (later ``reset()`` calls continue that
    RNG stream) and its action space is seeded. With ``episode_seeds=key`` it is
    wrapped in ``EpisodeSeeding(key)`` (training envs: every episode reset from a
    seed derived from key and the episode index). Extra keyword arguments go to
    ``gymnasium.make`` (e.g. ``max_episode_steps``, ``repeat_action_probability``).
    """
    family = env_family(env_id)
    try:
        if family == "atari":
            _register_ale()
            env = gym.make(env_id, frameskip=1, **kw)
            env = gym.wrappers.AtariPreprocessing(
                env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
                scale_obs=False,
            )
            env = gym.wrappers.FrameStackObservation(env, 4)
        else:
            env = gym.make(env_id, **kw)
    except gym.error.Error as e:
        raise ValueError(f"cannot make env {env_id!r}: {e}") from e
    except TypeError as e:  # e.g. an --env-kwargs key the env's constructor does not take
        raise ValueError(f"cannot make env {env_id!r} with kwargs {kw}: {e}") from None
    check_spaces(env, env_id)
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    env.observation_space.seed(int(seed))
    if episode_seeds is not None:
        env = EpisodeSeeding(env, episode_seeds)
    return env


def check_spaces(env: gym.Env, env_id: str) -> None:
    """ValueError (env closed) unless the observation space is a Box and the action
    space a Discrete or a Box: the spaces certrl's networks and threat models handle."""
    obs, act = env.observation_space, env.action_space
    problem = None
    if not isinstance(obs, gym.spaces.Box):
        problem = f"observation space {obs} is not a Box"
    elif not isinstance(act, (gym.spaces.Discrete, gym.spaces.Box)):
        problem = f"action space {act} is neither Discrete nor Box"
    if problem is not None:
        env.close()
        raise ValueError(f"env {env_id!r} is not supported: {problem} (certrl needs a Box "
                         "observation space and a Discrete or Box action space; flatten "
                         "dict observations with gymnasium.wrappers.FlattenObservation)")


def make_vec_env(env_id: str, num_envs: int, seed: int = 0, episode_seeds: bool = False,
                 **kw) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies (seeds seed, seed+1, ...) in a SyncVectorEnv.

    Autoreset is SAME_STEP: when a sub-env ends, ``step`` returns the first obs
    of the next episode and the last obs in ``info["final_obs"]``. With
    ``episode_seeds`` sub-env i is an ``EpisodeSeeding`` env with key (seed, i).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1; got {num_envs}")
    fns = [(lambda i=i: make_env(env_id, seed + i,
                                 episode_seeds=(seed, i) if episode_seeds else None, **kw))
           for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class RunningMeanStd:
    """Running mean and variance of observations (parallel Welford/Chan update).

    ``normalize(x) = (x - mean) / sqrt(var + eps)``; without ``clip`` (the default, and
    what certrl's own training uses) the map is affine and folds into a
    ``bounds.Normalize`` layer. ``clip = c`` (Stable-Baselines3 ``VecNormalize(clip_obs=c)``)
    clamps the result to [-c, c]: the network input then lives in that box, which the
    agent's threat model must carry as its domain (``lower=-c, upper=c``; clamping is a
    projection onto the box, so a ball of the unclamped input maps into the ball of the
    clamped one intersected with the box, in every l_p norm). ``freeze()`` stops updates.
    """

    def __init__(self, shape: tuple[int, ...], epsilon: float = 1e-8,
                 clip: float | None = None):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = 1e-4
        self.epsilon = float(epsilon)
        self.clip = _check_clip(clip)
        self.frozen = False

    def update(self, x: np.ndarray) -> None:
        """Fold a batch ``x`` of shape (N, *shape) into the statistics (no-op if frozen)."""
        if self.frozen:
            return
        x = np.asarray(x, dtype=np.float64).reshape(-1, *self.mean.shape)
        b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b_count
        self.mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        self.var = m2 / tot
        self.count = tot

    def freeze(self) -> None:
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var + self.epsilon)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / sqrt(var + eps), clamped to [-clip, clip] when ``clip`` is set."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)
        return z.astype(np.float32)

    def state_dict(self) -> dict:
        """Plain dict (lists and floats) for checkpoints ("clip" only when set, so
        checkpoints without it are unchanged)."""
        d = {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count),
             "epsilon": self.epsilon, "frozen": bool(self.frozen)}
        if self.clip is not None:
            d["clip"] = self.clip
        return d

    def load_state_dict(self, d: dict) -> None:
        mean = np.asarray(d["mean"], dtype=np.float64)
        var = np.asarray(d["var"], dtype=np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(
                f"normalization stats of shape {mean.shape} do not match obs shape "
                f"{self.mean.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()):
            raise ValueError("normalization stats contain NaN/inf or negative variance")
        self.mean, self.var = mean, var
        self.count = float(d["count"])
        self.epsilon = float(d.get("epsilon", 1e-8))
        self.clip = _check_clip(d.get("clip"))
        self.frozen = bool(d.get("frozen", False))

    @classmethod
    def from_state_dict(cls, d: dict) -> RunningMeanStd:
        rms = cls(tuple(np.asarray(d["mean"]).shape))
        rms.load_state_dict(d)
        return rms


def _check_clip(clip) -> float | None:
    """None or a finite clip bound > 0 as a float; ValueError otherwise."""
    if clip is None:
        return None
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (
            math.isfinite(clip) and clip > 0):
        raise ValueError(f"normalization clip must be a finite number > 0 or None; got "
                         f"{clip!r}")
    return float(clip)


def action_space_info(space: gym.Space) -> dict:
    """JSON-able description of an action space.

    {"kind": "discrete", "n"} or {"kind": "continuous", "shape", "low", "high"}.
    """
    if isinstance(space, gym.spaces.Discrete):
        return {"kind": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        low = np.asarray(space.low, dtype=np.float64)
        high = np.asarray(space.high, dtype=np.float64)
        return {"kind": "continuous", "shape": list(space.shape),
                "low": [v if math.isfinite(v) else None for v in low.ravel().tolist()],
                "high": [v if math.isfinite(v) else None for v in high.ravel().tolist()]}
    raise ValueError(f"unsupported action space {space}")
