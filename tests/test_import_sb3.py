"""Stable-Baselines3 import: actions / outputs equal SB3's, margins equal bounds on SB3's
own networks, VecNormalize clip_obs sound by sampling, and the CLI without glue code."""

import json
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bounds
from certrl.agent import Agent
from certrl.cli import main
from certrl.envs import make_env
from certrl.rollout import acting, play

sb3 = pytest.importorskip("stable_baselines3", reason="optional extra: pip install 'certrl[sb3]'")
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

CLIP = 1.5  # small, so that real observations hit it


@pytest.fixture(scope="module")
def dqn_zip(tmp_path_factory):
    """An SB3 DQN trained 2500 steps on CartPole-v1 (about 250 gradient steps)."""
    path = tmp_path_factory.mktemp("sb3") / "dqn.zip"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sb3.DQN("MlpPolicy", "CartPole-v1", learning_starts=1500, seed=0,
                        policy_kwargs={"net_arch": [32, 32]}, device="cpu")
        model.learn(2500)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def ppo_files(tmp_path_factory):
    """An SB3 PPO with VecNormalize(clip_obs=CLIP) on InvertedPendulum-v5 (512 steps)."""
    d = tmp_path_factory.mktemp("sb3ppo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        venv = VecNormalize(make_vec_env("InvertedPendulum-v5", n_envs=1, seed=0),
                            clip_obs=CLIP)
        model = sb3.PPO("MlpPolicy", venv, n_steps=256, batch_size=64, n_epochs=2, seed=0,
                        device="cpu")
        model.learn(512)
    model.save(d / "ppo.zip")
    venv.save(d / "vecnormalize.pkl")
    return d / "ppo.zip", d / "vecnormalize.pkl"


def real_obs(env_id, n=200, seed=0):
    """Raw observations of random-action episodes."""
    env, out = make_env(env_id, seed), []
    obs, _ = env.reset(seed=seed)
    while len(out) < n:
        out.append(obs)
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


def load_vn(path, env_id):
    vn = VecNormalize.load(path, DummyVecEnv([lambda: make_env(env_id, 0)]))
    vn.training = False
    return vn


def test_dqn_outputs_and_actions_equal_sb3(dqn_zip):
    agent = Agent.from_sb3(dqn_zip, env_id="CartPole-v1")
    model = sb3.DQN.load(dqn_zip, device="cpu")
    obs = real_obs("CartPole-v1").astype(np.float32)
    with torch.no_grad():
        theirs = model.q_net(torch.as_tensor(obs))
        ours = agent.net(agent.preprocess(obs))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(agent.predict(obs), model.predict(obs, deterministic=True)[0])
    assert agent.algo == "dqn" and agent.preprocessing == {"kind": "identity"}
    assert agent.metadata["imported_from"]["algo"] == "DQN"


def test_dqn_certified_margins_equal_bounds_on_the_sb3_network(dqn_zip, tmp_path):
    out, rows = tmp_path / "dqn.pt", tmp_path / "cert.jsonl"
    assert main(["import", "sb3", str(dqn_zip), "--env", "CartPole-v1", "--out", str(out)]) == 0
    assert main(["certify", str(out), "--eps", "0.02", "--method", "crown", "--episodes", "1",
                 "--max-steps", "15", "--out", str(rows)]) == 0
    states = [r for r in map(json.loads, rows.read_text().splitlines())
              if r.get("record") == "state"]
    agent = Agent.load(out)
    xs = []
    play(agent, [0], 0, lambda i: acting(agent), 15, lambda i, s: xs.append(s.x))
    x = torch.cat(xs)
    assert len(states) == len(xs) >= 5
    q_net = sb3.DQN.load(dqn_zip, device="cpu").q_net.q_net  # SB3's own nn.Sequential
    labels = q_net(x).argmax(1)
    ml = bounds.margin_lower(q_net, bounds.LpBall(x, 0.02), labels, method="crown")
    for r in sorted(states, key=lambda r: r["step"]):
        assert r["action"] == int(labels[r["step"]])
        want = float(ml[r["step"]].min())
        assert r["margin_lower"] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_ppo_vecnormalize_actions_equal_sb3(ppo_files):
    zip_path, vn_path = ppo_files
    agent = Agent.from_sb3(zip_path, vn_path, env_id="InvertedPendulum-v5")
    model, vn = sb3.PPO.load(zip_path, device="cpu"), load_vn(vn_path, "InvertedPendulum-v5")
    raw = real_obs("InvertedPendulum-v5")
    raw = np.concatenate([raw, raw * 20])  # far out: VecNormalize clips these
    z = vn.normalize_obs(raw)
    assert (np.abs(z) == CLIP).any(), "the test needs observations that hit clip_obs"
    np.testing.assert_allclose(agent.preprocess(raw).numpy(), z.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(agent.predict(raw), model.predict(z, deterministic=True)[0],
                               atol=1e-5)
    assert agent.preprocessing == {"kind": "normalize", "clip": CLIP}
    assert (agent.threat_model.lower, agent.threat_model.upper) == (-CLIP, CLIP)
    with torch.no_grad():  # value head too
        v = model.policy.predict_values(torch.as_tensor(z, dtype=torch.float32))
        torch.testing.assert_close(agent.nets["value"](agent.preprocess(raw)), v, atol=1e-5,
                                   rtol=0)


def sb3_mean_net(model) -> nn.Sequential:
    """SB3's actor (features -> policy_net -> action_net) as one Sequential."""
    p = model.policy
    return nn.Sequential(p.pi_features_extractor.flatten, p.mlp_extractor.policy_net,
                         p.action_net)


def test_ppo_bounds_equal_sb3_and_clip_is_sound_by_sampling(ppo_files):
    zip_path, vn_path = ppo_files
    agent = Agent.from_sb3(zip_path, vn_path, env_id="InvertedPendulum-v5")
    model, vn = sb3.PPO.load(zip_path, device="cpu"), load_vn(vn_path, "InvertedPendulum-v5")
    raw = real_obs("InvertedPendulum-v5", 40) * np.array([1, 1, 8, 8])
    x, eps = agent.preprocess(raw), 0.4
    ball = agent.threat_model.ball(x, eps=eps)
    lb, ub = bounds.compute(agent.bounded_form(), ball, method="crown")
    lb2, ub2 = bounds.compute(sb3_mean_net(model), ball, method="crown")
    torch.testing.assert_close((lb, ub), (lb2, ub2), atol=1e-5, rtol=1e-5)
    # sampling: perturb the *unclipped* normalized observation, then SB3's pipeline clips
    z = (raw - vn.obs_rms.mean) / np.sqrt(vn.obs_rms.var + vn.epsilon)
    rng = np.random.default_rng(0)
    clipped_hits = 0
    for k in range(200):
        d = rng.uniform(-eps, eps, size=z.shape) if k % 2 else \
            eps * rng.choice([-1.0, 1.0], size=z.shape)  # corners too
        zc = np.clip(z + d, -CLIP, CLIP)
        clipped_hits += int((np.abs(z + d) > CLIP).any())
        with torch.no_grad():
            a = sb3_mean_net(model)(torch.as_tensor(zc, dtype=torch.float32))
        assert (a >= lb - 1e-5).all() and (a <= ub + 1e-5).all()
    assert clipped_hits > 0


def test_cli_certify_attack_table_without_glue(ppo_files, dqn_zip, tmp_path):
    zip_path, vn_path = ppo_files
    pt = tmp_path / "ppo.pt"
    assert main(["import", "sb3", str(zip_path), "--vecnormalize", str(vn_path), "--env",
                 "InvertedPendulum-v5", "--out", str(pt)]) == 0
    dq = tmp_path / "dqn.pt"
    assert main(["import", "sb3", str(dqn_zip), "--env", "CartPole-v1", "--out", str(dq)]) == 0
    files = []
    for agent in (pt, dq):
        cert, att = tmp_path / f"{agent.stem}-c.jsonl", tmp_path / f"{agent.stem}-a.jsonl"
        assert main(["certify", str(agent), "--eps", "0.01", "--method", "ibp", "--episodes",
                     "1", "--max-steps", "10", "--out", str(cert)]) == 0
        assert main(["attack", str(agent), "--attack", "pgd", "--eps", "0.01", "--episodes",
                     "1", "--max-steps", "10", "--out", str(att)]) == 0
        files += [str(cert), str(att)]
    table = tmp_path / "t.md"
    assert main(["table", *files, "--out", str(table)]) == 0
    text = table.read_text()
    assert "InvertedPendulum-v5" in text and "CartPole-v1" in text


def test_a2c_discrete_and_nature_cnn_dqn_outputs_equal(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a2c = sb3.A2C("MlpPolicy", "CartPole-v1", seed=1, device="cpu",
                      policy_kwargs={"activation_fn": nn.ReLU, "net_arch": [16]})
    a2c.save(tmp_path / "a2c.zip")
    agent = Agent.from_sb3(tmp_path / "a2c.zip", env_id="CartPole-v1")
    obs = real_obs("CartPole-v1", 50).astype(np.float32)
    with torch.no_grad():
        logits = a2c.policy.action_net(a2c.policy.mlp_extractor.policy_net(torch.as_tensor(obs)))
    torch.testing.assert_close(agent.net(agent.preprocess(obs)), logits, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(agent.predict(obs), a2c.predict(obs, deterministic=True)[0])
    assert agent.algo == "a2c" and agent.nets["policy"].spec["body"]["activation"] == "relu"


def test_nature_cnn(tmp_path, monkeypatch):
    import gymnasium as gym

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "certrl_img_env.py").write_text(IMG_ENV)
    env_id = "certrl_img_env:Img-v0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sb3.DQN("CnnPolicy", gym.make(env_id), buffer_size=10, seed=0, device="cpu")
        model.save(tmp_path / "cnn.zip")
        agent = Agent.from_sb3(tmp_path / "cnn.zip", env_id=env_id)
    obs = np.random.default_rng(0).integers(0, 256, (8, 1, 36, 36), dtype=np.uint8)
    with torch.no_grad():
        theirs = model.q_net(torch.as_tensor(obs).float())  # SB3 divides by 255 itself
    torch.testing.assert_close(agent.net(agent.preprocess(obs)), theirs, atol=1e-5, rtol=0)
    assert agent.preprocessing == {"kind": "pixels", "scale": 255.0}
    assert agent.nets["q"].spec["body"]["kind"] == "cnn"


IMG_ENV = '''
import gymnasium as gym
import numpy as np


class Img(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (1, 36, 36), np.uint8)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, a):
        return self.observation_space.sample(), 1.0, False, False, {}


gym.register("Img-v0", entry_point=Img, max_episode_steps=20)
'''


def test_reader_without_sb3_matches(dqn_zip, ppo_files, monkeypatch):
    from certrl.importers import read_sb3_zip

    with_sb3 = [read_sb3_zip(p) for p in (dqn_zip, ppo_files[0])]
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import now fails
    without = [read_sb3_zip(p) for p in (dqn_zip, ppo_files[0])]
    for a, b in zip(with_sb3, without):
        assert (a.algo, a.activation, a.obs_shape, a.action_kind, a.policy_class) == \
               (b.algo, b.activation, b.obs_shape, b.action_kind, b.policy_class)
        assert a.state_dict.keys() == b.state_dict.keys()
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    with pytest.raises(ValueError, match="needs stable-baselines3"):
        Agent.from_sb3(ppo_files[0], ppo_files[1], env_id="InvertedPendulum-v5")


def test_refusals(dqn_zip, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3.SAC("MlpPolicy", "Pendulum-v1", buffer_size=10, device="cpu").save(tmp_path / "s")
        sb3.PPO("MlpPolicy", "Pendulum-v1", device="cpu", n_steps=64,
                policy_kwargs={"squash_output": True}, use_sde=True).save(tmp_path / "sq")
    with pytest.raises(ValueError, match="SAC models are not supported"):
        Agent.from_sb3(tmp_path / "s.zip", env_id="Pendulum-v1")
    with pytest.raises(ValueError, match="squash_output"):
        Agent.from_sb3(tmp_path / "sq.zip", env_id="Pendulum-v1")
    with pytest.raises(ValueError, match="does not match env"):
        Agent.from_sb3(dqn_zip, env_id="Acrobot-v1")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    out = tmp_path / "x.pt"
    assert main(["import", "sb3", str(bad), "--env", "CartPole-v1", "--out", str(out)]) == 2
    assert "not a Stable-Baselines3 model zip" in capsys.readouterr().err
    assert not out.exists()
    out.write_bytes(b"keep")
    assert main(["import", "sb3", str(dqn_zip), "--env", "CartPole-v1", "--out", str(out)]) == 2
    assert out.read_bytes() == b"keep"
