"""Robust PPO as the references do it: CAR-PPO = clean surrogate + reg * soft max, SA-PPO's
sigma not detached and its SGLD solver, WocaR-PPO's worst-attack critic and q_weight."""

import math

import pytest
import torch

import certrl
from certrl.algos import PPO, PPOConfig
from certrl.losses import (
    CARPPOConfig,
    CARPPOLoss,
    EpsSchedule,
    SAPPOConfig,
    SAPPOLoss,
    SolverConfig,
    WocarPPOConfig,
    WocarPPOLoss,
    loss_from_config,
    make_loss,
)
from certrl.losses.base import TrainContext
from certrl.losses.common import sgld_states
from certrl.losses.schedule import ppo_reference_ramp
from certrl.nets import build_network
from certrl.threat import ThreatModel

NOW = dict(warmup=0.0, ramp=0.0)  # target eps from step 0


class _Cfg:
    total_steps = 100
    lr = 1e-3


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def linear_gaussian(w=(1.0, -2.0), std=2.0):
    """mu(x) = w . x (no hidden layer, no bias): IBP is exact, |mu(x') - mu(x)| <= |w|_1 eps."""
    pol = build_network({"type": "gaussian_policy", "body": {"kind": "mlp", "in_dim": len(w),
                         "hidden": []}, "n_out": 1, "log_std_init": math.log(std)})
    with torch.no_grad():
        pol.head.weight.copy_(torch.tensor([list(w)]))
        pol.head.bias.zero_()
    return pol


def ctx(batch, nets, eps, step=10, clip=0.2):
    return TrainContext(batch=batch, nets=nets, threat=ThreatModel(eps=eps), step=step,
                        gamma=0.9, clip_coef=clip)


def normal_logp(a, mu, std):
    return -((a - mu) ** 2) / (2 * std ** 2) - math.log(std) - 0.5 * math.log(2 * math.pi)


def test_car_ppo_is_clean_surrogate_plus_reg_times_soft_max_by_hand():
    pol = linear_gaussian()
    x = torch.tensor([[0.5, 0.1], [-0.2, 0.3], [0.1, -0.4]])
    acts = torch.tensor([[0.9], [-1.5], [0.0]])
    old = torch.tensor([-1.7, -1.6, -1.8])
    raw_adv = torch.tensor([1.0, -0.5, 0.2])
    eps, reg, lam, clip, std = 0.1, 0.5, 0.7, 0.2, 2.0
    cfg = CARPPOConfig(reg=reg, lam=lam, solver=SolverConfig("ibp"), schedule=EpsSchedule(**NOW))
    loss = CARPPOLoss(cfg)
    loss.setup({"policy": pol}, _Cfg())
    mu = pol(x)
    pg_clean = torch.tensor(0.37)  # whatever PPO passes in is kept as is
    batch = {"obs": x, "actions": acts, "logprobs": old, "advantages": raw_adv, "mean": mu}
    got, _ = loss.modify_policy_loss(pg_clean, ctx(batch, {"policy": pol}, eps, clip=clip))
    # by hand: bounds of mu are mu -+ 3 eps; A >= 0 takes the mean farthest from a,
    # A < 0 the nearest
    adv = (raw_adv - raw_adv.mean()) / (raw_adv.std() + 1e-8)
    terms = []
    for i in range(3):
        m, a, r = float(mu.detach()[i, 0]), float(acts[i, 0]), 3 * eps
        lo, hi = m - r, m + r
        if float(adv[i]) >= 0:
            m_adv = lo if abs(a - lo) > abs(a - hi) else hi
        else:
            m_adv = min(max(a, lo), hi)
        ratio = math.exp(normal_logp(a, m_adv, std) - float(old[i]))
        A = float(adv[i])
        terms.append(max(-A * ratio, -A * min(max(ratio, 1 - clip), 1 + clip)))
    t = torch.tensor(terms)
    p = torch.softmax(t / lam, 0)
    want = float(pg_clean) + reg * float((p * t).sum())
    assert float(got) == pytest.approx(want, rel=1e-5)
    # without the clean loss (the old certrl form) only the soft max is left
    loss.cfg.add_clean_loss = False
    got2, _ = loss.modify_policy_loss(pg_clean, ctx(batch, {"policy": pol}, eps, clip=clip))
    assert float(got2) == pytest.approx(float((p * t).sum()), rel=1e-5)


def test_car_ppo_pgd_adds_the_robust_term_to_the_clean_one_and_defaults_match_reference():
    cfg = CARPPOConfig()
    assert (cfg.reg, cfg.lam, cfg.add_clean_loss, cfg.kl_coef, cfg.ratio) == (
        0.3, 1000.0, True, 0.0, "reference")
    assert cfg.solver.kind == "pgd" and cfg.solver.pgd_steps == 10
    torch.manual_seed(0)
    pol = linear_gaussian()
    cfg.schedule = EpsSchedule(**NOW)
    loss = CARPPOLoss(cfg)
    loss.setup({"policy": pol}, _Cfg())
    x = torch.randn(8, 2)
    batch = {"obs": x, "actions": torch.randn(8, 1), "logprobs": torch.full((8,), -1.7),
             "advantages": torch.randn(8), "mean": pol(x)}
    pg = torch.tensor(0.1)
    got, logs = loss.modify_policy_loss(pg, ctx(batch, {"policy": pol}, 0.1))
    assert float(got) == pytest.approx(0.1 + 0.3 * logs["car_robust"], rel=1e-5)
    # the robust term is at least the clean surrogate's soft max (PGD maximizes it)
    assert got.requires_grad


def test_sa_ppo_gradient_reaches_sigma_unless_detached():
    pol = linear_gaussian()
    x = torch.tensor([[0.5, 0.1]])
    for detach in (False, True):
        loss = SAPPOLoss(SAPPOConfig(reg=1.0, solver=SolverConfig("ibp"),
                                     schedule=EpsSchedule(**NOW), detach_sigma=detach))
        loss.setup({"policy": pol}, _Cfg())
        pol.zero_grad()
        val, _ = loss(ctx({"obs": x, "mean": pol(x)}, {"policy": pol}, 0.1))
        assert float(val) == pytest.approx((3 * 0.1) ** 2 / 4.0, rel=1e-5)
        val.backward()
        g = pol.log_std.grad
        if detach:
            assert g is None or float(g.abs().sum()) == 0
        else:  # d/dlog_std of dev^2 / exp(2 log_std) = -2 * value
            assert float(g.sum()) == pytest.approx(-2 * float(val), rel=1e-5)
    assert SAPPOConfig().detach_sigma is False


@pytest.mark.parametrize("scale", [None, (1.0, 0.5, 2.0)])
def test_sgld_stays_inside_the_ball_and_the_domain(scale):
    torch.manual_seed(1)
    kw = {"scale": scale} if scale else {}
    threat = ThreatModel(eps=0.1, lower=-1.0, upper=1.0, **kw)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    for _ in range(5):
        x = torch.rand(16, 3) * 2 - 1
        mu0 = net(x).detach()

        def obj(z, mu0=mu0):
            return ((net(z) - mu0) ** 2).sum(1)
        xa = sgld_states(obj, x, threat, 0.1, steps=10)
        s = torch.tensor(scale) if scale else torch.ones(3)
        assert ((xa - x).abs() <= 0.1 * s + 1e-6).all()
        assert (xa >= -1).all() and (xa <= 1).all()
        assert float(obj(xa).mean()) > float(obj(x).mean())  # it ascends (obj(x) = 0)


def test_ppo_reference_schedule_is_linear_over_75_percent():
    sch = ppo_reference_ramp()
    sch.total_steps = 1000
    assert sch.eps(0, 0.075) == 0.0
    assert sch.eps(375, 0.075) == pytest.approx(0.0375)
    assert sch.eps(750, 0.075) == pytest.approx(0.075)
    assert sch.eps(900, 0.075) == pytest.approx(0.075)
    for cls in (SAPPOConfig, CARPPOConfig, WocarPPOConfig):
        assert cls().schedule == ppo_reference_ramp()


def _wocar(policy, **kw):
    loss = WocarPPOLoss(WocarPPOConfig(schedule=EpsSchedule(**NOW), **kw))
    loss.setup({"policy": policy}, _Cfg())
    return loss


def test_wocar_q_weight_rises_linearly_from_0_to_0_8():
    loss = _wocar(linear_gaussian())
    assert [loss.q_weight_at(t) for t in (0, 50, 100, 500)] == pytest.approx([0, 0.4, 0.8, 0.8])
    assert _wocar(linear_gaussian(), weight_schedule="constant").q_weight_at(0) == 0.8


def test_wocar_worst_critic_trains_by_mse_with_soft_target_and_worst_action_in_the_set():
    torch.manual_seed(0)
    pol = linear_gaussian()
    loss = _wocar(pol, tau=0.1, q_lr=1e-2)
    b = 32
    x, x2 = torch.randn(b, 2), torch.randn(b, 2)
    batch = {"obs": x, "next_obs": x2, "actions": torch.randn(b, 1), "rewards": torch.randn(b),
             "dones": (torch.rand(b) < 0.2).float()}
    c = ctx(batch, {"policy": pol}, 0.075)
    # the worst action lies in the IBP box of mu over B(s', e_A) and lowers Q_w
    e_a = 0.01 / 0.075 * 0.075
    a_w = loss.worst_actions(x2, c.threat)
    mu2 = pol(x2).detach()
    assert ((a_w - mu2).abs() <= 3 * e_a + 1e-6).all()
    q_at = lambda a: loss.worst(torch.cat([x2, a], 1)).squeeze(1)  # noqa: E731
    assert (q_at(a_w) <= q_at(mu2) + 1e-6).all()
    # the logged loss is the MSE to r + gamma (1 - d) Q_w^-(s', a_w), by hand
    with torch.no_grad():
        y = batch["rewards"] + 0.9 * (1 - batch["dones"]) * loss.worst_target(
            torch.cat([x2, a_w], 1)).squeeze(1)
        want = float(((loss.worst(torch.cat([x, batch["actions"]], 1)).squeeze(1) - y) ** 2)
                     .mean())
    before_t = [p.clone() for p in loss.worst_target.parameters()]
    logs = loss.worst_step(c)
    assert logs["worst_q_loss"] == pytest.approx(want, rel=1e-5)
    for t, s, t0 in zip(loss.worst_target.parameters(), loss.worst.parameters(), before_t,
                        strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    first = logs["worst_q_loss"]
    for _ in range(100):
        last = loss.worst_step(c)["worst_q_loss"]
    assert last < first  # it fits its target


def test_wocar_surrogate_uses_advantage_plus_q_weight_normalized_worst_q():
    torch.manual_seed(0)
    pol = linear_gaussian()
    loss = _wocar(pol, q_lr=1e-12)  # Q_w barely moves: the surrogate can be checked by hand
    b = 16
    x = torch.randn(b, 2)
    acts = torch.randn(b, 1)
    batch = {"obs": x, "next_obs": torch.randn(b, 2), "actions": acts,
             "rewards": torch.randn(b), "dones": torch.zeros(b), "advantages": torch.randn(b),
             "logprobs": torch.full((b,), -1.8), "mean": pol(x)}
    pg, logs = loss.modify_policy_loss(torch.tensor(0.0), ctx(batch, {"policy": pol}, 0.075,
                                                             step=50))
    assert logs["q_weight"] == pytest.approx(0.4)
    with torch.no_grad():
        q = loss.worst_target(torch.cat([x, acts], 1)).squeeze(1)
    norm = lambda v: (v - v.mean()) / (v.std() + 1e-8)  # noqa: E731
    adv = norm(batch["advantages"]) + 0.4 * norm(q)
    lp = torch.distributions.Normal(batch["mean"], 2.0).log_prob(acts).sum(1)
    r = (lp - batch["logprobs"]).exp()
    want = torch.max(-adv * r, -adv * r.clamp(0.8, 1.2)).mean()
    assert float(pg) == pytest.approx(float(want), rel=1e-4)


PPO_RUNS = [("sa", "sgld", "Pendulum-v1"), ("sa", "crown-ibp", "Pendulum-v1"),
            ("car", "pgd", "Pendulum-v1"), ("car", "sgld", "Pendulum-v1"),
            ("wocar", "sgld", "Pendulum-v1"), ("wocar", "ibp", "CartPole-v1")]


@pytest.mark.parametrize("name,solver,env", PPO_RUNS)
def test_short_ppo_training_runs_and_checkpoint_rebuilds(tmp_path, name, solver, env):
    loss = make_loss("ppo", name, solver=solver, pgd_steps=3, warmup=0.0, ramp=0.5)
    cfg = PPOConfig(env_id=env, total_steps=256, num_envs=2, num_steps=64,
                    num_minibatches=2, update_epochs=1, hidden=(16, 16), threat={"eps": 0.05})
    algo = PPO(cfg, robust_loss=loss).learn()
    assert algo.logs["train_eps"] == pytest.approx(0.05)
    assert all(v == v for v in algo.logs.values())  # no NaN
    path = tmp_path / "agent.pt"
    algo.save(path)
    agent = certrl.load(path)
    x = torch.randn(3, agent.obs_shape[0])
    torch.testing.assert_close(agent.forward(x), algo.agent.forward(x))
    stored = agent.config["robust_loss"]
    assert stored["name"] == name and stored["solver"]["kind"] == solver
    rebuilt = loss_from_config(stored)
    assert type(rebuilt) is type(loss) and rebuilt.config() == loss.config()
    if name == "wocar":
        assert "worst_q" in agent.nets and algo.logs["q_weight"] > 0
        resumed = PPO.resume(path, total_steps=384)
        assert resumed.robust_loss.worst_target is not None
        resumed.learn()


def test_old_robust_ppo_checkpoints_keep_their_meaning():
    """Configs written before the references' forms rebuild as what they trained with."""
    from certrl.losses import loss_from_config, make_loss

    car = make_loss("ppo", "car").config()
    for k in ("add_clean_loss", "ratio", "reg"):
        car.pop(k)
    old = loss_from_config(car)
    assert (old.cfg.add_clean_loss, old.cfg.ratio, old.cfg.reg) == (False, "clean", 1.0)
    sa = make_loss("ppo", "sa").config()
    sa.pop("detach_sigma")
    assert loss_from_config(sa).cfg.detach_sigma is True
    assert make_loss("ppo", "car").cfg.add_clean_loss is True  # new runs: the reference's
