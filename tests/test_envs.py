import numpy as np
import pytest

from certrl.envs import RunningMeanStd, env_family, make_env, make_vec_env


@pytest.mark.parametrize("env_id,family,shape", [
    ("CartPole-v1", "classic", (4,)),
    ("Pendulum-v1", "classic", (3,)),
    ("Acrobot-v1", "classic", (6,)),
    ("MountainCar-v0", "classic", (2,)),
    ("Hopper-v5", "mujoco", (11,)),
    ("InvertedPendulum-v5", "mujoco", (4,)),
    ("ALE/Pong-v5", "atari", (4, 84, 84)),
])
def test_make_env_families(env_id, family, shape):
    assert env_family(env_id) == family
    env = make_env(env_id, seed=3)
    obs, _ = env.reset(seed=3)
    assert obs.shape == shape
    if family == "atari":
        assert obs.dtype == np.uint8
    obs2, *_ = env.step(env.action_space.sample())
    assert obs2.shape == shape
    env.close()


def test_unknown_env():
    with pytest.raises(ValueError, match="unknown or unsupported env"):
        env_family("NoSuchEnv-v0")
    with pytest.raises(ValueError):
        make_env("NoSuchEnv-v0")


def test_seeded_reset_is_deterministic():
    a, _ = make_env("CartPole-v1", 5).reset(seed=5)
    b, _ = make_env("CartPole-v1", 5).reset(seed=5)
    np.testing.assert_array_equal(a, b)


def test_vec_env():
    envs = make_vec_env("CartPole-v1", 3, seed=0)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (3, 4)
    envs.close()


def test_running_mean_std_matches_numpy_and_freezes():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 5))
    rms = RunningMeanStd((5,))
    for chunk in np.split(data, 10):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-3)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-3)
    rms.freeze()
    rms.update(data + 100)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-3)
    rms2 = RunningMeanStd.from_state_dict(rms.state_dict())
    np.testing.assert_allclose(rms2.normalize(data[:3]), rms.normalize(data[:3]))
    assert rms2.frozen
    with pytest.raises(ValueError):
        RunningMeanStd((4,)).load_state_dict(rms.state_dict())


def test_episode_seeding_resets_from_run_seed_and_episode_and_replays():
    from certrl.envs import EnvReplayError, episode_seed
    env = make_env("CartPole-v1", 0, episode_seeds=(4, 1))
    first, _ = env.reset()
    assert env.episode == 0
    ref, _ = make_env("CartPole-v1", 0).reset(seed=episode_seed(4, 1, 0))
    np.testing.assert_array_equal(first, ref)
    second, _ = env.reset()
    other = make_env("CartPole-v1", 123, episode_seeds=(4, 1))  # build seed does not matter
    other.reset()
    np.testing.assert_array_equal(other.reset()[0], second)
    for a in (0, 1, 1, 0, 1):
        obs, *_ = env.step(a)
    st = env.state()
    assert st["episode"] == 1 and len(st["actions"]) == 5
    fresh = make_env("CartPole-v1", 0, episode_seeds=(0, 0))
    np.testing.assert_array_equal(fresh.restore(st), obs)
    assert fresh.episode == 1 and len(fresh.actions) == 5
    np.testing.assert_array_equal(fresh.step(1)[0], env.step(1)[0])
    with pytest.raises(EnvReplayError):  # 600 pushes to one side end the episode
        fresh.restore({**st, "actions": np.ones(600, dtype=np.int64)})
    assert episode_seed(1, 0, 2) != episode_seed(1, 0, 3) != episode_seed(2, 0, 2)


def test_episode_seeding_mujoco_replay_is_exact():
    env = make_env("InvertedPendulum-v5", 0, episode_seeds=(1, 0))
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, *_ = env.step(rng.uniform(-0.05, 0.05, size=1).astype(np.float32))
    again = make_env("InvertedPendulum-v5", 0, episode_seeds=(1, 0))
    np.testing.assert_array_equal(again.restore(env.state()), obs)


def test_vec_env_episode_seeds_per_sub_env():
    envs = make_vec_env("CartPole-v1", 2, seed=3, episode_seeds=True)
    obs, _ = envs.reset()
    assert [e.key for e in envs.envs] == [(3, 0), (3, 1)]
    from certrl.envs import episode_seed
    np.testing.assert_array_equal(obs[1], make_env("CartPole-v1").reset(
        seed=episode_seed(3, 1, 0))[0])


def test_episode_seeding_atari_sticky_actions_replay_is_exact():
    env = make_env("ALE/Pong-v5", 0, episode_seeds=(2, 0))  # sticky actions on (p = 0.25)
    env.reset()
    rng = np.random.default_rng(1)
    for _ in range(40):
        obs, *_ = env.step(int(rng.integers(6)))
    again = make_env("ALE/Pong-v5", 0, episode_seeds=(2, 0))
    np.testing.assert_array_equal(again.restore(env.state()), obs)
    np.testing.assert_array_equal(again.step(3)[0], env.step(3)[0])
