"""Plain PyTorch modules as agents: conversion to certrl specs (native engine) or an
auto_LiRPA-bounded ExternalNet; the CLI `certrl import module`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bounds
from certrl.agent import Agent
from certrl.cli import main
from certrl.importers import ExternalNet, NotSavableError


class FunctionalQ(nn.Module):
    """F.relu in forward: not an nn.Sequential."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(F.relu(self.fc1(x)))))


class Gated(nn.Module):
    """A residual sum: no certrl network spec."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 16), nn.Linear(4, 16), nn.Linear(16, 2)

    def forward(self, x):
        return self.out(F.relu(self.a(x)) + F.relu(self.b(x)))


def obs(n=64):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(1)) * 0.5


def test_functional_module_converts_to_native_spec_and_saves(tmp_path):
    torch.manual_seed(0)
    net = FunctionalQ()
    agent = Agent.from_module(net, "CartPole-v1", preprocess="identity", kind="q")
    assert agent.metadata["bound_backend"] == "native"
    assert agent.nets["q"].spec["body"]["hidden"] == [32, 32]
    x = obs()
    torch.testing.assert_close(agent.net(x), net(x), atol=1e-6, rtol=0)
    assert bounds.unsupported_layers(agent.bounded_form()) == []
    agent.save(tmp_path / "a.pt")
    again = Agent.load(tmp_path / "a.pt")
    torch.testing.assert_close(again.net(x), net(x), atol=1e-6, rtol=0)


def test_unparseable_module_uses_lirpa_and_is_sound(tmp_path):
    torch.manual_seed(0)
    net = Gated()
    agent = Agent.from_module(net, "CartPole-v1")
    assert isinstance(agent.net, ExternalNet)
    assert agent.metadata["bound_backend"] == "lirpa"
    x, eps = obs(8), 0.05
    labels = agent.net(x).argmax(1)
    ball = agent.threat_model.ball(x, eps=eps)
    auto = bounds.margin_lower(agent.bounded_form(), ball, labels, method="crown",
                               backend="auto")
    lirpa = bounds.margin_lower(net, ball, labels, method="crown", backend="lirpa")
    torch.testing.assert_close(auto, lirpa)
    with pytest.raises(bounds.UnsupportedLayerError):
        bounds.margin_lower(agent.bounded_form(), ball, labels, method="crown",
                            backend="native")
    lb, ub = bounds.compute(agent.bounded_form(), ball, method="crown", backend="auto")
    g = torch.Generator().manual_seed(2)
    for _ in range(100):  # soundness by sampling
        xs = x + eps * (2 * torch.rand(x.shape, generator=g) - 1)
        with torch.no_grad():
            y = net(xs)
        assert (y >= lb - 1e-5).all() and (y <= ub + 1e-5).all()
    with pytest.raises(NotSavableError, match="cannot be saved"):
        agent.save(tmp_path / "g.pt")
    assert not (tmp_path / "g.pt").exists()


def test_policy_kind_gaussian_and_errors():
    mean = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    agent = Agent.from_module(mean, "Pendulum-v1", kind="policy", log_std=[-0.5])
    assert agent.nets["policy"].spec["type"] == "gaussian_policy"
    x = torch.randn(5, 3)
    torch.testing.assert_close(agent.net(x), mean(x))
    assert float(agent.net.log_std) == -0.5
    with pytest.raises(ValueError, match="Discrete"):
        Agent.from_module(mean, "Pendulum-v1", kind="q")
    with pytest.raises(ValueError, match="output width"):
        Agent.from_module(nn.Linear(4, 3), "CartPole-v1")
    with pytest.raises(ValueError, match="preprocessing kind"):
        Agent.from_module(nn.Linear(4, 2), "CartPole-v1", preprocess="scaled")


def test_normalize_preprocess_dict():
    net = nn.Sequential(nn.Linear(4, 2))
    pre = {"kind": "normalize", "mean": [0.0, 1.0, 0.0, 0.0], "std": [1.0, 2.0, 1.0, 1.0],
           "clip": 3.0}
    agent = Agent.from_module(net, "CartPole-v1", preprocess=pre)
    raw = np.array([[0.0, 11.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(agent.preprocess(raw).numpy(), [[0.0, 3.0, 0.0, 0.0]])
    assert (agent.threat_model.lower, agent.threat_model.upper) == (-3.0, 3.0)


CLEANRL = '''
import numpy as np
import torch.nn.functional as F
from torch import nn


class QNetwork(nn.Module):  # CleanRL dqn.py's network, with F.relu as a twist
    def __init__(self, env):
        super().__init__()
        n = int(np.array(env.single_observation_space.shape).prod())
        self.fc1 = nn.Linear(n, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, env.single_action_space.n)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        return self.out(F.relu(self.a(x)) * 0.5 + F.relu(self.b(x)))
'''


def test_cli_import_module_cleanrl_style(tmp_path, capsys):
    import gymnasium as gym

    src = tmp_path / "my_cleanrl.py"
    src.write_text(CLEANRL)
    ns: dict = {}
    exec(CLEANRL, ns)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    torch.manual_seed(3)
    net = ns["QNetwork"](envs)
    torch.save(net.state_dict(), tmp_path / "dqn.cleanrl_model")
    out = tmp_path / "agent.pt"
    assert main(["import", "module", f"{src}:QNetwork", "--state-dict",
                 str(tmp_path / "dqn.cleanrl_model"), "--env", "CartPole-v1",
                 "--out", str(out)]) == 0
    agent = Agent.load(out)
    x = obs()
    torch.testing.assert_close(agent.net(x), net(x), atol=1e-6, rtol=0)
    res = tmp_path / "c.jsonl"
    assert main(["certify", str(out), "--eps", "0.01", "--method", "crown", "--episodes", "1",
                 "--max-steps", "5", "--out", str(res)]) == 0
    bad = tmp_path / "bad.pt"
    assert main(["import", "module", f"{src}:Gated", "--env", "CartPole-v1", "--out",
                 str(bad)]) == 2
    assert "cannot be saved" in capsys.readouterr().err and not bad.exists()
    assert main(["import", "module", f"{src}:QNetwork", "--state-dict",
                 str(tmp_path / "nope.pt"), "--env", "CartPole-v1", "--out", str(bad)]) == 2
    assert main(["import", "module", "no_colon", "--env", "CartPole-v1", "--out",
                 str(bad)]) == 2
    assert not bad.exists()


def test_cli_import_onnx(tmp_path, frozen_cartpole):
    pytest.importorskip("onnx", reason="ONNX import needs the onnx package")
    from certrl.onnx_agent import export_onnx

    export_onnx(frozen_cartpole, tmp_path / "q.onnx")
    out = tmp_path / "q.pt"
    assert main(["import", "onnx", str(tmp_path / "q.onnx"), "--env", "CartPole-v1",
                 "--out", str(out)]) == 0
    x = obs()
    agent = Agent.load(out)
    torch.testing.assert_close(agent.net(agent.preprocess(x.numpy())),
                               frozen_cartpole.net(frozen_cartpole.preprocess(x.numpy())),
                               atol=1e-5, rtol=1e-5)
