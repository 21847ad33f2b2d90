"""DQN acting in N envs at once (``DQNConfig.num_envs``, ``certrl train --num-envs``):
N = 1 is the one-env loop unchanged, N > 1 counts env steps, stores the envs' true
transitions, keeps the update schedule in env steps, resumes exactly; the frame replay
tracks N interleaved streams."""

import json

import numpy as np
import pytest
import torch

from certrl.algos.dqn import DQN, DQNConfig
from certrl.algos.replay import ArrayReplay, FrameReplay
from certrl.cli import main as cli_main
from certrl.envs import make_env


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(num_envs: int, steps: int = 300, **kw) -> DQNConfig:
    base = dict(total_steps=steps, seed=3, learning_starts=100, train_freq=4,
                gradient_steps=1, target_update_interval=50, buffer_size=1000,
                batch_size=32, num_envs=num_envs)
    return DQNConfig.for_env("CartPole-v1", **{**base, **kw})


def flat(algo: DQN) -> torch.Tensor:
    return torch.cat([v.flatten() for v in algo.agent_obj.nets["q"].state_dict().values()])


# Recorded from the code before num_envs existed (commit 0a7550a, torch 2.13 CPU, one
# thread): the same seeded 700-step run's first weights, |w|_1 and episode lengths.
GOLDEN_LENGTHS = [9, 15, 22, 8, 16, 11, 9, 10, 9, 10, 9, 8, 9, 9, 10, 9, 10, 12, 8, 10, 10, 9,
                  11, 10, 10, 9, 9, 10, 10, 10, 9, 10, 10, 10, 10, 12, 11, 9, 10, 9, 9, 10,
                  12, 9, 9, 12, 9, 9, 9, 9, 9, 8, 10, 10, 10, 10, 9, 9, 9, 8, 8, 9, 10, 10,
                  10, 10, 10, 8, 9, 10]
GOLDEN_FIRST = [-0.64489, -0.290844, -0.226456, -0.573147]
GOLDEN_L1 = 512.1353759765625


def test_one_env_is_the_former_loop():
    algo = DQN(tiny(1, 700)).learn()
    assert [e["length"] for e in algo.episodes] == GOLDEN_LENGTHS
    w = flat(algo)
    np.testing.assert_allclose(w[:4].numpy(), GOLDEN_FIRST, atol=1e-5)
    assert float(w.abs().sum()) == pytest.approx(GOLDEN_L1, rel=1e-6)
    st = algo.train_state()
    assert "env" in st and "envs" not in st and not hasattr(algo, "envs")


def test_one_env_keeps_its_run_group():  # recorded from commit 0a7550a, as above
    assert DQN(tiny(1)).run_group == \
        "9f44bc15dc07851713124784513ec1ab7b71040e7c413432f7e78d20bd79809a"
    assert DQN(tiny(2)).run_group != DQN(tiny(1)).run_group


def test_vec_counts_env_steps_and_schedules_updates_in_env_steps():
    cfg = tiny(4, 203, learning_starts=40, train_freq=8, gradient_steps=3,
               target_update_interval=20)
    algo = DQN(cfg)
    calls = {"update": 0, "target": 0}
    upd, tgt = algo.update, algo._update_target

    def count_update():
        calls["update"] += 1
        return upd()

    def count_target():
        calls["target"] += 1
        tgt()
    algo.update, algo._update_target = count_update, count_target
    algo.learn()
    assert algo.global_step == 204  # first multiple of 4 at or past 203
    assert calls["update"] == 3 * sum(t > 40 and t % 8 == 0 for t in range(1, 205))
    assert calls["target"] == sum(t % 20 == 0 for t in range(1, 205))
    done = sum(e["length"] for e in algo.episodes)
    assert done + int(algo._ep_len.sum()) == 204
    assert len(algo.replay) == 204


def test_vec_stores_each_envs_true_transitions():
    n = 3
    algo = DQN(tiny(n, 150, learning_starts=1000))
    algo.learn()
    a = algo.replay.arrays
    m = len(algo.replay)
    assert isinstance(algo.replay, ArrayReplay)
    ends = 0
    for j in range(m - n):  # slot j holds env j % n; its successor in that env is j + n
        if a["dones"][j]:
            ends += 1
            assert not np.array_equal(a["next_obs"][j], a["obs"][j + n])  # final obs kept
        elif not np.array_equal(a["next_obs"][j], a["obs"][j + n]):
            ends += 1  # truncation (none at 500 steps here) would also restart the env
    assert ends == sum(1 for e in algo.episodes if e["step"] <= m - n) > 0
    # replaying env 1's recorded actions in a fresh env with its episode seeds gives its obs
    env = make_env("CartPole-v1", 4, episode_seeds=(3, 1))
    obs, _ = env.reset()
    for j in range(1, 30, n):
        np.testing.assert_array_equal(a["obs"][j], obs)
        obs, _, term, trunc, _ = env.step(int(a["actions"][j]))
        np.testing.assert_array_equal(a["next_obs"][j], obs)
        if term or trunc:
            obs, _ = env.reset()


def test_vec_resume_is_exact(tmp_path):
    full = DQN(tiny(2, 300)).learn()
    part = DQN(tiny(2, 300)).learn(151)  # mid-episode in both envs, updates running
    assert part.global_step == 152 and (part._ep_len > 0).all()
    part.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.resume_caveats == []
    again.learn()
    torch.testing.assert_close(flat(again), flat(full), rtol=0, atol=0)
    assert again.episodes == full.episodes


def test_vec_differs_from_one_env_but_is_seeded():
    a, b = DQN(tiny(2, 200)).learn(), DQN(tiny(2, 200)).learn()
    assert torch.equal(flat(a), flat(b))
    assert not torch.equal(flat(a), flat(DQN(tiny(1, 200)).learn()))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_bad_num_envs(bad):
    with pytest.raises(ValueError, match="num_envs"):
        tiny(bad)


def _train(tmp_path, *extra):
    return cli_main(["train", "--env", "CartPole-v1", "--steps", "60", "--out",
                     str(tmp_path / "run"), "--no-progress", *extra])


@pytest.mark.parametrize("extra,msg", [
    (["--algo", "dqn", "--num-envs", "0"], "positive integer"),
    (["--algo", "dqn", "--num-envs", "two"], "positive integer"),
    (["--algo", "ppo", "--num-envs", "2"], "DQN option"),
    (["--algo", "dqn", "--num-envs", "2", "--set", "num_envs=3"], "num_envs=3"),
])
def test_train_bad_num_envs_flag(tmp_path, capsys, extra, msg):
    assert _train(tmp_path, *extra) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_num_envs_flag_and_resume(tmp_path):
    assert _train(tmp_path, "--algo", "dqn", "--num-envs", "3", "--set",
                  "learning_starts=20", "--checkpoint-every", "30") in (0, None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    summ = rows[-1]
    assert summ["config"]["num_envs"] == 3 and summ["steps"] == 60
    assert cli_main(["train", "--resume", "--steps", "90", "--out", str(tmp_path / "run"),
                     "--no-progress"]) in (0, None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert rows[-1]["steps"] == 90 and rows[-1]["resume"]


# ----------------------------------------------------------------- frame replay streams
def _pong_streams(n_streams, steps, max_steps=40):
    """Interleaved transitions (stream, o, a, r, o', d) of n Pong envs, round robin."""
    envs = [make_env("ALE/Pong-v5", s, max_episode_steps=max_steps) for s in range(n_streams)]
    rng = np.random.default_rng(0)
    obs = [e.reset(seed=s)[0] for s, e in enumerate(envs)]
    out = []
    for _ in range(steps):
        for s, env in enumerate(envs):
            a = int(rng.integers(6))
            nxt, r, term, trunc, _ = env.step(a)
            out.append((s, obs[s].copy(), a, float(r), nxt.copy(), float(term)))
            obs[s] = env.reset()[0] if term or trunc else nxt
    return out


@pytest.fixture(scope="module")
def streams():
    return _pong_streams(4, 30)


@pytest.mark.parametrize("cap,frame_cap", [(1000, None), (40, None), (40, 20)])
def test_frame_replay_interleaved_streams(streams, cap, frame_cap):
    rep = FrameReplay(cap, (4, 84, 84), frame_capacity=frame_cap)
    for s, o, a, r, o2, d in streams:
        rep.add(o, a, r, o2, d, stream=s)
    n = len(rep)
    assert 0 < n <= cap
    got = rep.get(np.arange(n))
    for u, (_s, o, a, r, o2, d) in enumerate(streams[len(streams) - n:]):
        np.testing.assert_array_equal(got["obs"][u], o)
        np.testing.assert_array_equal(got["next_obs"][u], o2)
        assert (got["actions"][u], got["rewards"][u], got["dones"][u]) == (a, r, d)
    if frame_cap is None:
        prev: dict = {}
        starts = 0
        for s, o, *_rest, o2, _d in [(t[0], t[1], t[4], t[5]) for t in streams]:
            starts += s not in prev or not np.array_equal(o, prev[s])
            prev[s] = o2
        assert rep.n_frames == len(streams) + starts  # one frame per step + episode starts
        assert starts < len(streams) / 5


def test_frame_replay_streams_state_round_trip(streams):
    rep = FrameReplay(50, (4, 84, 84), frame_capacity=56)
    for s, o, a, r, o2, d in streams[:80]:
        rep.add(o, a, r, o2, d, stream=s)
    again = FrameReplay(50, (4, 84, 84), frame_capacity=56)
    again.load_state_dict(rep.state_dict())
    for s, o, a, r, o2, d in streams[80:]:  # both continue identically
        rep.add(o, a, r, o2, d, stream=s)
        again.add(o, a, r, o2, d, stream=s)
    assert again.n_frames == rep.n_frames and len(again) == len(rep)
    x, y = rep.get(np.arange(len(rep))), again.get(np.arange(len(again)))
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_dqn_pong_two_envs_uses_streams():
    cfg = DQNConfig.for_env("ALE/Pong-v5", total_steps=40, learning_starts=1000,
                            buffer_size=200, num_envs=2)
    algo = DQN(cfg).learn()
    rep = algo.replay
    assert isinstance(rep, FrameReplay) and set(rep.stream_next) == {1}
    assert len(rep) == 40 and rep.n_frames <= 40 + 2 * 4  # no episode ends in 20 steps


def test_vec_evaluates_when_an_interval_is_crossed():
    algo = DQN(tiny(3, 150, eval_every=50, eval_episodes=1)).learn()
    assert [h[0] for h in algo.selection.history] == [51, 102, 150]


def test_vec_with_a_robust_loss(tmp_path):
    assert _train(tmp_path, "--algo", "dqn", "--num-envs", "2", "--loss", "sa", "--train-eps",
                  "0.01", "--set", "learning_starts=20", "--set", "train_freq=4",
                  "--set", "gradient_steps=1") in (0, None)
    assert (tmp_path / "run" / "agent.pt").exists()


def test_vec_pong_resume_rebuilds_envs_and_streams(tmp_path):
    cfg = DQNConfig.for_env("ALE/Pong-v5", total_steps=40, learning_starts=1000,
                            buffer_size=200, num_envs=2, seed=1)
    full = DQN(cfg).learn()
    part = DQN(cfg).learn(18)
    part.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.resume_caveats == [] and again.replay.stream_next.keys() == {1}
    again.learn()
    assert again.replay.n_frames == full.replay.n_frames
    x, y = again.replay.get(np.arange(40)), full.replay.get(np.arange(40))
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])
    np.testing.assert_array_equal(again._obs, full._obs)
