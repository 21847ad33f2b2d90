"""Any gymnasium env with a Box observation space: generic defaults with a warning,
module:EnvId ids, space checks, --env-kwargs on import."""

import warnings

import pytest
import torch
from torch import nn

from certrl.agent import Agent
from certrl.cli import main
from certrl.envs import env_family, make_env

TINY = '''
import gymnasium as gym
import numpy as np


class Tiny(gym.Env):
    """A 1-D walk: obs (size,), actions left / right."""

    def __init__(self, size=3):
        self.observation_space = gym.spaces.Box(-10, 10, (size,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.pos = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, self.observation_space.shape)
        return self.pos.astype(np.float32), {}

    def step(self, a):
        self.pos = self.pos + (0.1 if a else -0.1)
        done = bool(np.abs(self.pos).max() > 2)
        return self.pos.astype(np.float32), 1.0, done, False, {}


class DictObs(Tiny):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (2,))})


gym.register("TinyWalk-v0", entry_point=Tiny, max_episode_steps=30)
gym.register("TinyDict-v0", entry_point=DictObs, max_episode_steps=30)
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    (tmp_path / "certrl_tiny_env.py").write_text(TINY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "certrl_tiny_env:TinyWalk-v0"


def test_unknown_registered_env_gets_generic_defaults_with_warning(tiny):
    with pytest.warns(UserWarning, match="generic defaults"):
        assert env_family(tiny) == "classic"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per id
        assert env_family(tiny) == "classic"
    env = make_env(tiny, seed=0, size=5)
    assert env.observation_space.shape == (5,)
    env.close()


def test_registered_gymnasium_env_outside_families():
    with pytest.warns(UserWarning, match="generic defaults"):
        assert env_family("CliffWalking-v1") == "classic"
    with pytest.raises(ValueError, match="not supported: observation space"):
        make_env("CliffWalking-v1")  # Discrete observations


def test_unregistered_and_unsupported(tiny):
    with pytest.raises(ValueError, match="unknown or unsupported env"):
        env_family("NoSuchEnv-v9")
    with pytest.raises(ValueError, match="unknown or unsupported env"):
        env_family("no_such_module_xyz:Env-v0")
    with pytest.raises(ValueError, match="not a Box"):
        make_env("certrl_tiny_env:TinyDict-v0")
    with pytest.raises(ValueError, match="cannot make env"):
        make_env(tiny, bad_kwarg=1)
    assert env_family("module_x:Hopper-v5".split(":")[-1]) == "mujoco"


def test_import_with_env_kwargs_and_certify_a_user_env(tiny, tmp_path):
    src = tmp_path / "tiny_net.py"
    src.write_text("from torch import nn\n\ndef make():\n"
                   "    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))\n")
    out = tmp_path / "a.pt"
    args = ["import", "module", f"{src}:make", "--env", tiny, "--out", str(out)]
    assert main(args) == 2 and not out.exists()  # default size 3 does not fit Linear(5, .)
    assert main(args + ["--env-kwargs", '{"size": 5}']) == 0
    agent = Agent.load(out)
    assert agent.config["env_kwargs"] == {"size": 5} and agent.obs_shape == (5,)
    assert main(["import", "module", f"{src}:make", "--env", tiny, "--out", str(out),
                 "--env-kwargs", "[1]", "--force"]) == 2  # not a JSON object


def test_from_module_in_user_env_certifies(tiny, tmp_path):
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    agent = Agent.from_module(net, tiny)
    agent.save(tmp_path / "t.pt")
    res = tmp_path / "c.jsonl"
    assert main(["certify", str(tmp_path / "t.pt"), "--eps", "0.05", "--method", "crown",
                 "--episodes", "1", "--max-steps", "5", "--out", str(res)]) == 0
    assert res.read_text().count('"record": "state"') == 5
    torch.testing.assert_close(Agent.load(tmp_path / "t.pt").net(torch.ones(1, 3)),
                               net(torch.ones(1, 3)))


def test_episodes_use_the_env_kwargs_the_agent_recorded():
    """An agent trained / imported with env kwargs plays in that env (here a time limit of
    7 steps) unless the caller passes others."""
    import certrl
    from certrl.certify import rollout
    from certrl.evaluate import evaluate

    agent = certrl.load("cartpole-dqn-vanilla")
    agent.config["env_kwargs"] = {"max_episode_steps": 7}
    ep = rollout(agent, 1, seed=0)[0]
    assert (ep.steps, ep.truncated) == (7, False)  # the env's own time limit
    assert evaluate(agent, 2, 0).lengths == [7, 7]
    assert evaluate(agent, 1, 0, env_kwargs={"max_episode_steps": 9}).lengths == [9]
