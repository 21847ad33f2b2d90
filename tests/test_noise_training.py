"""Noise-augmented training (--loss noise): fresh noise per observation at the recorded sigma,
the TD loss at noisy states, resume state, CLI flags and the recorded smoothing sigma."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import certrl
from certrl.algos import DQN, PPO, DQNConfig, PPOConfig
from certrl.cli import main
from certrl.losses import loss_from_config, make_loss
from certrl.losses.base import TrainContext
from certrl.smoothed import agent_smoothing_sigma, resolve_sigma


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _dqn(sigma=0.3, steps=200, **kw):
    loss = make_loss("dqn", "noise", sigma=sigma, **kw)
    cfg = DQNConfig(total_steps=steps, learning_starts=64, batch_size=16, hidden=(16, 16))
    return DQN(cfg, robust_loss=loss)


def test_noise_is_fresh_per_observation_and_has_the_recorded_sigma():
    algo = _dqn(sigma=0.3)
    loss = algo.robust_loss
    x = torch.zeros(4000, 4)
    a, b = loss.noisy(x, loss.sigma_at(0)), loss.noisy(x, loss.sigma_at(0))
    assert not torch.equal(a, b)  # fresh at every draw
    assert len({tuple(r.tolist()) for r in a[:50]}) == 50  # rows never share noise
    assert a.std().item() == pytest.approx(0.3, rel=0.03)
    assert a.mean().item() == pytest.approx(0.0, abs=0.02)
    assert loss_from_config(algo.training_config()["robust_loss"]).cfg.sigma == 0.3


def test_td_loss_is_taken_at_noisy_states_with_a_clean_target():
    algo = _dqn(sigma=0.5)
    algo.learn(100)
    batch = algo.sample_batch()  # the test builds one gradient step by hand
    loss = algo.robust_loss
    state = loss.generator.get_state()
    total, logs = algo.loss(dict(batch))
    # replay the draw: the same noise gives the same loss by hand
    loss.generator.set_state(state)
    y = algo.td_target(batch)
    noisy = batch["obs"] + 0.5 * torch.randn(batch["obs"].shape, generator=loss.generator)
    q = algo.agent_obj.nets["q"](noisy).gather(1, batch["actions"][:, None]).squeeze(1)
    want = F.huber_loss(q, y, delta=algo.cfg.huber_delta)
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert logs["noise_sigma"] == 0.5
    clean_q = algo.agent_obj.nets["q"](batch["obs"]).gather(1, batch["actions"][:, None])
    clean = F.huber_loss(clean_q.squeeze(1), y, delta=algo.cfg.huber_delta)
    assert logs["clean_td_loss"] == pytest.approx(clean.item(), rel=1e-5)
    assert total.item() != pytest.approx(clean.item(), rel=1e-3)


def test_noise_next_puts_noise_on_the_target_state():
    algo = _dqn(sigma=0.5, noise_next=True)
    algo.learn(100)
    batch = algo.sample_batch()
    batch["td_target"] = algo.td_target(batch)
    ctx = TrainContext(batch=batch, nets={**algo.agent_obj.nets, "target": algo.target},
                       threat=algo.agent_obj.threat_model, step=0, gamma=algo.cfg.gamma)
    y1, y2 = algo.robust_loss.td_target(ctx), algo.robust_loss.td_target(ctx)
    assert not torch.allclose(y1, y2) and not torch.allclose(y1, batch["td_target"])


def test_sigma_schedule_ramps_from_zero():
    loss = make_loss("dqn", "noise", sigma=0.2, warmup=0.25, ramp=0.5)
    loss.cfg.schedule.total_steps = 100
    assert loss.sigma_at(10) == 0.0 and loss.sigma_at(100) == pytest.approx(0.2)
    assert 0 < loss.sigma_at(50) < 0.2
    assert make_loss("dqn", "noise", sigma=0.2).sigma_at(0) == 0.2  # default: constant


def test_bad_sigma_refused():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            make_loss("dqn", "noise", sigma=bad)


def test_resume_restores_the_noise_generator(tmp_path):
    a = _dqn(sigma=0.3)
    a.learn(120)
    a.save(tmp_path / "latest.pt")
    b = DQN.resume(tmp_path / "latest.pt")
    assert b.robust_loss.cfg.sigma == 0.3
    x = torch.zeros(3, 4)
    assert torch.equal(a.robust_loss.noisy(x, 0.3), b.robust_loss.noisy(x, 0.3))


def test_ppo_noise_surrogate_runs_and_reaches_the_policy():
    loss = make_loss("ppo", "noise", sigma=0.2)
    cfg = PPOConfig(env_id="CartPole-v1", total_steps=128, num_envs=2, num_steps=32,
                    num_minibatches=2, update_epochs=1, hidden=(16, 16))
    algo = PPO(cfg, robust_loss=loss).learn()
    assert algo.logs["noise_sigma"] == 0.2 and "clean_pg_loss" in algo.logs
    for p in algo.agent.nets["policy"].parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_cli_noise_records_sigma_and_resumes(tmp_path, capsys):
    out = tmp_path / "noise"
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "200", "--out",
               str(out), "--loss", "noise", "--sigma", "0.25", "--no-progress",
               "--set", "learning_starts=64", "--set", "hidden=16,16"])
    assert rc == 0
    agent = certrl.load(out)
    assert agent.loss_name == "noise" and agent.metadata["smoothing_sigma"] == 0.25
    assert agent.config["robust_loss"]["sigma"] == 0.25
    assert "solver" not in agent.config["robust_loss"]
    rebuilt = loss_from_config(agent.config["robust_loss"])  # what --resume trains with
    z = rebuilt.noisy(torch.zeros(20000, 4), rebuilt.sigma_at(0))
    assert z.std().item() == pytest.approx(0.25, rel=0.03)
    assert agent_smoothing_sigma(agent) == 0.25 and resolve_sigma(agent, None) == 0.25
    with pytest.warns(UserWarning, match="noise-trained at sigma 0.25"):
        assert resolve_sigma(agent, 0.1) == 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_sigma(agent, 0.25)
    rc = main(["train", "--out", str(out), "--resume", "--steps", "260", "--no-progress"])
    assert rc == 0 and certrl.load(out).metadata["smoothing_sigma"] == 0.25
    for argv, msg in (([], "--sigma"), (["--sigma", "0"], "--sigma"),
                      (["--sigma", "0.1", "--kappa", "1"], "takes --sigma")):
        rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "100", "--out",
                   str(tmp_path / "x"), "--loss", "noise", "--no-progress", *argv])
        assert rc != 0 and msg in capsys.readouterr().err
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "100", "--out",
               str(tmp_path / "y"), "--loss", "sa", "--train-eps", "0.1", "--sigma", "0.1",
               "--no-progress"])
    assert rc != 0 and "--loss noise" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
