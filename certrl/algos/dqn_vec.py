"""DQN acting in ``num_envs`` > 1 environments at once (``DQNConfig.num_envs``).

One iteration (``VecActing.vec_advance``) at env step s, N = ``num_envs``:
    eps = eps(s); u_i ~ U[0, 1), b_i ~ U{0 .. n_actions-1} for i = 0 .. N-1 (one RNG,
        env order); a_i = b_i if u_i < eps else argmax_a Q(x_i, a), the N greedy actions
        from one batched forward pass
    step the N envs (``certrl.envs.make_vec_env``: SAME_STEP autoreset); store N transitions
        (o_i, a_i, r_i, o'_i, terminated_i) in env order, o'_i the true last observation
        (``info["final_obs"]``) at an episode end, replay stream i (``FrameReplay``); only
        *terminated* ends bootstrapping, as with one env
    then for t = s+1 .. s+N (global_step = t): ``gradient_steps`` updates when t >
        learning_starts and t % train_freq == 0, a target update when t %
        target_update_interval == 0; an evaluation when a multiple of eval_every lies in
        (s, s+N] (at s+N)
So N envs do the same number of gradient steps per env step as one. A run ends at the
first multiple of N at or past ``total_steps`` (up to N-1 steps more).

Resume: the state holds each sub-env's ``EpisodeSeeding`` state (episode index and the
current episode's actions), replayed on resume as PPO does, so a checkpoint may be taken
after any iteration and resuming gives the uninterrupted run's weights.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from certrl.envs import EnvReplayError


class VecActing:
    """Mixin of ``certrl.algos.dqn.DQN``: the acting loop over N envs (module doc)."""

    def reset_vec(self) -> None:
        """First observations of the N envs (``self.envs``) and per-env episode counters."""
        n = self.cfg.num_envs
        self._obs, _ = self.envs.reset()
        self._ep_return = np.zeros(n)
        self._ep_len = np.zeros(n, dtype=np.int64)

    def act_vec(self, eps: float) -> np.ndarray:
        """N actions: random where u_i < eps (u, b drawn for every env), else greedy."""
        n = self.cfg.num_envs
        u = self.rng.random(n)
        actions = self.rng.integers(self.agent_obj.action_space["n"], size=n)
        greedy = u >= eps
        if greedy.any():
            with torch.no_grad():
                x = self.agent_obj.preprocess(np.asarray(self._obs))
                q_act = self.agent_obj.nets["q"](x).argmax(1).cpu().numpy()
            actions[greedy] = q_act[greedy]
        return actions

    def vec_env_step(self) -> None:
        """Step the N envs, store N transitions, log finished episodes."""
        s, eps = self.global_step, self.epsilon(self.global_step)
        actions = self.act_vec(eps)
        obs, rewards, term, trunc, info = self.envs.step(actions)
        done = np.logical_or(term, trunc)
        for i in range(self.cfg.num_envs):
            nxt = info["final_obs"][i] if done[i] else obs[i]
            self.replay.add(self._obs[i], int(actions[i]), float(rewards[i]), nxt,
                            float(term[i]), stream=i)
            self._ep_return[i] += float(rewards[i])
            self._ep_len[i] += 1
            if done[i]:
                self.episodes.append({"episode": len(self.episodes), "step": s + i + 1,
                                      "return": float(self._ep_return[i]),
                                      "length": int(self._ep_len[i]),
                                      "epsilon": round(eps, 4)})
                self._ep_return[i], self._ep_len[i] = 0.0, 0
        self._obs = obs
        self.global_step = s + self.cfg.num_envs

    def vec_advance(self) -> None:
        """One iteration: N env steps, then the updates of those N steps (module doc)."""
        cfg, s = self.cfg, self.global_step
        self.maybe_evaluate()  # step 0 of a fine-tuning run: the init weights
        self.vec_env_step()
        end = self.global_step
        for t in range(s + 1, end + 1):
            self.global_step = t  # the robust loss's schedule sees each env step
            if t > cfg.learning_starts and t % cfg.train_freq == 0:
                t0 = time.perf_counter()
                for _ in range(cfg.gradient_steps):
                    self.logs = self.update()
                self.update_time += time.perf_counter() - t0
            if t % cfg.target_update_interval == 0:
                self._update_target()
        self.global_step = end
        sel = self.selection
        if sel is not None and sel.every > 0 and end // sel.every > s // sel.every:
            sel.evaluate(self.agent_obj, end)

    def vec_state(self) -> dict:
        """The env part of ``train_state``: every sub-env's state, observations, counters."""
        return {"envs": [e.state() for e in self.envs.envs],
                "obs": np.asarray(self._obs).copy(),
                "ep_return": self._ep_return.copy(), "ep_len": self._ep_len.copy()}

    def restore_vec(self, st: dict) -> None:
        """Rebuild each sub-env by replaying its current episode (fresh episodes, noted,
        where the checkpoint has no state for these N envs or a replay fails)."""
        n, subs = self.cfg.num_envs, self.envs.envs
        if "envs" not in st or len(st["envs"]) != n:  # a one-env checkpoint, or N changed
            self.note(f"the checkpoint holds no env state for {n} envs; fresh episodes "
                      "were started")
            self._obs = np.stack([e.restore({"key": [self.cfg.seed, i], "actions": [],
                                             "episode": len(self.episodes) + 1})
                                  for i, e in enumerate(subs)])
            self._ep_return[:], self._ep_len[:] = 0.0, 0
            return
        saved = np.asarray(st["obs"])
        self._ep_return[:] = np.asarray(st["ep_return"], dtype=np.float64)
        self._ep_len[:] = np.asarray(st["ep_len"], dtype=np.int64)
        obs = saved.copy()
        for i, (env, es) in enumerate(zip(subs, st["envs"])):
            try:
                o = env.restore(es)
                same, why = np.array_equal(np.asarray(o), saved[i]), \
                    "the replayed observation differs from the saved one"
            except EnvReplayError as e:
                same, why = False, str(e)
            if same:
                obs[i] = o
                continue
            self.note(f"{self.cfg.env_id} env {i}: replaying the current episode did not "
                      f"rebuild the env ({why}); a fresh episode was started")
            obs[i] = env.restore({**es, "episode": int(es["episode"]) + 1, "actions": []})
            self._ep_return[i], self._ep_len[i] = 0.0, 0
        self._obs = obs
