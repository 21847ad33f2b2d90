"""Robust losses inside DQN / PPO: gradients reach every parameter, short runs, CLI, checkpoints."""

import copy
import json

import pytest
import torch

import certrl
from certrl.algos import DQN, PPO, DQNConfig, PPOConfig
from certrl.cli import main
from certrl.losses import make_loss, sortnet_q_spec

DQN_LOSSES = [("sa", "crown-ibp"), ("sa", "pgd"), ("radial", "ibp"), ("wocar", "ibp"),
              ("car", "ibp"), ("car", "pgd"), ("sortnet", None)]
PPO_LOSSES = [("sa", "ibp"), ("radial", "crown-ibp"), ("wocar", "ibp"), ("car", "pgd"),
              ("car", "ibp")]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _dqn(name, solver, steps=300, **kw):
    loss = make_loss("dqn", name, solver=solver, pgd_steps=3, warmup=0.3, ramp=0.3)
    extra = {"q_spec": sortnet_q_spec(hidden=16, depth=2)} if name == "sortnet" else {}
    cfg = DQNConfig(total_steps=steps, learning_starts=64, batch_size=16, hidden=(16, 16),
                    threat={"eps": 0.05}, **extra, **kw)
    return DQN(cfg, robust_loss=loss)


@pytest.mark.parametrize("name,solver", DQN_LOSSES)
def test_dqn_loss_gradients_reach_every_parameter_and_short_run(name, solver):
    algo = _dqn(name, solver)
    algo.learn()  # a short run through warm-up, ramp and constant eps
    assert algo.logs["train_eps"] == pytest.approx(0.05)
    assert all(torch.isfinite(p).all() for n in algo.agent.nets.values() for p in n.parameters())
    logs = algo.update()  # one more step at full eps; grads stay on the parameters
    assert all(v == v for v in logs.values())  # no NaN
    for key, net in algo.agent.nets.items():
        for pname, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{key}.{pname}"
            assert float(p.grad.abs().sum()) > 0, f"no gradient reaches {key}.{pname}"
    assert algo.agent.loss_name == name and algo.agent.threat_model.eps == 0.05


@pytest.mark.parametrize("name,solver", PPO_LOSSES)
def test_ppo_loss_gradients_and_short_run(name, solver):
    loss = make_loss("ppo", name, solver=solver, pgd_steps=3, warmup=0.0, ramp=0.5)
    cfg = PPOConfig(env_id="Pendulum-v1", total_steps=256, num_envs=2, num_steps=64,
                    num_minibatches=2, update_epochs=1, hidden=(16, 16),
                    threat={"eps": 0.05})
    algo = PPO(cfg, robust_loss=loss).learn()
    assert algo.logs.get("train_eps", 0) > 0
    roll = algo.collect(16)
    algo.cfg.update_epochs = 1
    algo.update(roll)
    for key, net in algo.agent.nets.items():
        for pname, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{key}.{pname}"


def test_wocar_and_sortnet_checkpoints_rebuild(tmp_path):
    for name in ("wocar", "sortnet"):
        algo = _dqn(name, "ibp" if name == "wocar" else None, steps=120)
        algo.learn()
        path = tmp_path / f"{name}.pt"
        algo.save(path)
        agent = certrl.load(path)
        x = torch.randn(3, 4)
        torch.testing.assert_close(agent.forward(x), algo.agent.forward(x))
        assert agent.loss_name == name and agent.threat_model.eps == 0.05
        assert agent.config["robust_loss"]["name"] == name
        if name == "wocar":
            assert "worst_q" in agent.nets
        else:
            assert agent.net.lipschitz_linf == 10.0
        resumed = DQN.resume(path, total_steps=150)  # the loss comes from the checkpoint
        got, want = resumed.robust_loss.config(), algo.robust_loss.config()
        assert got.pop("schedule")["total_steps"] == 150  # the schedule follows the new length
        want.pop("schedule")
        assert got == want
        resumed.learn()
        assert resumed.global_step == 150


def test_wocar_resume_restores_lagged_worst_net_and_its_optimizer(tmp_path):
    algo = _dqn("wocar", "ibp", steps=200)
    algo.robust_loss.cfg.target_update_interval = 10_000  # keep Q_w^- lagged
    algo.robust_loss.worst_target = copy.deepcopy(algo.robust_loss.worst)
    algo.learn()
    lagged = {k: v.clone() for k, v in algo.robust_loss.worst_target.state_dict().items()}
    live = algo.robust_loss.worst.state_dict()
    assert any(not torch.equal(lagged[k], live[k]) for k in lagged)  # Q_w^- != Q_w
    want_opt = algo.robust_loss.worst_optimizer.state_dict()
    path = tmp_path / "wocar.pt"
    algo.save(path)
    resumed = DQN.resume(path, robust_loss=make_loss("dqn", "wocar",
                                                     target_update_interval=10_000))
    got = resumed.robust_loss
    assert got.calls == algo.robust_loss.calls > 0
    for k, v in got.worst_target.state_dict().items():
        torch.testing.assert_close(v, lagged[k])
    got_opt = got.worst_optimizer.state_dict()
    assert got_opt["state"] and len(got_opt["state"]) == len(want_opt["state"])
    for i, st in want_opt["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got_opt["state"][i][key], st[key])


def test_cli_train_robust_records_loss_and_eps(tmp_path, capsys):
    out = tmp_path / "car"
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "200", "--out",
               str(out), "--loss", "car", "--solver", "pgd", "--pgd-steps", "2",
               "--lambda", "0.5", "--train-eps", "0.05", "--no-progress",
               "--set", "learning_starts=64", "--set", "hidden=16,16"])
    assert rc == 0
    agent = certrl.load(out)
    rl = agent.config["robust_loss"]
    assert agent.loss_name == "car" and agent.threat_model.eps == 0.05
    assert rl["lam"] == 0.5 and rl["solver"]["kind"] == "pgd" and rl["solver"]["pgd_steps"] == 2
    assert "--loss" in json.loads((out / "command.json").read_text())["argv"]
    rc = main(["train", "--out", str(out), "--resume", "--steps", "260", "--no-progress"])
    assert rc == 0 and certrl.load(out).config["robust_loss"]["lam"] == 0.5
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "100", "--out",
               str(tmp_path / "s"), "--loss", "sortnet", "--train-eps", "0.02", "--no-progress",
               "--sortnet-hidden", "8", "--set", "learning_starts=50"])
    assert rc == 0 and certrl.load(tmp_path / "s").net.spec["type"] == "lipschitz_q"
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "100", "--out",
               str(tmp_path / "x"), "--loss", "sa", "--no-progress"])
    assert rc != 0 and "--train-eps" in capsys.readouterr().err
