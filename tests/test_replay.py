"""Replay buffers: the frame store rebuilds exactly what the env returned, the array
buffer samples exactly what DQN's former arrays did, and checkpoints keep a large buffer
out of latest.pt (``replay.pt`` snapshot) while resume stays exact when it is there."""

import numpy as np
import pytest
import torch

from certrl.algos.dqn import DQN, REPLAY_FILE, DQNConfig
from certrl.algos.replay import ArrayReplay, FrameReplay
from certrl.envs import make_env


class OldReplay:
    """The buffer DQN used before ``certrl.algos.replay`` (reference for bit-identity)."""

    def __init__(self, n, obs_shape, dtype):
        self.n = n
        self.buf = {"obs": np.zeros((n, *obs_shape), dtype),
                    "next_obs": np.zeros((n, *obs_shape), dtype),
                    "actions": np.zeros(n, np.int64), "rewards": np.zeros(n, np.float32),
                    "dones": np.zeros(n, np.float32)}
        self.pos, self.full = 0, False

    def store(self, obs, action, reward, next_obs, done):
        i = self.pos
        self.buf["obs"][i], self.buf["next_obs"][i] = obs, next_obs
        self.buf["actions"][i], self.buf["rewards"][i], self.buf["dones"][i] = \
            action, reward, done
        self.pos = (i + 1) % self.n
        self.full = self.full or self.pos == 0

    def sample(self, rng, b):
        idx = rng.integers(0, self.n if self.full else self.pos, b)
        return {k: v[idx] for k, v in self.buf.items()}


def test_array_replay_samples_like_the_old_buffer():
    env = make_env("CartPole-v1", 3)
    old, new = OldReplay(500, (4,), np.float32), ArrayReplay(500, (4,))
    r_old, r_new, act = (np.random.default_rng(7) for _ in range(3))
    obs, _ = env.reset(seed=3)
    for t in range(1200):  # wraps the ring twice
        a = int(act.integers(2))
        nxt, r, term, trunc, _ = env.step(a)
        old.store(obs, a, r, nxt, float(term))
        new.add(obs, a, r, nxt, float(term))
        obs = env.reset()[0] if term or trunc else nxt
        if t % 97 == 5:
            bo, bn = old.sample(r_old, 64), new.sample(r_new, 64)
            for k in bo:
                np.testing.assert_array_equal(bo[k], bn[k])
                assert bo[k].dtype == bn[k].dtype


def _pong_transitions(n, max_steps, seed=0):
    env = make_env("ALE/Pong-v5", seed, max_episode_steps=max_steps)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        a = int(rng.integers(6))
        nxt, r, term, trunc, _ = env.step(a)
        out.append((obs.copy(), a, float(r), nxt.copy(), float(term)))
        obs = env.reset()[0] if term or trunc else nxt
    return out


@pytest.fixture(scope="module")
def pong():
    # max_episode_steps counts base-env frames (frame_skip 4): episodes of ~10 agent steps
    return _pong_transitions(130, 40)


@pytest.mark.parametrize("cap,frame_cap", [(1000, None), (50, None), (50, 12)])
def test_frame_replay_rebuilds_the_env_observations(pong, cap, frame_cap):
    rep = FrameReplay(cap, (4, 84, 84), frame_capacity=frame_cap)
    for tr in pong:
        rep.add(*tr)
    n = len(rep)
    assert 0 < n <= cap and (frame_cap is not None or n == min(cap, len(pong)))
    got = rep.get(np.arange(n))
    for u, (o, a, r, o2, d) in enumerate(pong[len(pong) - n:]):  # the newest n, oldest first
        np.testing.assert_array_equal(got["obs"][u], o)
        np.testing.assert_array_equal(got["next_obs"][u], o2)
        assert (got["actions"][u], got["rewards"][u], got["dones"][u]) == (a, r, d)
    if frame_cap is None:  # one frame per step plus one per episode start
        starts = sum(not np.array_equal(o, pong[i - 1][3]) for i, (o, *_) in
                     enumerate(pong) if i > 0) + 1
        assert rep.n_frames == len(pong) + starts
        assert rep.nbytes() < 0.2 * sum(o.nbytes + o2.nbytes for o, _, _, o2, _ in pong[-n:])


def test_frame_replay_episode_start_is_the_reset_stack(pong):
    rep = FrameReplay(1000, (4, 84, 84))
    rep.add(*pong[0])
    ids = rep.obs_ids[0]
    assert (ids == ids[0]).all()  # the reset padding repeats the first frame: stored once
    np.testing.assert_array_equal(rep.get(np.arange(1))["obs"][0], pong[0][0])


def test_frame_replay_state_round_trip_and_old_format(pong):
    rep = FrameReplay(60, (4, 84, 84))
    for tr in pong:
        rep.add(*tr)
    st = rep.state_dict()
    raw = (st["replay"]["n_frames"] - st["replay"]["frame_lo"]) * 84 * 84
    assert st["replay"]["frames_zlib"].numel() < raw / 10  # Pong frames compress well
    again = FrameReplay(60, (4, 84, 84))
    again.load_state_dict(st)
    for tr in pong[:7]:  # both continue identically
        rep.add(*tr)
        again.add(*tr)
    a, b = rep.sample(np.random.default_rng(1), 32), again.sample(np.random.default_rng(1), 32)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    old = ArrayReplay(60, (4, 84, 84), np.uint8)  # the stacked arrays older checkpoints hold
    for tr in pong:
        old.add(*tr)
    conv = FrameReplay(60, (4, 84, 84))
    conv.load_state_dict(old.state_dict())
    order = np.r_[old.pos:60, 0:old.pos]  # oldest first; episodes of ~10 steps use more
    n = len(conv)                         # frames than the ring's 1/16 slack: oldest evicted
    assert 40 < n <= 60
    np.testing.assert_array_equal(conv.get(np.arange(n))["obs"], old.arrays["obs"][order][-n:])
    np.testing.assert_array_equal(conv.get(np.arange(n))["next_obs"],
                                  old.arrays["next_obs"][order][-n:])


def test_frame_replay_rejects_other_observations():
    rep = FrameReplay(10, (4, 84, 84))
    with pytest.raises(ValueError, match="uint8"):
        rep.add(np.zeros((4, 84, 84), np.float32), 0, 0.0, np.zeros((4, 84, 84)), 0.0)
    with pytest.raises(ValueError, match="frame_capacity"):
        FrameReplay(10, (4, 84, 84), frame_capacity=3)


def _atari_cfg(**kw):
    base = dict(total_steps=60, buffer_size=200, batch_size=4, learning_starts=20,
                env_kwargs={"max_episode_steps": 100})
    return DQNConfig.for_env("ALE/Pong-v5", **{**base, **kw})


def test_big_buffer_goes_to_a_rarer_snapshot(tmp_path):
    algo = DQN(_atari_cfg(learning_starts=100))  # no updates: only the buffer matters
    algo.replay_inline_bytes = 0  # everything counts as "large" here
    algo.learn(30)
    algo.save(tmp_path / "latest.pt")
    assert not (tmp_path / REPLAY_FILE).exists()  # default: a snapshot only at the end
    data = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert data["train_state"]["replay"] is None
    with pytest.warns(RuntimeWarning, match="no replay buffer"):
        cold = DQN.resume(tmp_path / "latest.pt")
    assert len(cold.replay) == 0 and any("replay" in c for c in cold.resume_caveats)

    algo.replay_every = 1  # --replay-every 1: exact resume from every checkpoint
    algo.save(tmp_path / "latest.pt")
    assert (tmp_path / REPLAY_FILE).exists()
    warm = DQN.resume(tmp_path / "latest.pt")
    assert warm.resume_caveats == [] and len(warm.replay) == len(algo.replay) == 30
    np.testing.assert_array_equal(warm.buf["obs"], algo.buf["obs"])

    algo.replay_every = 0
    algo.learn(40)
    algo.save(tmp_path / "latest.pt")  # refers to the step-30 snapshot
    with pytest.warns(RuntimeWarning, match="step 30, not 40"):
        stale = DQN.resume(tmp_path / "latest.pt")
    assert len(stale.replay) == 30
    (tmp_path / REPLAY_FILE).unlink()
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        gone = DQN.resume(tmp_path / "latest.pt")
    assert len(gone.replay) == 0


def test_resume_with_snapshot_is_exact(tmp_path):
    full = DQN(_atari_cfg()).learn()
    algo = DQN(_atari_cfg())
    algo.replay_inline_bytes, algo.replay_every = 0, 1
    algo.learn(35)
    algo.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    again.learn()
    assert again.resume_caveats == []
    for p, q in zip(full.agent.nets["q"].parameters(), again.agent.nets["q"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
