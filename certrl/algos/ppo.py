"""PPO (Schulman et al. 2017), clipped surrogate with GAE, discrete or Gaussian policy.

Loop (CleanRL-style, ``num_envs`` synchronous envs):
    collect ``num_steps`` steps per env: x = preprocess(o) (MuJoCo: running
        mean/std normalization, updated while training), a ~ pi(.|x), v = V(x)
    GAE: delta_t = r_t + gamma V(x_{t+1}) (1 - term) - V(x_t),
         A_t = delta_t + gamma lambda (1 - done_t) A_{t+1},  R_t = A_t + V(x_t)
    ``update_epochs`` passes over shuffled minibatches:
        ratio = exp(logp_new - logp_old), A normalized per minibatch,
        L_pi = mean max(-A ratio, -A clip(ratio, 1 - c, 1 + c)),
        L_v = 0.5 mean max((V - R)^2, (V_clipped - R)^2)   (clip_vloss)
        loss = L_pi - ent_coef H + vf_coef L_v  [+ robust loss term]
Truncated episodes bootstrap: r += gamma V(final obs). Rewards may be scaled by
the running std of the discounted return (``norm_reward``), clipped to +-10.

Sub-env i resets its episode k from ``episode_seed(seed, i, k)`` (``EpisodeSeeding``).
``train_state()`` holds the optimizer, counters, observation / return normalization
statistics, the running discounted returns, every RNG and each sub-env's state (its
episode index and the actions of its current episode: rollouts span episodes, so a
checkpoint at an update boundary is mid-episode; resume resets each sub-env from its
episode seed and replays the actions, which rebuilds the state exactly for the
deterministic classic-control, MuJoCo and ALE envs). The algorithm is unchanged by this:
rollouts keep their fixed length. Resuming and continuing gives the uninterrupted
run's weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from certrl.agent import Agent
from certrl.algos.base import (
    Algorithm,
    capture_rngs,
    check_config,
    resolve_threat,
    restore_rngs,
    seed_everything,
)
from certrl.envs import (
    EnvReplayError,
    RunningMeanStd,
    action_space_info,
    env_family,
    make_vec_env,
)
from certrl.losses.base import RobustLoss, TrainContext
from certrl.nets import body_spec, build_network


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class PPOConfig:
    """PPO hyper-parameters (CleanRL's MuJoCo defaults, 4 envs x 512 steps)."""

    env_id: str = "Pendulum-v1"
    total_steps: int = 200_000
    seed: int = 0
    num_envs: int = 4
    num_steps: int = 512
    lr: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 32
    update_epochs: int = 10
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    norm_obs: bool | None = None
    norm_reward: bool | None = None
    hidden: tuple[int, ...] = (64, 64)
    log_std_init: float = 0.0
    threat: dict | None = None
    env_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_config(self, pos_int=("total_steps", "num_envs", "num_steps", "num_minibatches",
                                    "update_epochs"),
                     nonneg_int=("seed",),
                     pos=("lr", "max_grad_norm", "target_kl"),
                     nonneg=("clip_coef", "ent_coef", "vf_coef"),
                     unit=("gae_lambda",), unit_open0=("gamma",), finite=("log_std_init",))

    @classmethod
    def for_env(cls, env_id: str, **overrides) -> PPOConfig:
        """Family defaults (Atari: CleanRL's Atari PPO; discrete: entropy bonus) + overrides."""
        base: dict = {"env_id": env_id}
        fam = env_family(env_id)
        if fam == "atari":
            base.update(num_envs=8, num_steps=128, lr=2.5e-4, num_minibatches=4,
                        update_epochs=4, clip_coef=0.1, ent_coef=0.01, norm_reward=False)
        elif env_id in ("CartPole-v1", "Acrobot-v1", "MountainCar-v0"):
            base.update(num_envs=4, num_steps=128, lr=2.5e-4, num_minibatches=4,
                        update_epochs=4, ent_coef=0.01, gae_lambda=0.95)
        base.update(overrides)
        return cls(**base)


def gae_advantages(rews: torch.Tensor, vals: torch.Tensor, dones: torch.Tensor,
                   last_v: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """GAE (T, n): A_t = delta_t + gamma lam (1 - d_t) A_{t+1}, delta_t = r_t +
    gamma (1 - d_t) V_{t+1} - V_t, V_T = ``last_v``. A finished episode's successor value
    is the *new* episode's, so it is cut at done (truncations bootstrap through r_t)."""
    adv = torch.zeros_like(rews)
    gae = torch.zeros_like(last_v)
    T = rews.shape[0]
    for t in reversed(range(T)):
        next_v = last_v if t == T - 1 else vals[t + 1]
        delta = rews[t] + gamma * next_v * (1.0 - dones[t]) - vals[t]
        gae = delta + gamma * lam * (1.0 - dones[t]) * gae
        adv[t] = gae
    return adv


class PPO(Algorithm):
    """Proximal policy optimization; ``learn()`` then ``agent``."""

    algo_name = "ppo"
    config_cls = PPOConfig

    def __init__(self, cfg: PPOConfig, robust_loss: RobustLoss | None = None):
        self.cfg = cfg
        self.robust_loss = robust_loss
        self.rng = seed_everything(cfg.seed)
        self.envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed, episode_seeds=True,
                                 **cfg.env_kwargs)
        family = env_family(cfg.env_id)
        obs_shape = tuple(self.envs.single_observation_space.shape)
        aspace = action_space_info(self.envs.single_action_space)
        self.discrete = aspace["kind"] == "discrete"
        norm_obs = (family == "mujoco") if cfg.norm_obs is None else cfg.norm_obs
        self.norm_reward = (not self.discrete) if cfg.norm_reward is None else cfg.norm_reward
        body = body_spec(obs_shape, cfg.hidden, "tanh")
        if self.discrete:
            pspec = {"type": "categorical_policy", "body": body, "n_out": aspace["n"]}
        else:
            pspec = {"type": "gaussian_policy", "body": body,
                     "n_out": int(np.prod(aspace["shape"])), "log_std_init": cfg.log_std_init}
        nets: dict[str, nn.Module] = {"policy": build_network(pspec),
                                      "value": build_network({"type": "value", "body": body})}
        if robust_loss is not None:
            robust_loss.setup(dict(nets), cfg)
            nets.update(robust_loss.extra_networks())
        if family == "atari":
            preprocessing = {"kind": "pixels", "scale": 255.0}
        elif norm_obs:
            preprocessing = {"kind": "normalize"}
        else:
            preprocessing = {"kind": "identity"}
        rms = RunningMeanStd(obs_shape) if norm_obs else None
        self.agent_obj = Agent(
            nets, env_id=cfg.env_id, algo="ppo", obs_shape=obs_shape, action_space=aspace,
            preprocessing=preprocessing, threat_model=resolve_threat(cfg.env_id, cfg.threat),
            obs_rms=rms, config=self.training_config(), seed=cfg.seed,
            loss_name=self.loss_name,
        )
        trained = {"policy": nets["policy"], "value": nets["value"],
                   **(robust_loss.jointly_optimized() if robust_loss else {})}
        params = [p for n in trained.values() for p in n.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)
        self.ret_rms = RunningMeanStd(())
        self._disc_ret = np.zeros(cfg.num_envs)
        self.global_step = 0
        self.episodes: list[dict] = []
        self.update_time = 0.0
        self.logs: dict[str, float] = {}
        self.resume_caveats: list[str] = []
        self._obs, _ = self.envs.reset()
        self._ep_ret = np.zeros(cfg.num_envs)
        self._ep_len = np.zeros(cfg.num_envs, dtype=np.int64)

    @property
    def batch_steps(self) -> int:
        return self.cfg.num_envs * self.cfg.num_steps

    def _input(self, obs: np.ndarray, update_stats: bool) -> torch.Tensor:
        rms = self.agent_obj.obs_rms
        if update_stats and rms is not None:
            rms.update(obs)
        return self.agent_obj.preprocess(obs)

    def _scale_reward(self, r: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.norm_reward:
            return r
        self._disc_ret = self._disc_ret * self.cfg.gamma + r
        self.ret_rms.update(self._disc_ret)
        self._disc_ret[done] = 0.0
        return np.clip(r / math.sqrt(float(self.ret_rms.var) + 1e-8), -10, 10)

    def collect(self, num_steps: int) -> dict[str, torch.Tensor]:
        """Roll the policy for ``num_steps`` vector steps; returns the rollout tensors."""
        cfg, policy, value = self.cfg, self.agent_obj.nets["policy"], self.agent_obj.nets["value"]
        n = cfg.num_envs
        xs, acts, logps, vals, rews, dones = [], [], [], [], [], []
        for _ in range(num_steps):
            x = self._input(self._obs, update_stats=True)
            with torch.no_grad():
                dist = policy.distribution(x)
                a = dist.sample()
                logp = dist.log_prob(a)
                if not self.discrete:
                    logp = logp.sum(-1)
                v = value(x).squeeze(1)
            a_np = a.cpu().numpy()
            env_a = a_np if self.discrete else self.agent_obj.clip_action(a_np)
            obs, r, term, trunc, info = self.envs.step(env_a)
            r = np.asarray(r, dtype=np.float64)
            done = np.logical_or(term, trunc)
            self._ep_ret += r
            self._ep_len += 1
            r_train = self._scale_reward(r, done)
            for i in np.nonzero(trunc & ~term)[0]:  # bootstrap through time limits
                final = np.asarray(info["final_obs"][i])[None]
                with torch.no_grad():
                    r_train[i] += cfg.gamma * float(value(self._input(final, False)))
            for i in np.nonzero(done)[0]:
                rec = {"episode": len(self.episodes), "step": int(self.global_step + i + 1),
                       "return": float(self._ep_ret[i]), "length": int(self._ep_len[i])}
                self.episodes.append(rec)
                self._ep_ret[i], self._ep_len[i] = 0.0, 0
            xs.append(x)
            acts.append(a)
            logps.append(logp)
            vals.append(v)
            rews.append(torch.as_tensor(r_train, dtype=torch.float32, device=x.device))
            dones.append(torch.as_tensor(done, dtype=torch.float32, device=x.device))
            self._obs = obs
            self.global_step += n
        x_last = self._input(self._obs, update_stats=False)
        with torch.no_grad():
            last_v = value(x_last).squeeze(1)
        vals_t, rews_t = torch.stack(vals), torch.stack(rews)
        dones_t = torch.stack(dones)
        adv = gae_advantages(rews_t, vals_t, dones_t, last_v, cfg.gamma, cfg.gae_lambda)
        flat = lambda t: t.reshape(num_steps * n, *t.shape[2:])  # noqa: E731
        return {"obs": flat(torch.stack(xs)), "actions": flat(torch.stack(acts)),
                "logprobs": flat(torch.stack(logps)), "values": flat(vals_t),
                "advantages": flat(adv), "returns": flat(adv + vals_t),
                # for losses that learn their own critic (WocaR-PPO's worst-case Q); after a
                # done, next_obs is the next episode's first observation (mask with dones)
                "rewards": flat(rews_t), "dones": flat(dones_t),
                "next_obs": flat(torch.stack(xs[1:] + [x_last]))}

    def minibatch_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """(loss, logs) of one minibatch: L_pi - ent_coef H + vf_coef L_v [+ robust term]."""
        cfg, rl = self.cfg, self.robust_loss
        policy, value = self.agent_obj.nets["policy"], self.agent_obj.nets["value"]
        out = policy(batch["obs"])
        if self.discrete:
            dist = torch.distributions.Categorical(logits=out)
            newlogp, ent = dist.log_prob(batch["actions"]), dist.entropy()
        else:
            dist = torch.distributions.Normal(out, policy.log_std.exp().expand_as(out))
            newlogp = dist.log_prob(batch["actions"]).sum(-1)
            ent = dist.entropy().sum(-1)
        logratio = newlogp - batch["logprobs"]
        ratio = logratio.exp()
        with torch.no_grad():
            approx_kl = float(((ratio - 1) - logratio).mean())
        adv = batch["advantages"]
        if adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg = torch.max(-adv * ratio,
                       -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
        v_loss = self.value_loss(value(batch["obs"]).squeeze(1), batch)
        logs: dict[str, float] = {}
        if rl is not None:
            batch["mean"] = out
            ctx = TrainContext(batch=batch, nets=self.agent_obj.nets,
                               threat=self.agent_obj.threat_model, step=self.global_step,
                               gamma=cfg.gamma, clip_coef=cfg.clip_coef)
            pg, logs = rl.modify_policy_loss(pg, ctx)
        loss = pg - cfg.ent_coef * ent.mean() + cfg.vf_coef * v_loss
        if rl is not None:
            extra, extra_logs = rl(ctx)
            loss = loss + extra
            logs = {**logs, **extra_logs}
        logs.update(pg_loss=float(pg.detach()), v_loss=float(v_loss.detach()),
                    entropy=float(ent.detach().mean()), approx_kl=approx_kl)
        return loss, logs

    def value_loss(self, v: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """0.5 mean max((V - R)^2, (V_clipped - R)^2) (clip_vloss) or 0.5 mean (V - R)^2."""
        c, ret = self.cfg.clip_coef, batch["returns"]
        if not self.cfg.clip_vloss:
            return 0.5 * ((v - ret) ** 2).mean()
        v_clip = batch["values"] + (v - batch["values"]).clamp(-c, c)
        return 0.5 * torch.max((v - ret) ** 2, (v_clip - ret) ** 2).mean()

    def update(self, roll: dict[str, torch.Tensor]) -> dict[str, float]:
        """``update_epochs`` passes of minibatch PPO updates on a rollout."""
        cfg = self.cfg
        size = roll["obs"].shape[0]
        mb = max(1, size // cfg.num_minibatches)
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        logs: dict[str, float] = {}
        for _epoch in range(cfg.update_epochs):
            perm = torch.randperm(size, generator=gen).to(roll["obs"].device)  # CPU draw
            for start in range(0, size, mb):
                idx = perm[start:start + mb]
                loss, mb_logs = self.minibatch_loss({k: v[idx] for k, v in roll.items()})
                logs.update(mb_logs)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
            if cfg.target_kl is not None and logs["approx_kl"] > cfg.target_kl:
                break
        return logs

    @property
    def checkpoint_ready(self) -> bool:
        """Always after an update (resume replays each sub-env's current episode)."""
        return True

    def advance(self, until: int) -> None:
        """One rollout (at most ``num_steps`` per env, none past ``until``) and its update;
        the learning rate is annealed linearly to 0 over ``total_steps`` (``anneal_lr``)."""
        cfg = self.cfg
        steps = min(cfg.num_steps, max(1, math.ceil((until - self.global_step) / cfg.num_envs)))
        if cfg.anneal_lr:
            frac = 1.0 - self.global_step / max(1, cfg.total_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = max(frac, 0.0) * cfg.lr
        roll = self.collect(steps)
        t0 = time.perf_counter()
        self.logs = self.update(roll)
        self.update_time += time.perf_counter() - t0

    def train_state(self) -> dict:
        """Everything the rest of the run depends on (see the module docstring)."""
        return {"global_step": self.global_step, "episodes": list(self.episodes),
                "optimizer": self.optimizer.state_dict(),
                "ret_rms": self.ret_rms.state_dict(),
                "disc_ret": self._disc_ret.copy(), "ep_ret": self._ep_ret.copy(),
                "ep_len": self._ep_len.copy(), "obs": np.asarray(self._obs).copy(),
                "envs": [e.state() for e in self.envs.envs],
                "rng": capture_rngs(self.rng),
                "robust_loss": (self.robust_loss.state_dict()
                                if self.robust_loss is not None else {}),
                "resume_caveats": list(self.resume_caveats)}

    def load_train_state(self, st: dict) -> None:
        self.global_step = int(st["global_step"])
        self.episodes = list(st["episodes"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.ret_rms.load_state_dict(st["ret_rms"])
        if self.robust_loss is not None and st.get("robust_loss"):
            self.robust_loss.load_state_dict(st["robust_loss"])
        self._restore_envs(st)
        restore_rngs(st, self.rng)

    def _restore_envs(self, st: dict) -> None:
        n, subs = self.cfg.num_envs, self.envs.envs
        if "envs" not in st or len(st["envs"]) != n:  # older checkpoint, or num_envs changed
            self.note("the checkpoint holds no env state for these envs; fresh episodes "
                       "were started")
            fresh = [e.restore({"key": [self.cfg.seed, i], "actions": [],
                                "episode": len(self.episodes) + 1})
                     for i, e in enumerate(subs)]
            self._obs = np.stack(fresh)
            self._ep_ret[:], self._ep_len[:], self._disc_ret[:] = 0.0, 0, 0.0
            return
        saved = np.asarray(st["obs"])
        self._ep_ret[:] = np.asarray(st["ep_ret"], dtype=np.float64)
        self._ep_len[:] = np.asarray(st["ep_len"], dtype=np.int64)
        self._disc_ret[:] = np.asarray(st["disc_ret"], dtype=np.float64)
        obs = saved.copy()
        for i, (env, es) in enumerate(zip(subs, st["envs"])):
            try:
                o = env.restore(es)
                why = "the replayed observation differs from the saved one"
                same = np.array_equal(np.asarray(o), saved[i])
            except EnvReplayError as e:
                same, why = False, str(e)
            if same:
                obs[i] = o
                continue
            self.note(f"{self.cfg.env_id} env {i}: replaying the current episode did not "
                       f"rebuild the env ({why}); a fresh episode was started")
            obs[i] = env.restore({**es, "episode": int(es["episode"]) + 1, "actions": []})
            self._ep_ret[i], self._ep_len[i], self._disc_ret[i] = 0.0, 0, 0.0
        self._obs = obs
