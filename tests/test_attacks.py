import math

import numpy as np
import pytest
import torch
from torch import nn

import certrl
from certrl import ThreatModel
from certrl.agent import shipped_agents
from certrl.attacks import fgsm, mad, make_attack, pgd, project, random_noise
from certrl.evaluate import evaluate


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _net(din=8, dout=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, 32), nn.ReLU(), nn.Linear(32, dout))


def _in_ball(x_adv, x, tm, eps):
    d = (x_adv - x).reshape(x.shape[0], -1)
    n = torch.linalg.vector_norm(d, ord=tm.norm, dim=1)
    ok = bool((n <= eps * (1 + 1e-5) + 1e-6).all())
    if tm.lower is not None:
        ok &= bool((x_adv >= tm.lower).all())
    if tm.upper is not None:
        ok &= bool((x_adv <= tm.upper).all())
    return ok


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("clip", [True, False])
def test_attacks_stay_in_ball_and_domain(norm, clip):
    tm = ThreatModel(norm=norm, eps=0.3, lower=0.0 if clip else None, upper=1.0 if clip else None)
    net = _net()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 8, generator=g)
    x[:8] = 0.0  # on the domain boundary
    x[8:16] = 1.0
    outs = {
        "fgsm": fgsm(net, x, tm),
        "pgd": pgd(net, x, tm, steps=7, generator=g),
        "pgd_margin": pgd(net, x, tm, steps=7, objective="margin", generator=g),
        "mad": mad(net, x, tm, steps=5, generator=g),
        "random": random_noise(x, tm, generator=g),
        "project": project(x + 5 * torch.randn(x.shape, generator=g), x, tm),
    }
    for name, xa in outs.items():
        assert xa.shape == x.shape, name
        assert _in_ball(xa, x, tm, 0.3), name
    assert not torch.equal(outs["pgd"], x)


def test_cnn_pixels_attack_and_seeding():
    tm = certrl.threat.default_threat_model("atari", eps=3 / 255)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 8, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9 * 9, 3))
    x = torch.rand(3, 4, 40, 40)
    a = make_attack("pgd", net, tm, steps=3, seed=7)(x)
    b = make_attack("pgd", net, tm, steps=3, seed=7)(x)
    torch.testing.assert_close(a, b)
    assert _in_ball(a, x, tm, 3 / 255)


def test_zero_eps_is_identity_and_bad_inputs():
    tm = ThreatModel(eps=0.0)
    net = _net()
    x = torch.rand(4, 8)
    torch.testing.assert_close(pgd(net, x, tm, steps=3), x)
    with pytest.raises(ValueError):
        pgd(net, x, tm, eps=-0.1)
    with pytest.raises(ValueError):
        pgd(net, x, tm, eps=float("nan"))
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("cw", net, tm)
    with pytest.raises(ValueError):
        make_attack("fgsm", net, tm, action_kind="continuous")
    with pytest.raises(ValueError):
        make_attack("mad", net, tm, action_kind="discrete")
    with pytest.raises(ValueError):
        pgd(net, x, ThreatModel(norm=1, eps=0.1))


def test_pgd_beats_fgsm_on_a_linear_margin():
    # on a random net PGD with many steps finds at least the flips FGSM finds (best-iterate)
    tm = ThreatModel(eps=0.2)
    net = _net(seed=3)
    x = torch.randn(256, 8)
    xf = fgsm(net, x, tm, objective="margin")
    xp = pgd(net, x, tm, steps=20, objective="margin")
    xr = random_noise(x, tm)
    with torch.no_grad():
        a0 = net(x).argmax(1)
        f_flip = (net(xf).argmax(1) != a0).float().mean()
        p_flip = (net(xp).argmax(1) != a0).float()
        r_flip = (net(xr).argmax(1) != a0).float().mean()
    assert p_flip.mean() >= f_flip and p_flip.mean() >= r_flip


@pytest.mark.skipif("cartpole-dqn-vanilla" not in shipped_agents(), reason="no shipped agent")
def test_pgd_strongest_on_trained_agent():
    agent = certrl.load("cartpole-dqn-vanilla")
    env = certrl.envs.make_env("CartPole-v1", 0)
    obs, _ = env.reset(seed=0)
    states = []
    for _ in range(200):
        states.append(obs)
        obs, _, term, trunc, _ = env.step(int(agent.predict(obs)))
        if term or trunc:
            obs, _ = env.reset()
    x = agent.preprocess(np.stack(states))
    tm = agent.threat_model.with_eps(0.05)
    a0 = agent.act(x)
    rates = {}
    for name in ("pgd", "fgsm", "random"):
        atk = make_attack(name, agent.forward, tm, steps=10, seed=0)
        rates[name] = float((agent.act(atk(x)) != a0).mean())
    assert rates["pgd"] >= rates["fgsm"] >= 0 and rates["pgd"] >= rates["random"]
    assert rates["pgd"] > 0.05
    # returns: one-step flips need not lower CartPole returns (this agent keeps 500 under PGD
    # at 0.05 and 0.1, see docs/robust-training.md), so returns are compared at eps 0.2, where
    # PGD <= FGSM and PGD <= random; the flip rate above is the per-state check
    tm2 = agent.threat_model.with_eps(0.2)
    rets = {name: evaluate(agent, 3, seed=0,
                           attack=make_attack(name, agent.forward, tm2, steps=10, seed=0)).mean
            for name in ("pgd", "fgsm", "random")}
    assert rets["pgd"] <= rets["fgsm"] + 1e-9 and rets["pgd"] <= rets["random"] + 1e-9
    assert rets["pgd"] < 250
