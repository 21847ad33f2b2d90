import numpy as np
import pytest
import torch

from certrl.algos import DQN, PPO, DQNConfig, PPOConfig
from certrl.evaluate import evaluate
from certrl.losses import RobustLoss


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def test_dqn_cartpole_smoke_and_epsilon():
    algo = DQN(DQNConfig(total_steps=300, learning_starts=100, exploration_fraction=0.5))
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

    def __call__(self, ctx):
        self.calls += 1
        self.keys |= set(ctx.batch) | {f"net:{k}" for k in ctx.nets}
        self.settings = (ctx.gamma, ctx.huber_delta, ctx.clip_coef)
        q = ctx.batch.get("q", ctx.batch.get("mean"))
        return 0.0 * q.sum(), {"count": float(self.calls)}


def test_robust_loss_hook_dqn_and_ppo():
    rl = CountingLoss()
    algo = DQN(DQNConfig(total_steps=120, learning_starts=100, threat={"eps": 0.01},
                         huber_delta=2.0), robust_loss=rl)
    algo.learn()
    assert rl.calls == 20 and rl.settings == (0.99, 2.0, None)
    assert algo.logs["count"] == 20.0  # the hook's returned logs reach the algorithm
    assert {"obs", "actions", "rewards", "next_obs", "dones", "td_target", "q", "net:q",
            "net:target"} <= rl.keys
    assert algo.agent.loss_name == "counting" and algo.agent.threat_model.eps == 0.01
    assert algo.agent.config["robust_loss"] == {"name": "counting"}
    rl2 = CountingLoss()
    PPO(PPOConfig.for_env("Pendulum-v1", total_steps=64, num_envs=1, num_steps=64,
                          num_minibatches=2, update_epochs=1), robust_loss=rl2).learn()
    assert rl2.calls == 2 and rl2.settings == (0.99, None, 0.2)
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
    assert (ac.batch_size, ac.exploration_end) == (128, 0.1)
    assert DQNConfig.for_env("Acrobot-v1", eps_end=0.3).exploration_end == 0.3  # old name
    assert DQNConfig.for_env("MountainCar-v0").train_freq == DQNConfig().train_freq


@pytest.mark.parametrize("cls,field,value", [
    (DQNConfig, "batch_size", 0), (DQNConfig, "buffer_size", -1), (DQNConfig, "total_steps", 0),
    (DQNConfig, "train_freq", 0), (DQNConfig, "gradient_steps", 0),
    (DQNConfig, "target_update_interval", 0), (DQNConfig, "seed", -1),
    (DQNConfig, "learning_starts", -5), (DQNConfig, "lr", 0.0), (DQNConfig, "lr", float("nan")),
    (DQNConfig, "gamma", 0.0), (DQNConfig, "gamma", 1.01), (DQNConfig, "tau", 0.0),
    (DQNConfig, "exploration_end", -0.1), (DQNConfig, "exploration_fraction", 1.5),
    (DQNConfig, "batch_size", 2.5),
    (DQNConfig, "batch_size", True), (DQNConfig, "hidden", (64, 0)),
    (PPOConfig, "num_envs", 0), (PPOConfig, "num_steps", 0), (PPOConfig, "num_minibatches", 0),
    (PPOConfig, "update_epochs", 0), (PPOConfig, "lr", -3e-4), (PPOConfig, "gae_lambda", 1.2),
    (PPOConfig, "clip_coef", -0.2), (PPOConfig, "target_kl", 0.0), (PPOConfig, "gamma", 0.0),
    (PPOConfig, "max_grad_norm", float("inf")),
])
def test_config_validation_names_field_and_value(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must .*{value!r}"):
        cls(**{field: value})


def test_config_validation_accepts_edges():
    DQNConfig(gamma=1.0, tau=1.0, exploration_fraction=0.0, learning_starts=0, seed=0)
    PPOConfig(gamma=1.0, gae_lambda=0.0, ent_coef=0.0, target_kl=None, clip_coef=0.0)
    DQNConfig.for_env("CartPole-v1")
    PPOConfig.for_env("ALE/Pong-v5")


def _weights(algo):
    return {f"{k}.{n}": t.clone() for k, net in algo.agent_obj.nets.items()
            for n, t in net.state_dict().items()}


def test_resume_mid_episode_is_exact_python_api(tmp_path):
    """DQN saved mid-episode (the env is rebuilt by replay) and PPO mid-rollout-span."""
    cfg = dict(total_steps=700, learning_starts=200, train_freq=4, seed=3)
    full = DQN(DQNConfig(**cfg)).learn()
    part = DQN(DQNConfig(**cfg)).learn(435)
    assert not part.at_episode_start  # mid-episode
    part.save(tmp_path / "d.pt")
    again = DQN.resume(tmp_path / "d.pt").learn()
    assert again.resume_caveats == [] and again.episodes == full.episodes
    a, b = _weights(full), _weights(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pcfg = PPOConfig.for_env("CartPole-v1", total_steps=512, num_envs=2, num_steps=64, seed=2)
    pfull = PPO(pcfg).learn()
    ppart = PPO(PPOConfig.for_env("CartPole-v1", total_steps=512, num_envs=2, num_steps=64,
                                  seed=2)).learn(256)
    assert (ppart.train_state()["ep_len"] > 0).any()
    ppart.save(tmp_path / "p.pt")
    pagain = PPO.resume(tmp_path / "p.pt").learn()
    a, b = _weights(pfull), _weights(pagain)
    assert all(torch.equal(a[k], b[k]) for k in a) and pagain.episodes == pfull.episodes


def test_resume_replay_divergence_is_reported(tmp_path):
    algo = DQN(DQNConfig(total_steps=300, learning_starts=50, seed=2)).learn(130)
    algo.save(tmp_path / "d.pt")
    from certrl.io import load_checkpoint
    data = load_checkpoint(tmp_path / "d.pt")
    data["train_state"]["obs"] = data["train_state"]["obs"] + 1.0  # not what replay gives
    with pytest.warns(RuntimeWarning, match="did not rebuild"):
        again = DQN.resume(data)
    assert again.resume_caveats and "fresh episode" in again.resume_caveats[0]
    again.learn()
    assert again.global_step == 300


def test_rng_capture_restores_every_generator():
    import json
    import random

    from certrl.algos.base import capture_rngs, restore_rngs
    gen = np.random.default_rng(5)
    st = capture_rngs(gen)
    json.dumps({k: v for k, v in st.items() if k != "torch"})
    draws = (torch.rand(3), np.random.rand(3), random.random(), gen.random(3))
    restore_rngs({"rng": st}, gen)
    again = (torch.rand(3), np.random.rand(3), random.random(), gen.random(3))
    assert torch.equal(draws[0], again[0]) and draws[2] == again[2]
    np.testing.assert_array_equal(draws[1], again[1])
    np.testing.assert_array_equal(draws[3], again[3])


def test_run_group_depends_on_everything_but_the_seed():
    a = DQN(DQNConfig(total_steps=10, seed=0))
    assert a.agent.metadata["run_group"] == a.run_group
    assert DQN(DQNConfig(total_steps=10, seed=9)).run_group == a.run_group
    assert DQN(DQNConfig(total_steps=11, seed=0)).run_group != a.run_group
    assert DQN(DQNConfig(total_steps=10, lr=2e-3)).run_group != a.run_group
    assert DQN(DQNConfig(total_steps=10, threat={"eps": 0.1})).run_group != a.run_group


def test_learn_callback_runs_per_step_or_update_and_false_stops():
    seen = []
    algo = DQN(DQNConfig(total_steps=300, learning_starts=50, seed=1))
    algo.learn(callback=lambda a: seen.append(a.global_step))
    assert seen == list(range(1, 301))
    stop = DQN(DQNConfig(total_steps=300, learning_starts=50, seed=1))
    stop.learn(callback=lambda a: a.global_step < 120)
    assert stop.global_step == 120
    steps = []
    ppo = PPO(PPOConfig.for_env("CartPole-v1", total_steps=256, num_envs=2, num_steps=32))
    ppo.learn(callback=lambda a: steps.append(a.global_step) or len(steps) < 2)
    assert steps == [64, 128] and ppo.global_step == 128


OLD_DQN_CONFIG = {  # a config as checkpoints written before the exploration_* rename hold it
    "env_id": "CartPole-v1", "total_steps": 300, "seed": 4, "lr": 1e-3, "buffer_size": 1000,
    "batch_size": 32, "gamma": 0.99, "learning_starts": 50, "train_freq": 1,
    "gradient_steps": 1, "target_update_interval": 100, "tau": 1.0, "eps_start": 0.9,
    "eps_end": 0.05, "eps_fraction": 0.3, "double": True, "dueling": False,
    "hidden": [16, 16], "huber_delta": 1.0, "max_grad_norm": 10.0, "threat": None,
    "env_kwargs": {}, "q_spec": None, "robust_loss": None,
}


def test_old_config_names_load_and_keep_run_group(tmp_path):
    from certrl.algos.base import config_from_dict, run_group, split_config

    fields, loss = split_config(OLD_DQN_CONFIG)
    cfg = config_from_dict(DQNConfig, fields)
    assert (cfg.exploration_start, cfg.exploration_end, cfg.exploration_fraction) == \
        (0.9, 0.05, 0.3) and loss is None
    # the group of an old run is the hash of its stored config (old names) without the seed
    import hashlib
    import json
    threat = {"eps": 0.0}
    old = {k: v for k, v in OLD_DQN_CONFIG.items() if k != "seed"}
    text = json.dumps({"algo": "dqn", "env_id": "CartPole-v1", "config": old,
                       "threat_model": threat}, sort_keys=True, separators=(",", ":"))
    assert run_group("dqn", cfg, threat) == hashlib.sha256(text.encode()).hexdigest()
    assert run_group("dqn", DQNConfig(**{**cfg.__dict__, "exploration_end": 0.06}),
                     threat) != run_group("dqn", cfg, threat)
    # a checkpoint whose config uses the old names resumes with the same exploration
    algo = DQN(cfg).learn(100)
    algo.save(tmp_path / "d.pt")
    from certrl.io import load_checkpoint
    data = load_checkpoint(tmp_path / "d.pt")
    data["config"] = {**OLD_DQN_CONFIG}
    again = DQN.resume(data)
    assert again.cfg == cfg and again.resume_caveats == []
    assert again.epsilon(50) == algo.epsilon(50)


def test_set_accepts_old_exploration_names():
    from certrl.algos.base import coerce_field

    assert coerce_field(DQNConfig, "eps_end", "0.2") == 0.2
    with pytest.raises(ValueError, match="no settable field"):
        coerce_field(DQNConfig, "LEGACY_NAMES", "{}")


def test_shipped_agents_configs_build_and_keep_their_run_group():
    """The shipped checkpoints rebuild their algorithm from the stored config with the loss
    beside it, take their weights back, and hash to their group: the group recorded at
    training time (fine-tunes rebuilt from the shipped agent they were fine-tuned from),
    or for legacy checkpoints the hash their stored config had."""
    import glob
    import hashlib
    import json

    import certrl
    from certrl.algos.base import config_from_dict, split_config
    from certrl.io import load_checkpoint
    from certrl.losses import loss_from_config

    paths = sorted(glob.glob("certrl/agents/*.pt"))
    assert paths
    data = {p: load_checkpoint(p) for p in paths}
    by_group = {(d.get("metadata") or {}).get("run_group"): p for p, d in data.items()}
    for p, d in data.items():
        meta = d.get("metadata") or {}
        fields, loss = split_config(d["config"])
        cfg = config_from_dict(DQNConfig, fields)
        init = meta.get("init_agent")
        init_path = by_group[init["run_group"]] if init else None  # KeyError: not shipped
        algo = DQN(cfg, robust_loss=loss_from_config(loss), init_agent=init_path)
        algo.load_weights(d, p)
        x = torch.randn(5, 4)
        torch.testing.assert_close(algo.agent_obj.forward(x), certrl.load(p).forward(x))
        if "run_group" in meta:  # current format
            assert algo.run_group == meta["run_group"], p
        else:  # legacy format: the hash of the stored config itself
            tm = algo.agent_obj.threat_model.to_dict()
            old = {k: v for k, v in d["config"].items() if k != "seed"}
            text = json.dumps({"algo": "dqn", "env_id": cfg.env_id, "config": old,
                               "threat_model": tm}, sort_keys=True, separators=(",", ":"))
            assert algo.run_group == hashlib.sha256(text.encode()).hexdigest()
        built = algo.training_config()["robust_loss"]
        if loss and loss["schedule"]["total_steps"] == 0:  # stored before setup() fixed it
            assert built["schedule"].pop("total_steps") == cfg.total_steps
            loss = {**loss, "schedule": {k: v for k, v in loss["schedule"].items()
                                         if k != "total_steps"}}
        assert built == loss
