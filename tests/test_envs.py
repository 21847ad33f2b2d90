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
