import numpy as np
import pytest
import torch

from certrl.algos import DQN, PPO, DQNConfig, PPOConfig
from certrl.evaluate import evaluate
from certrl.losses import RobustLoss


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_dqn_cartpole_smoke_and_epsilon():
    algo = DQN(DQNConfig(total_steps=300, learning_starts=100, eps_fraction=0.5))
    assert algo.epsilon(0) == 1.0 and algo.epsilon(150) == pytest.approx(0.02)
    algo.learn()
    assert algo.global_step == 300 and algo.episodes
    assert "td_loss" in algo.logs


def test_dqn_atari_smoke():
    cfg = DQNConfig.for_env("ALE/Pong-v5", total_steps=40, buffer_size=64, batch_size=4,
                            learning_starts=20, dueling=True)
    algo = DQN(cfg).learn()
    agent = algo.agent
    assert agent.obs_shape == (4, 84, 84) and agent.preprocessing["kind"] == "pixels"
    assert agent.threat_model.lower == 0.0 and agent.threat_model.upper == 1.0
    x = agent.preprocess(algo.buf["obs"][:2])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(agent.bounded_form()(x), agent.forward(x), rtol=1e-5, atol=1e-5)


def test_ppo_mujoco_smoke_normalization_folds():
    cfg = PPOConfig.for_env("Hopper-v5", total_steps=128, num_envs=2, num_steps=32,
                            num_minibatches=2, update_epochs=1)
    algo = PPO(cfg).learn()
    agent = algo.agent
    assert agent.action_space_kind == "continuous" and agent.obs_rms is not None
    assert agent.threat_model.space.startswith("running-mean/std")
    raw = np.random.default_rng(0).normal(size=(4, 11))
    x = agent.preprocess(raw)
    np.testing.assert_allclose(x.numpy(), (raw - agent.obs_rms.mean) / agent.obs_rms.std,
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(agent.bounded_form()(x), agent.forward(x))
    a = agent.predict(raw)
    assert a.shape == (4, 3) and np.all(np.abs(a) <= 1.0)


def test_ppo_discrete_smoke():
    cfg = PPOConfig.for_env("CartPole-v1", total_steps=256, num_envs=2, num_steps=64)
    algo = PPO(cfg).learn()
    assert algo.global_step == 256 and algo.agent.action_space_kind == "discrete"
    assert algo.agent.preprocessing["kind"] == "identity"


def test_dqn_rejects_continuous():
    with pytest.raises(ValueError, match="discrete"):
        DQN(DQNConfig(env_id="Pendulum-v1"))


def test_determinism_same_seed_same_actions():
    def run():
        algo = DQN(DQNConfig(total_steps=400, learning_starts=100, seed=3))
        algo.learn()
        return algo
    a, b = run(), run()
    assert [e["return"] for e in a.episodes] == [e["return"] for e in b.episodes]
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(a.agent.predict(obs), b.agent.predict(obs))
    ra = evaluate(a.agent, 2, seed=5)
    rb = evaluate(b.agent, 2, seed=5)
    assert ra.returns == rb.returns


class CountingLoss(RobustLoss):
    name = "counting"

    def __init__(self):
        self.calls = 0
        self.keys = set()

    def __call__(self, batch, nets, threat, step):
        self.calls += 1
        self.keys |= set(batch) | {f"net:{k}" for k in nets}
        q = batch.get("q", batch.get("mean"))
        return 0.0 * q.sum(), {"count": float(self.calls)}


def test_robust_loss_hook_dqn_and_ppo():
    rl = CountingLoss()
    algo = DQN(DQNConfig(total_steps=120, learning_starts=100, robust_loss=rl,
                         threat={"eps": 0.01}))
    algo.learn()
    assert rl.calls == 20
    assert {"obs", "actions", "rewards", "next_obs", "dones", "td_target", "q", "net:q",
            "net:target"} <= rl.keys
    assert algo.agent.loss_name == "counting" and algo.agent.threat_model.eps == 0.01
    assert algo.agent.config["robust_loss"] == {"name": "counting"}
    rl2 = CountingLoss()
    PPO(PPOConfig.for_env("Pendulum-v1", total_steps=64, num_envs=1, num_steps=64,
                          num_minibatches=2, update_epochs=1, robust_loss=rl2)).learn()
    assert rl2.calls == 2
    assert {"obs", "actions", "logprobs", "advantages", "returns", "mean", "net:policy",
            "net:value"} <= rl2.keys


def test_resume_continues(tmp_path):
    algo = DQN(DQNConfig(total_steps=300, learning_starts=50, seed=2))
    algo.learn(150)
    algo.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.global_step == 150 and len(again.episodes) == len(algo.episodes)
    assert again.buf_pos == algo.buf_pos
    np.testing.assert_array_equal(again.buf["obs"][:150], algo.buf["obs"][:150])
    again.learn()
    assert again.global_step == 300
    p = PPO(PPOConfig.for_env("Pendulum-v1", total_steps=128, num_envs=1, num_steps=64,
                              num_minibatches=2, update_epochs=1))
    p.learn(64)
    p.save(tmp_path / "ppo.pt")
    p2 = PPO.resume(tmp_path / "ppo.pt")
    assert p2.global_step == 64 and p2.agent.obs_rms is None
    p2.learn()
    assert p2.global_step == 128


@pytest.mark.slow
def test_dqn_solves_cartpole():
    algo = DQN(DQNConfig(total_steps=50_000, seed=0)).learn()
    res = evaluate(algo.agent, 5, seed=100)
    assert res.mean >= 475


@pytest.mark.slow
def test_ppo_learns_inverted_pendulum():
    cfg = PPOConfig.for_env("InvertedPendulum-v5", total_steps=60_000, seed=0)
    algo = PPO(cfg).learn()
    res = evaluate(algo.agent, 5, seed=100)
    assert res.mean >= 500


def test_classic_control_env_defaults_and_overrides():
    cp = DQNConfig.for_env("CartPole-v1")
    assert (cp.train_freq, cp.gradient_steps, cp.target_update_interval) == (256, 128, 10)
    assert DQNConfig.for_env("CartPole-v1", lr=1e-4).lr == 1e-4  # --set wins
    ac = DQNConfig.for_env("Acrobot-v1")
    assert (ac.batch_size, ac.eps_end) == (128, 0.1)
    assert DQNConfig.for_env("MountainCar-v0").train_freq == DQNConfig().train_freq
