"""DQN (Mnih et al. 2015) with double-Q targets, optional dueling head, Huber loss.

Loop (CleanRL-style, one env):
    a_t = random with prob eps(t) (linear decay), else argmax_a Q(x_t, a)
    store (o_t, a_t, r_t, o_{t+1}, terminated_t) in the replay buffer
    every ``train_freq`` steps after ``learning_starts``: sample B transitions,
        y = c r + gamma (1 - term) Q_target(x', argmax_a Q(x', a))   (double)
        y = c r + gamma (1 - term) max_a Q_target(x', a)              (plain)
        (c = ``reward_scale``: the sampled batch's rewards are c r, so Q ~ c * true Q)
        loss = mean Huber_delta(Q(x, a) - y)  [+ robust loss term]
    every ``target_update_interval`` steps: target <- tau * online + (1 - tau) * target
    every ``eval_every`` steps (and at step 0 when fine-tuning): greedy natural evaluation,
        best weights kept (``certrl.algos.selection``; ``best_agent``)
Only *terminated* ends bootstrapping; time-limit truncation still bootstraps.
``num_envs`` = N > 1 acts in N envs at once, one batched forward pass per iteration, the
schedule above still counted in env steps (``certrl.algos.dqn_vec``); N = 1 is the loop
above, unchanged.

Fine-tuning: ``DQN(cfg, robust_loss, init_agent=...)`` starts from a solved agent's Q
weights (target = init), rescaled to this run's ``reward_scale``; ``DQNConfig.for_finetune``
gives the references' fine-tuning settings (``FINETUNE_DEFAULTS``).

Episode k is reset from ``episode_seed(seed, 0, k)`` (``certrl.envs.EpisodeSeeding``), so
the env sequence depends on the run seed and the episode index only. ``train_state()``
holds the replay buffer (``certrl.algos.replay``; one over ``REPLAY_INLINE_BYTES``, Atari,
goes to a rarer ``replay.pt`` snapshot instead, see ``train_state``), optimizer, target
net, counters, the robust loss's state, every RNG and the env state (current episode
index + its actions so far; resume resets from the episode's seed and replays them).
``certrl train`` checkpoints at episode ends, where nothing needs replaying. Resuming
and continuing gives the uninterrupted run's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from certrl.agent import Agent
from certrl.algos.base import (
    Algorithm,
    canonical_config,
    capture_rngs,
    check_config,
    check_init_agent,
    rescale_q_output,
    resolve_init,
    resolve_threat,
    restore_rngs,
    seed_everything,
    split_config,
)
from certrl.algos.dqn_vec import VecActing
from certrl.algos.replay import FrameReplay, make_replay
from certrl.algos.selection import BestKeeper
from certrl.algos.tensor_pack import pack_tree, unpack_tree
from certrl.envs import (
    EnvReplayError,
    action_space_info,
    env_family,
    make_env,
    make_vec_env,
)
from certrl.identity import agent_identity
from certrl.io import atomic_torch_save, plain
from certrl.losses.base import RobustLoss, TrainContext
from certrl.nets import body_spec, build_network

# Per-env settings for classic control (after the rl-baselines3-zoo tuned values; the
# dataclass defaults below trained CartPole to 500 in only 2 of 5 seeds at 50k steps, these
# in 4 of 5 with 64x64 nets, see docs/robust-training.md). Overridden by ``--set``.
CLASSIC_DEFAULTS: dict[str, dict] = {
    "CartPole-v1": dict(lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000,
                        target_update_interval=10, train_freq=256, gradient_steps=128,
                        exploration_fraction=0.16, exploration_end=0.04),
    "Acrobot-v1": dict(lr=6.3e-4, batch_size=128, buffer_size=50_000, learning_starts=1_000,
                       target_update_interval=250, train_freq=4, gradient_steps=4,
                       exploration_fraction=0.12, exploration_end=0.1),
}

# Fine-tuning a solved agent (``certrl train --init-from``, ``DQNConfig.for_finetune``),
# after the references (docs/training.md "Fine-tuning"): RADIAL-DQN (tuomaso/radial_rl_v2)
# and CAR-DQN (leoranlmia/CAR-DQN) load a natural agent and train with Adam lr 1.25e-4,
# exploration fixed at 0.01, target every 1000 updates, best checkpoint by periodic
# natural evaluation. Classic control: lr 1e-4 (between SA's 6.25e-5 and 1.25e-4), batch
# 32 and one update per step (CAR-DQN), target every 1000 steps, 20k steps, evaluation
# every 1000 steps; rewards scaled so that |Q| is O(1) as with clipped Atari rewards.
FINETUNE_DEFAULTS: dict[str, dict] = {
    "classic": dict(total_steps=20_000, lr=1e-4, batch_size=32, buffer_size=50_000,
                    learning_starts=1_000, train_freq=1, gradient_steps=1,
                    target_update_interval=1_000, exploration_start=0.01,
                    exploration_end=0.01, exploration_fraction=0.0, reward_scale=0.01,
                    eval_every=1_000, eval_episodes=5),
    "atari": dict(total_steps=4_500_000, lr=1.25e-4, batch_size=32, buffer_size=100_000,
                  learning_starts=50_000, train_freq=1, gradient_steps=1,
                  target_update_interval=1_000, exploration_start=0.01, exploration_end=0.01,
                  exploration_fraction=0.0, reward_scale=1.0, eval_every=100_000,
                  eval_episodes=10),
}
# reward scale per env (|Q| ~ O(1)): CartPole +1 per step, gamma 0.99 -> Q up to ~100;
# Acrobot -1 per step -> Q down to ~ -100 (episodes of ~60-100 steps: Q ~ -45..-63)
FINETUNE_REWARD_SCALE: dict[str, float] = {"CartPole-v1": 0.01, "Acrobot-v1": 0.01}
# A replay buffer up to this size goes inside latest.pt at every save; a larger one goes to
# a separate snapshot file (REPLAY_FILE next to latest.pt), written every
# ``replay_every``-th save (0: only at the end of the run), see ``DQN.save``
REPLAY_INLINE_BYTES = 16 * 2**20
REPLAY_FILE = "replay.pt"
EPS_SCALES = ("none", "std")
# eps_scale "std": greedy episodes of the init agent measured (env seeds from OBS_STD_SEED)
OBS_STD_EPISODES = 10
OBS_STD_SEED = 2_000_000


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class DQNConfig:
    """DQN hyper-parameters (defaults suit CartPole; ``for_env`` adapts them)."""

    env_id: str = "CartPole-v1"
    total_steps: int = 50_000
    seed: int = 0
    lr: float = 1e-3
    buffer_size: int = 50_000
    batch_size: int = 64
    gamma: float = 0.99
    learning_starts: int = 1_000
    train_freq: int = 1
    gradient_steps: int = 1
    target_update_interval: int = 500
    tau: float = 1.0
    exploration_start: float = 1.0
    exploration_end: float = 0.02
    exploration_fraction: float = 0.2
    double: bool = True
    dueling: bool = False
    hidden: tuple[int, ...] = (64, 64)
    huber_delta: float = 1.0
    max_grad_norm: float = 10.0
    threat: dict | None = None
    env_kwargs: dict = field(default_factory=dict)
    q_spec: dict | None = None
    reward_scale: float = 1.0
    eval_every: int = 0
    eval_episodes: int = 5
    eps_scale: str = "none"
    num_envs: int = 1

    # old field names, accepted from old checkpoints, configs and --set (eps is the radius)
    LEGACY_NAMES: ClassVar[dict[str, str]] = {"eps_start": "exploration_start",
                                              "eps_end": "exploration_end",
                                              "eps_fraction": "exploration_fraction"}
    # fields added later: left out of run_group at these values (old runs keep their group)
    ADDED_FIELDS: ClassVar[dict] = {"reward_scale": 1.0, "eval_every": 0, "eval_episodes": 5,
                                    "eps_scale": "none", "num_envs": 1}

    def __post_init__(self) -> None:
        check_config(self, pos_int=("total_steps", "buffer_size", "batch_size", "train_freq",
                                    "gradient_steps", "target_update_interval",
                                    "eval_episodes", "num_envs"),
                     nonneg_int=("seed", "learning_starts", "eval_every"),
                     pos=("lr", "huber_delta", "max_grad_norm", "reward_scale"),
                     unit=("exploration_start", "exploration_end", "exploration_fraction"),
                     unit_open0=("gamma", "tau"))
        if self.eps_scale not in EPS_SCALES:
            raise ValueError(f"DQNConfig.eps_scale must be one of {EPS_SCALES}; "
                             f"got {self.eps_scale!r}")

    @classmethod
    def for_env(cls, env_id: str, **overrides) -> DQNConfig:
        """Env defaults (``CLASSIC_DEFAULTS``; Atari: Nature-DQN settings) plus overrides."""
        base: dict = {"env_id": env_id}
        base.update(CLASSIC_DEFAULTS.get(env_id, {}))
        if env_family(env_id) == "atari":
            base.update(lr=1e-4, buffer_size=100_000, batch_size=32, learning_starts=20_000,
                        train_freq=4, target_update_interval=1_000, exploration_end=0.01,
                        exploration_fraction=0.1)
        base.update(canonical_config(cls, overrides))
        return cls(**base)

    @classmethod
    def for_finetune(cls, init: Agent | str | os.PathLike, **overrides) -> DQNConfig:
        """Fine-tuning config for an init agent (an ``Agent``, path, run folder or shipped
        name): ``for_env`` defaults, then ``FINETUNE_DEFAULTS`` of its env family and
        ``FINETUNE_REWARD_SCALE``, then the init agent's network and env settings
        (hidden, dueling, q_spec, env_kwargs), then ``overrides``."""
        agent, label = resolve_init(init)
        asked = overrides.pop("env_id", agent.env_id)
        if asked != agent.env_id:
            raise ValueError(f"init agent {label}: its env id {agent.env_id} does not match "
                             f"this run's env id {asked}")
        stored = canonical_config(cls, split_config(agent.config)[0])
        base: dict = dict(FINETUNE_DEFAULTS[env_family(agent.env_id)])
        base["reward_scale"] = FINETUNE_REWARD_SCALE.get(agent.env_id, base["reward_scale"])
        base.update({k: stored[k] for k in ("hidden", "dueling", "q_spec", "env_kwargs")
                     if k in stored})
        if isinstance(base.get("hidden"), list):
            base["hidden"] = tuple(base["hidden"])
        base.update(canonical_config(cls, overrides))
        return cls.for_env(agent.env_id, **base)


class DQN(VecActing, Algorithm):
    """Deep Q-learning on a discrete-action env; ``learn()`` then ``agent``."""

    algo_name = "dqn"
    config_cls = DQNConfig

    def __init__(self, cfg: DQNConfig, robust_loss: RobustLoss | None = None,
                 init_agent: Agent | str | os.PathLike | None = None):
        """``init_agent`` (an ``Agent``, checkpoint path, run folder or shipped name):
        fine-tune from its Q weights (see ``init_from``); None trains from scratch."""
        self.cfg = cfg
        self.robust_loss = robust_loss
        self.rng = seed_everything(cfg.seed)
        if cfg.num_envs == 1:
            self.env = make_env(cfg.env_id, cfg.seed, episode_seeds=(cfg.seed, 0),
                                **cfg.env_kwargs)
            act_space, obs_space = self.env.action_space, self.env.observation_space
        else:  # N envs (certrl.algos.dqn_vec), reset at the end of the constructor
            self.env = None
            self.envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed, episode_seeds=True,
                                     **cfg.env_kwargs)
            act_space = self.envs.single_action_space
            obs_space = self.envs.single_observation_space
        aspace = action_space_info(act_space)
        if aspace["kind"] != "discrete":
            raise ValueError(f"DQN needs a discrete action space; {cfg.env_id} is continuous "
                             "(use --algo ppo)")
        obs_shape = tuple(obs_space.shape)
        q = build_network(self._q_spec(obs_shape, aspace))
        self.agent_obj = self._make_agent({"q": q}, obs_shape, aspace)
        self.init_info: dict = {}
        init = None
        if init_agent is not None:
            init = self.init_from(init_agent)
        self.target = copy.deepcopy(q)
        self._measure_eps_scale(init)
        if robust_loss is not None:
            robust_loss.setup({"q": q}, self.cfg)
            self.agent_obj.nets.update(robust_loss.extra_networks())
        trained = {"q": q, **(robust_loss.jointly_optimized() if robust_loss else {})}
        params = [p for n in trained.values() for p in n.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self._make_buffer(obs_shape)
        self.global_step = 0
        self.episodes: list[dict] = []
        self.update_time = 0.0
        self.logs: dict[str, float] = {}
        self.resume_caveats: list[str] = []
        self.max_replay_bytes: int | None = None  # None: the replay buffer always goes in
        self.selection = None if cfg.eval_every == 0 else BestKeeper(
            cfg.eval_every, cfg.eval_episodes, from_init=bool(self.init_info),
            env_kwargs=cfg.env_kwargs)
        if cfg.num_envs == 1:
            self._obs, _ = self.env.reset()
            self._ep_return, self._ep_len = 0.0, 0
        else:
            self.reset_vec()

    def _q_spec(self, obs_shape: tuple[int, ...], aspace: dict) -> dict:
        """The Q-network spec the config asks for."""
        cfg = self.cfg
        spec = {"type": "q", "body": body_spec(obs_shape, cfg.hidden, "relu"),
                "n_out": aspace["n"], "dueling": cfg.dueling}
        if env_family(cfg.env_id) == "atari" and cfg.dueling:  # Nature dueling: 512-unit streams
            spec["body"]["fc"] = 0
            spec["stream_hidden"] = 512
        if cfg.q_spec is not None:  # another Q-network type (e.g. a SortNet "lipschitz_q")
            spec = {**cfg.q_spec, "in_dim": int(np.prod(obs_shape)), "n_out": aspace["n"]}
        return spec

    def _make_agent(self, nets: dict, obs_shape: tuple[int, ...], aspace: dict) -> Agent:
        cfg = self.cfg
        preprocessing = {"kind": "pixels", "scale": 255.0} \
            if env_family(cfg.env_id) == "atari" else {"kind": "identity"}
        return Agent(nets, env_id=cfg.env_id, algo="dqn", obs_shape=obs_shape,
                     action_space=aspace, preprocessing=preprocessing,
                     threat_model=resolve_threat(cfg.env_id, cfg.threat),
                     config=self.training_config(), seed=cfg.seed, loss_name=self.loss_name,
                     reward_scale=cfg.reward_scale)

    def _make_buffer(self, obs_shape: tuple[int, ...]) -> None:
        """The replay buffer: frames stored once for Atari (``FrameReplay``), plain
        float32 arrays otherwise (``ArrayReplay``; see ``certrl.algos.replay``)."""
        self.replay = make_replay(self.cfg.buffer_size, obs_shape,
                                  frames=env_family(self.cfg.env_id) == "atari")
        self.replay_inline_bytes = REPLAY_INLINE_BYTES
        self.replay_every = 0
        self._replay_saves = 0
        self._replay_ref: dict | None = None

    @property
    def buf(self) -> dict[str, np.ndarray]:
        """The buffer's fields, oldest first for Atari (rebuilt stacks, a copy: for
        inspection), the live arrays (writable) otherwise."""
        rep = self.replay
        if isinstance(rep, FrameReplay):
            return rep.get(np.arange(len(rep)))
        return rep.arrays

    @property
    def buf_pos(self) -> int:
        """The slot the next transition goes to."""
        return self.replay.pos

    def init_from(self, init: Agent | str | os.PathLike) -> Agent:
        """Start from an init agent's Q weights (called by the constructor).

        Checks it matches this run (algorithm, env id, observation shape, action space,
        preprocessing kind, Q-network spec; ValueError naming the mismatch), copies its Q
        weights, preprocessing and normalization statistics, and rescales the Q outputs
        by ``cfg.reward_scale / init.reward_scale`` (``rescale_q_output``) so the Q values
        are in this run's reward units. Records ``init_info`` (metadata "init_agent":
        identity, name, run group, reward scale). Returns the init agent.
        """
        agent, label = resolve_init(init)
        check_init_agent(agent, label, self.agent_obj)
        q = self.agent_obj.nets["q"]
        q.load_state_dict(agent.nets["q"].state_dict())
        rescale_q_output(q, self.cfg.reward_scale / agent.reward_scale)
        self.agent_obj.preprocessing = copy.deepcopy(agent.preprocessing)
        if agent.obs_rms is not None:
            self.agent_obj.obs_rms = copy.deepcopy(agent.obs_rms)
        self.init_info = {"id": agent_identity(agent), "name": label,
                          "run_group": agent.metadata.get("run_group"),
                          "reward_scale": agent.reward_scale, "loss": agent.loss_name,
                          "seed": agent.seed}
        self.agent_obj.metadata["init_agent"] = dict(self.init_info)
        return agent

    def _measure_eps_scale(self, init: Agent | None) -> None:
        """``eps_scale="std"``: store the per-dimension std of observations on the init
        agent's greedy trajectories as the threat model's ``scale`` (unless the config's
        threat already holds one, e.g. on resume)."""
        cfg = self.cfg
        if cfg.eps_scale == "none" or (cfg.threat or {}).get("scale") is not None:
            return
        if init is None:
            raise ValueError("eps_scale 'std' measures the observation std on the init "
                             "agent's trajectories: it needs an init agent (--init-from)")
        from certrl.obs_stats import measure_obs_std

        std = measure_obs_std(init, OBS_STD_EPISODES, OBS_STD_SEED)
        threat = {**(cfg.threat or {}), "scale": [float(v) for v in np.ravel(std)]}
        self.cfg = dataclasses.replace(cfg, threat=threat)
        self.agent_obj.threat_model = resolve_threat(cfg.env_id, threat)
        self.agent_obj.config = self.training_config()

    @property
    def at_episode_start(self) -> bool:
        """True right after a reset (a checkpoint here replays no actions); with N envs
        always (resume replays each sub-env's current episode)."""
        return self.cfg.num_envs > 1 or self._ep_len == 0

    # ----------------------------------------------------------------- helpers
    def epsilon(self, step: int) -> float:
        """Exploration rate: linear decay exploration_start -> exploration_end over
        exploration_fraction * total_steps, then flat."""
        cfg = self.cfg
        span = max(1, int(cfg.exploration_fraction * cfg.total_steps))
        frac = min(1.0, step / span)
        return cfg.exploration_start + frac * (cfg.exploration_end - cfg.exploration_start)

    def _store(self, obs, action, reward, next_obs, done) -> None:
        self.replay.add(obs, action, reward, next_obs, done)

    def sample_batch(self) -> dict[str, torch.Tensor]:
        """A replay minibatch on the agent's device: preprocessed obs / next_obs, actions,
        rewards (times ``cfg.reward_scale``), dones."""
        b = self.replay.sample(self.rng, self.cfg.batch_size)
        pre, dev = self.agent_obj.preprocess, self.agent_obj.device
        return {  # one host -> device copy per field (the buffer lives in host memory)
            "obs": pre(b["obs"]),
            "next_obs": pre(b["next_obs"]),
            "actions": torch.as_tensor(b["actions"], device=dev),
            "rewards": torch.as_tensor(b["rewards"], device=dev) * self.cfg.reward_scale,
            "dones": torch.as_tensor(b["dones"], device=dev),
        }

    def td_target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = r + gamma (1 - done) Q_target(x', a'), a' = argmax Q(x') (double) or of Q_target;
        ``batch["rewards"]`` is already multiplied by ``cfg.reward_scale`` (``sample_batch``)."""
        q, target = self.agent_obj.nets["q"], self.target
        with torch.no_grad():
            if self.cfg.double:
                a_next = q(batch["next_obs"]).argmax(1, keepdim=True)
                q_next = target(batch["next_obs"]).gather(1, a_next).squeeze(1)
            else:
                q_next = target(batch["next_obs"]).max(1).values
            return batch["rewards"] + self.cfg.gamma * (1.0 - batch["dones"]) * q_next

    def context(self, batch: dict[str, torch.Tensor]) -> TrainContext:
        """The robust loss's view of this gradient step."""
        return TrainContext(batch=batch, nets={**self.agent_obj.nets, "target": self.target},
                            threat=self.agent_obj.threat_model, step=self.global_step,
                            gamma=self.cfg.gamma, huber_delta=self.cfg.huber_delta)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """(training loss, logs): mean Huber TD loss, or as the robust loss reshapes it."""
        rl, ctx = self.robust_loss, self.context(batch)
        y = self.td_target(batch)
        if rl is not None:
            with torch.no_grad():
                y_new = rl.td_target(ctx)
            if y_new is not None:
                y = y_new.detach()
        q_a = self.agent_obj.nets["q"](batch["obs"]).gather(1, batch["actions"].unsqueeze(1))
        q_a = q_a.squeeze(1)
        td = F.huber_loss(q_a, y, reduction="none", delta=self.cfg.huber_delta)
        batch.update(td_target=y, q=q_a)
        logs = {"td_loss": float(td.detach().mean())}
        if rl is None:
            return td.mean(), logs
        loss, td_logs = rl.modify_td_loss(td, ctx)
        extra, extra_logs = rl(ctx)
        return loss + extra, {**logs, **td_logs, **extra_logs}

    def update(self) -> dict[str, float]:
        """One gradient step on a sampled batch; returns scalar logs."""
        loss, logs = self.loss(self.sample_batch())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        logs["loss"] = float(loss.detach())
        return logs

    def _update_target(self) -> None:
        tau = self.cfg.tau
        with torch.no_grad():
            for pt, p in zip(self.target.parameters(), self.agent_obj.nets["q"].parameters()):
                pt.mul_(1.0 - tau).add_(p, alpha=tau)

    # -------------------------------------------------------------------- loop
    @property
    def checkpoint_ready(self) -> bool:
        """At an episode start: a checkpoint here replays no actions on resume."""
        return self.at_episode_start

    def act(self, eps: float) -> int:
        """Random action with probability ``eps``, else argmax_a Q(x_t, a)."""
        if self.rng.random() < eps:
            return int(self.rng.integers(self.agent_obj.action_space["n"]))
        with torch.no_grad():
            x = self.agent_obj.preprocess(np.asarray(self._obs)[None])
            return int(self.agent_obj.nets["q"](x).argmax(1).item())

    def env_step(self) -> None:
        """One env step: act, store the transition, log and reset at an episode end."""
        eps = self.epsilon(self.global_step)
        action = self.act(eps)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self._store(self._obs, action, reward, next_obs, float(terminated))
        self._ep_return += float(reward)
        self._ep_len += 1
        self.global_step += 1
        self._obs = next_obs
        if terminated or truncated:
            self.episodes.append({"episode": len(self.episodes), "step": self.global_step,
                                  "return": self._ep_return, "length": self._ep_len,
                                  "epsilon": round(eps, 4)})
            self._obs, _ = self.env.reset()
            self._ep_return, self._ep_len = 0.0, 0

    def advance(self, until: int) -> None:
        """One env step, then ``gradient_steps`` updates every ``train_freq`` steps after
        ``learning_starts`` and a target update every ``target_update_interval`` steps."""
        cfg = self.cfg
        if cfg.num_envs > 1:
            self.vec_advance()
            return
        self.maybe_evaluate()  # step 0 of a fine-tuning run: the init weights
        self.env_step()
        if self.global_step > cfg.learning_starts and self.global_step % cfg.train_freq == 0:
            t0 = time.perf_counter()
            for _ in range(cfg.gradient_steps):
                self.logs = self.update()
            self.update_time += time.perf_counter() - t0
        if self.global_step % cfg.target_update_interval == 0:
            self._update_target()
        self.maybe_evaluate()

    def maybe_evaluate(self) -> float | None:
        """Evaluate for best-checkpoint selection when the step is due; the score or None."""
        sel = self.selection
        if sel is None or not sel.due(self.global_step):
            return None
        return sel.evaluate(self.agent_obj, self.global_step)

    # ----------------------------------------------------------------- resume
    def replay_nbytes(self) -> int:
        """Bytes of the filled part of the replay buffer."""
        return self.replay.nbytes()

    def save(self, path: str | os.PathLike, with_train_state: bool = True) -> None:
        """Checkpoint the agent and training state; a replay buffer over
        ``replay_inline_bytes`` goes to ``REPLAY_FILE`` in the same folder instead (see
        ``train_state``)."""
        st = self.train_state(replay_path=Path(path).with_name(REPLAY_FILE)) \
            if with_train_state else None
        self.agent.save(path, train_state=st)

    def train_state(self, max_replay_bytes: int | None = None,
                    replay_path: str | os.PathLike | None = None) -> dict:
        """Everything the rest of the run depends on (see the module docstring).

        The replay buffer goes in when it is at most ``replay_inline_bytes`` or when no
        ``replay_path`` is given. A larger one is written to ``replay_path`` every
        ``replay_every``-th such call (0: only once ``total_steps`` is reached) and the
        state refers to the last snapshot ("replay_file": path, step, token); resuming
        from an older snapshot, or none, is valid but not exact and says so. A buffer over
        ``max_replay_bytes`` (default ``self.max_replay_bytes``, None = no limit) is
        left out altogether.
        """
        cap = self.max_replay_bytes if max_replay_bytes is None else max_replay_bytes
        nbytes = self.replay_nbytes()
        rep: dict = {"replay": None, "buf_pos": self.replay.pos,
                     "buf_full": len(self.replay) == self.cfg.buffer_size}
        if cap is None or nbytes <= cap:
            if replay_path is None or nbytes <= self.replay_inline_bytes:
                rep = self.replay.state_dict()
            else:
                self._replay_saves += 1
                every = self.replay_every
                if self.global_step >= self.cfg.total_steps or \
                        (every > 0 and self._replay_saves % every == 0):
                    self._write_replay(Path(replay_path))
                rep["replay_file"] = self._replay_ref
        envs = self.vec_state() if self.cfg.num_envs > 1 else {
            "env": self.env.state(), "obs": np.asarray(self._obs).copy(),
            "ep_return": float(self._ep_return), "ep_len": int(self._ep_len)}
        return {
            "global_step": self.global_step, "episodes": list(self.episodes),
            # packed losslessly (certrl.algos.tensor_pack): Adam's moments byte-shuffled and
            # compressed, the target stored as its XOR with the Q weights of this checkpoint
            "optimizer": pack_tree(self.optimizer.state_dict()),
            "target": pack_tree(self.target.state_dict(), self.agent_obj.nets["q"].state_dict()),
            **rep, "rng": capture_rngs(self.rng), **envs,
            "robust_loss": (pack_tree(self.robust_loss.state_dict())
                            if self.robust_loss is not None else {}),
            "resume_caveats": list(self.resume_caveats),
            "selection": None if self.selection is None else self.selection.state_dict(),
        }

    def _write_replay(self, path: Path) -> None:
        """The buffer snapshot file (atomic), tagged with the step and a fresh token."""
        ref = {"path": str(path.resolve()), "step": int(self.global_step),
               "token": os.urandom(8).hex()}
        atomic_torch_save(plain({**self.replay.state_dict(), **ref}, "replay"), path)
        self._replay_ref = ref

    def _load_replay_file(self, ref: dict | None) -> str | None:
        """Fill the buffer from the snapshot ``ref`` names; why it is not exact, or None."""
        if ref is None:
            return "the checkpoint holds no replay buffer (none saved yet: see --replay-every)"
        path = Path(ref["path"])
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as e:
            return f"the replay snapshot {path} cannot be read ({type(e).__name__})"
        if not isinstance(data, dict) or data.get("token") != ref["token"]:
            return f"the replay snapshot {path} is not the one this checkpoint refers to"
        self.replay.load_state_dict(data)
        self._replay_ref = dict(ref)
        if int(data["step"]) != self.global_step:
            return (f"the replay buffer comes from the snapshot at step {data['step']}, "
                    f"not {self.global_step} (see --replay-every)")
        return None

    def load_train_state(self, st: dict) -> None:
        self.global_step = int(st["global_step"])
        self.episodes = list(st["episodes"])
        self.optimizer.load_state_dict(unpack_tree(st["optimizer"]))
        # the target is stored against the checkpoint's Q weights (loaded before this)
        self.target.load_state_dict(unpack_tree(st["target"],
                                                self.agent_obj.nets["q"].state_dict()))
        if self.robust_loss is not None and st.get("robust_loss"):
            self.robust_loss.load_state_dict(unpack_tree(st["robust_loss"]))
        if self.selection is not None and st.get("selection"):
            self.selection.load_state_dict(st["selection"])
        if st.get("replay") is not None:
            self.replay.load_state_dict(st)
        elif "replay_file" in st:
            why = self._load_replay_file(st["replay_file"])
            if why is not None and self.global_step > 0:
                self.note(f"{why}; training went on with "
                          f"{'an empty' if len(self.replay) == 0 else 'that'} buffer")
        elif self.global_step > 0:
            self.note("the checkpoint holds no replay buffer (over the size cap); "
                       "training went on with an empty one")
        if self.cfg.num_envs > 1:
            self.restore_vec(st)
        else:
            self._restore_env(st)
        restore_rngs(st, self.rng)

    def _restore_env(self, st: dict) -> None:
        if "env" not in st:  # checkpoint from before env-state saving: fresh episode
            self.note("the checkpoint holds no env state; a fresh episode was started")
            self._obs = self.env.restore({"key": [self.cfg.seed, 0],
                                          "episode": len(self.episodes), "actions": []})
            self._ep_return, self._ep_len = 0.0, 0
            return
        saved = np.asarray(st["obs"])
        try:
            obs = self.env.restore(st["env"])
            same = np.array_equal(np.asarray(obs), saved)
        except EnvReplayError as e:
            same, why = False, str(e)
        else:
            why = "the replayed observation differs from the saved one"
        if same:
            self._obs = obs
            self._ep_return, self._ep_len = float(st["ep_return"]), int(st["ep_len"])
            return
        self.note(f"{self.cfg.env_id}: replaying the current episode did not rebuild the "
                   f"env ({why}); a fresh episode was started")
        env_state = dict(st["env"])
        env_state.update(episode=int(env_state["episode"]) + 1, actions=[])
        self._obs = self.env.restore(env_state)
        self._ep_return, self._ep_len = 0.0, 0
