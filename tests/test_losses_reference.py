"""Robust losses as the reference implementations compute them: WocaR-DQN's bound
regression, attackable set and separate optimizer; RADIAL with a dueling network; balls of
a per-dimension (scaled) threat model."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from certrl.algos import DQN, DQNConfig
from certrl.losses import (
    CARConfig,
    CARDQNLoss,
    EpsSchedule,
    RadialConfig,
    RadialDQNLoss,
    SAConfig,
    SADQNLoss,
    SolverConfig,
    SortNetConfig,
    SortNetLoss,
    WocarConfig,
    WocarDQNLoss,
    loss_from_config,
    make_loss,
)
from certrl.losses.base import TrainContext
from certrl.losses.common import pgd_states
from certrl.losses.wocar import bound_regression
from certrl.nets import build_network
from certrl.threat import ThreatModel

NOW = dict(warmup=0.0, ramp=0.0)  # target eps from step 0


class _Cfg:
    total_steps = 100
    lr = 1e-2
    gamma = 0.9
    huber_delta = 1.0


def linear_q(w=((2.0,), (-1.0,)), b=(0.0, 1.0)):
    """Q(x) = W x + b on a 1-d input: IBP is exact (Q0 = 2x, Q1 = 1 - x)."""
    net = build_network({"type": "q", "body": {"kind": "mlp", "in_dim": len(w[0]), "hidden": []},
                         "n_out": len(w)})
    with torch.no_grad():
        net.head.weight.copy_(torch.tensor(w))
        net.head.bias.copy_(torch.tensor(b))
    return net


def mlp_q(in_dim=4, n=3, dueling=False, stream_hidden=0, seed=0):
    torch.manual_seed(seed)
    spec = {"type": "q", "body": {"kind": "mlp", "in_dim": in_dim, "hidden": [16]},
            "n_out": n, "dueling": dueling}
    if stream_hidden:
        spec["stream_hidden"] = stream_hidden
    return build_network(spec)


def ctx(batch, nets, threat, step=10):
    if not isinstance(threat, ThreatModel):
        threat = ThreatModel(eps=threat)
    return TrainContext(batch=batch, nets=nets, threat=threat, step=step, gamma=_Cfg.gamma,
                        huber_delta=_Cfg.huber_delta)


def wocar(net, **kw):
    loss = WocarDQNLoss(WocarConfig(schedule=EpsSchedule(**NOW), **kw))
    loss.setup({"q": net}, _Cfg())
    return loss


def one_batch(obs, next_obs, action=0, reward=1.0):
    return {"obs": torch.tensor([[obs]]), "next_obs": torch.tensor([[next_obs]]),
            "actions": torch.tensor([action]), "rewards": torch.tensor([reward]),
            "dones": torch.tensor([0.0]), "q": torch.zeros(1)}


def huber(d):
    return float(F.huber_loss(torch.tensor(d), torch.tensor(0.0), delta=1.0))


# ------------------------------------------------------------------ WocaR-DQN


@pytest.mark.parametrize("worse_bound,y", [(True, 2.5), (True, 1.2), (False, 1.2)])
def test_wocar_bound_regression_equals_its_formula(worse_bound, y):
    # x = 1, eps 0.5: Q = (2, 0), Q0 in [1, 3], Q1 in [-0.5, 0.5] (IBP exact); action 0
    net = linear_q()
    loss = wocar(net, kappa_end=0.5, worse_bound=worse_bound)
    batch = {**one_batch(1.0, 1.0), "td_target": torch.tensor([y])}
    val, logs = loss(ctx(batch, {"q": net, **loss.extra_networks()}, 0.5))
    if worse_bound:  # d0 = max(|3 - y|, |1 - y|), d1 = max(|0.5 - 0|, |-0.5 - 0|)
        d0 = max(abs(3 - y), abs(1 - y))
    else:  # W = (LB0, UB1): d0 = |1 - y|, d1 = |0.5 - 0|
        d0 = abs(1 - y)
    want = huber(d0) + huber(0.5)
    assert logs["bound_regression"] == pytest.approx(want, rel=1e-6)
    assert float(val.detach()) == pytest.approx(0.5 * want, rel=1e-6)  # (1 - kappa_t) = 0.5
    assert logs["kappa"] == pytest.approx(0.5)


def test_wocar_bound_regression_is_the_td_loss_at_eps_zero_and_detaches_y():
    net = mlp_q()
    x = torch.randn(8, 4)
    a = torch.randint(0, 3, (8,))
    y = torch.randn(8, requires_grad=True)
    q = net(x)
    reg = bound_regression(q, q, q, a, y, True, 1.0)
    td = F.huber_loss(q.gather(1, a[:, None]).squeeze(1), y, reduction="none", delta=1.0)
    torch.testing.assert_close(reg, td.detach(), rtol=1e-6, atol=1e-6)
    reg.sum().backward()
    assert y.grad is None  # the target is a constant
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in net.parameters())


def test_wocar_attackable_set_uses_the_small_eps_at_s():
    # Q0 = 2x, Q1 = 1 - x. At s = 0.5 action 1 is attackable iff eps >= 1/6; at s' = 1 iff
    # eps >= 2/3. attack_set_eps 0.3 at s -> {0, 1}; the training eps 0.05 (at s or s')
    # or 0.3 at s' would give {0}. Q_w = Q: the worst attackable action at s' is 1 (Q_w 0).
    net = linear_q()
    loss = wocar(net, attack_set_eps=0.3)
    loss.worst.load_state_dict(net.state_dict())
    nets = {"q": net, "target": linear_q(), **loss.extra_networks()}
    y_w, n = loss.worst_case_target(ctx(one_batch(0.5, 1.0), nets, 0.05))
    assert n == 2.0 and float(y_w) == pytest.approx(1.0 + 0.9 * 0.0)
    loss.cfg.attack_set_eps = 0.1  # < 1/6: only the greedy action -> greedy bootstrap
    y_w, n = loss.worst_case_target(ctx(one_batch(0.5, 1.0), nets, 5.0))
    assert n == 1.0 and float(y_w) == pytest.approx(1.0 + 0.9 * 2.0)


def test_wocar_attack_set_radius_is_a_fraction_of_the_target_eps():
    # default e_A = 0.255 * eps (the reference's 1e-3 against 1/255): at s = 0.5 action 1
    # is attackable iff e_A >= 1/6, i.e. iff the target eps >= 0.654
    net = linear_q()
    loss = wocar(net)
    assert loss.cfg.attack_set_eps is None and loss.cfg.attack_set_fraction == 0.255
    loss.worst.load_state_dict(net.state_dict())
    nets = {"q": net, "target": linear_q(), **loss.extra_networks()}
    for eps, want in ((0.7, 2.0), (0.6, 1.0)):
        assert loss.attack_set_radius(ThreatModel(eps=eps)) == pytest.approx(0.255 * eps)
        _, n = loss.worst_case_target(ctx(one_batch(0.5, 1.0), nets, eps))
        assert n == want
    # a per-dimension scale multiplies the radius as it does every ball: scale 2 -> 0.31
    # of the unscaled input at eps 0.6, enough
    _, n = loss.worst_case_target(ctx(one_batch(0.5, 1.0), nets,
                                      ThreatModel(eps=0.6, scale=(2.0,))))
    assert n == 2.0
    with pytest.raises(ValueError, match="attack_set_fraction"):
        WocarConfig(attack_set_fraction=-0.1)


def test_wocar_worst_net_init_fresh_or_from_q():
    net = mlp_q()
    fresh, from_q = wocar(net), wocar(net, worst_init="q")
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert not torch.allclose(fresh.worst(x), net(x))
        torch.testing.assert_close(from_q.worst(x), net(x))
    assert from_q.worst is not net  # a copy, not the main Q
    with pytest.raises(ValueError, match="worst_init"):
        WocarConfig(worst_init="target")


def test_old_wocar_configs_keep_their_meaning():
    old = {"name": "wocar", "algo": "dqn", "worst_weight": 0.05, "kappa": 0.01, "c": 1.0,
           "target_update_interval": 500, "solver": {"kind": "ibp", "pgd_steps": 10,
                                                     "pgd_step_size": None},
           "schedule": {"warmup": 0.2, "ramp": 0.4, "mid": 0.25, "power": 4.0,
                        "total_steps": 0}}
    loss = loss_from_config(old)
    assert loss.cfg.attack_set_eps == 1e-3 and loss.cfg.worst_init == "q"
    assert loss.cfg.kappa_end == 1.0 and loss.cfg.worst_every == 1
    assert loss.config() == old  # round-trips: the filled-in fields are not written back


def test_pgd_solver_defaults_to_the_references_five_training_steps():
    for name in ("sa", "car"):
        assert make_loss("dqn", name, solver="pgd").cfg.solver.pgd_steps == 5
        assert make_loss("dqn", name, solver="pgd", pgd_steps=10).cfg.solver.pgd_steps == 10


def test_reference_schedules_on_a_20k_step_fine_tune():
    total = 20_000
    sa, radial, car, woc = (make_loss("dqn", n).cfg.schedule for n in
                            ("sa", "radial", "car", "wocar"))
    for s in (sa, radial, car, woc):
        s.total_steps = total
    # SA-DQN: natural until 1.5M/6M of the run, target reached at 5.5M/6M
    assert sa.fraction(4_999) == 0.0 and 0 < sa.fraction(5_100) < 0.01
    assert sa.fraction(18_332) < 1.0 and sa.fraction(18_334) == 1.0
    # RADIAL / CAR: smoothed ramp reaching the target at 4M/4.5M of the run
    for s in (radial, car):
        assert 0 < s.fraction(1_000) < 1e-3  # polynomial start: ~0 at the first update
        assert s.fraction(17_776) < 1.0 and s.fraction(17_779) == 1.0
    # WocaR: linear over the whole run
    assert woc.fraction(10_000) == pytest.approx(0.5) and woc.fraction(total) == 1.0


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(n, 4, generator=g), "next_obs": torch.randn(n, 4, generator=g),
            "actions": torch.randint(0, 3, (n,), generator=g),
            "rewards": torch.randn(n, generator=g), "dones": torch.zeros(n)}


def test_wocar_worst_net_has_its_own_optimizer():
    net = mlp_q()
    loss = wocar(net, worst_every=3)
    assert loss.jointly_optimized() == {} and "worst_q" in loss.extra_networks()
    target = copy.deepcopy(net)
    nets = {"q": net, "target": target, **loss.extra_networks()}
    main_opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    changed = []
    for i in range(7):
        b = _batch(seed=i)
        c = ctx(b, nets, 0.05)
        q0, w0 = _params(net), _params(loss.worst)
        with torch.no_grad():  # as DQN calls it
            y = loss.td_target(c)
        changed.append(not _same(w0, _params(loss.worst)))
        assert _same(q0, _params(net))  # the worst step leaves the main Q alone
        q_a = net(b["obs"]).gather(1, b["actions"][:, None]).squeeze(1)
        b.update(td_target=y, q=q_a)
        td, _ = loss.modify_td_loss(F.huber_loss(q_a, y, reduction="none"), c)
        extra, _ = loss(c)
        w1 = _params(loss.worst)
        main_opt.zero_grad()
        (td + extra).backward()
        main_opt.step()
        assert _same(w1, _params(loss.worst))  # the main step leaves Q_w alone
        assert not _same(q0, _params(net))
    assert changed == [True, False, False, True, False, False, True]  # every 3rd update


def test_wocar_dqn_optimizer_leaves_out_the_worst_net():
    cfg = DQNConfig(total_steps=100, learning_starts=32, batch_size=8, hidden=(8,),
                    threat={"eps": 0.05})
    algo = DQN(cfg, robust_loss=make_loss("dqn", "wocar"))
    main = {id(p) for g in algo.optimizer.param_groups for p in g["params"]}
    worst = {id(p) for p in algo.agent.nets["worst_q"].parameters()}
    assert main and not main & worst
    assert main == {id(p) for p in algo.agent.nets["q"].parameters()}


def test_wocar_state_dict_restores_the_worst_optimizer():
    net = mlp_q()
    a = wocar(net)
    nets = {"q": net, "target": copy.deepcopy(net), **a.extra_networks()}
    for i in range(3):
        with torch.no_grad():
            a.td_target(ctx(_batch(seed=i), nets, 0.05))
    b = wocar(copy.deepcopy(net))
    b.worst.load_state_dict(a.worst.state_dict())  # as the agent's weights are loaded
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.calls == a.calls == 3
    nets_b = {"q": nets["q"], "target": nets["target"], **b.extra_networks()}
    a.calls = b.calls = 0  # both due for a worst step now
    before = copy.deepcopy(a.worst.state_dict())
    with torch.no_grad():
        a.td_target(ctx(_batch(seed=9), nets, 0.05))
        b.td_target(ctx(_batch(seed=9), nets_b, 0.05))
    for x, y in zip(a.worst.parameters(), b.worst.parameters()):
        torch.testing.assert_close(x, y)
    # without the restored optimizer state the same step lands elsewhere
    fresh = wocar(copy.deepcopy(net))
    fresh.worst.load_state_dict(before)
    nets_f = {"q": nets["q"], "target": nets["target"], **fresh.extra_networks()}
    with torch.no_grad():
        fresh.td_target(ctx(_batch(seed=9), nets_f, 0.05))
    assert any(not torch.allclose(x, y) for x, y in
               zip(fresh.worst.parameters(), b.worst.parameters()))


# ------------------------------------------------------------------ RADIAL + dueling


def ibp(layers, lo, hi):
    """Plain interval propagation through Linear / ReLU (the references' ``network_bounds``)."""
    for m in layers:
        if isinstance(m, torch.nn.Linear):
            mu, r = (hi + lo) / 2, (hi - lo) / 2
            mu, r = F.linear(mu, m.weight, m.bias), F.linear(r, m.weight.abs())
            lo, hi = mu - r, mu + r
        else:
            lo, hi = m(lo), m(hi)
    return lo, hi


@pytest.mark.parametrize("stream_hidden", [0, 8])
def test_radial_dueling_bounds_are_value_plus_centred_advantage_ibp(stream_hidden):
    net = mlp_q(dueling=True, stream_hidden=stream_hidden)
    loss = RadialDQNLoss(RadialConfig(schedule=EpsSchedule(**NOW)))
    loss.setup({"q": net}, _Cfg())
    x, eps = torch.randn(5, 4), 0.1
    lb, ub = loss.q_bounds(net, x, eps, ThreatModel(eps=eps), 10)
    # reference: re-centre the last advantage layer, IBP through body + advantage stream,
    # add the clean, detached V(s)
    adv = copy.deepcopy(net.adv_stream)
    with torch.no_grad():
        adv[-1].weight -= adv[-1].weight.mean(0, keepdim=True)
        adv[-1].bias -= adv[-1].bias.mean()
        la, ua = ibp([*net.body, *adv], x - eps, x + eps)
        v = net.value(x)
    torch.testing.assert_close(lb, la + v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ub, ua + v, rtol=1e-5, atol=1e-5)
    # sampled points: the centred advantage lies inside its bounds
    xs = x[None] + eps * (2 * torch.rand(200, *x.shape) - 1)
    with torch.no_grad():
        q = torch.stack([net(p) for p in xs]) - torch.stack([net.value(p) for p in xs])
    assert (q >= (la - 1e-5)).all() and (q <= (ua + 1e-5)).all()
    # gradients reach the advantage stream, not the value stream (V is held detached)
    acts = torch.tensor([0, 1, 2, 0, 1])
    val, _ = loss(ctx({"obs": x, "actions": acts, "q": torch.zeros(5)}, {"q": net}, eps))
    assert float(val) > 0
    net.zero_grad()
    val.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in net.adv_stream.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0
               for p in net.value_stream.parameters())


def _dueling_with_constant_value():
    """A dueling net whose V does not depend on x, and its non-dueling equivalent."""
    duel = mlp_q(dueling=True)
    with torch.no_grad():
        duel.value_stream[0].weight.zero_()
        duel.value_stream[0].bias.fill_(0.7)
    plain = mlp_q(dueling=False)
    plain.body.load_state_dict(duel.body.state_dict())
    a = duel.adv_stream[0]
    with torch.no_grad():
        plain.head.weight.copy_(a.weight - a.weight.mean(0, keepdim=True))
        plain.head.bias.copy_(a.bias - a.bias.mean() + 0.7)
    return duel, plain


def test_radial_dueling_loss_equals_the_non_dueling_one_where_they_coincide():
    duel, plain = _dueling_with_constant_value()
    x = torch.randn(6, 4)
    acts = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(duel(x), plain(x), rtol=1e-5, atol=1e-5)
    vals = []
    for net, mode in ((duel, "advantage"), (duel, "full"), (plain, "advantage")):
        loss = RadialDQNLoss(RadialConfig(dueling_bounds=mode, schedule=EpsSchedule(**NOW)))
        loss.setup({"q": net}, _Cfg())
        val, _ = loss(ctx({"obs": x, "actions": acts, "q": torch.zeros(6)}, {"q": net}, 0.2))
        vals.append(float(val))
    assert vals[0] > 0
    assert vals[1] == pytest.approx(vals[0], rel=1e-5)
    assert vals[2] == pytest.approx(vals[0], rel=1e-5)


def test_radial_full_dueling_bounds_contain_sampled_q():
    net = mlp_q(dueling=True, stream_hidden=8)
    loss = RadialDQNLoss(RadialConfig(dueling_bounds="full", schedule=EpsSchedule(**NOW)))
    loss.setup({"q": net}, _Cfg())
    x, eps = torch.randn(4, 4), 0.2
    lb, ub = loss.q_bounds(net, x, eps, ThreatModel(eps=eps), 10)
    with torch.no_grad():
        for _ in range(300):
            q = net(x + eps * (2 * torch.rand_like(x) - 1))
            assert (q >= lb - 1e-5).all() and (q <= ub + 1e-5).all()


def test_radial_kappa_constant_by_default_as_the_reference():
    loss = RadialDQNLoss(RadialConfig(kappa_end=0.8))
    loss.setup({"q": mlp_q()}, _Cfg())
    assert loss.kappa_at(0) == loss.kappa_at(50) == loss.kappa_at(100) == 0.8
    lin = RadialDQNLoss(RadialConfig(kappa_end=0.8, constant_kappa=False))
    lin.setup({"q": mlp_q()}, _Cfg())
    assert lin.kappa_at(0) == 1.0 and lin.kappa_at(100) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="dueling_bounds"):
        RadialConfig(dueling_bounds="value")


# ------------------------------------------------------------------ scaled threat model

SCALE = (0.5, 2.0, 1.0, 0.1)


def scaled(eps):
    return ThreatModel(eps=eps, scale=SCALE)


def corners_and_samples(x, eps, n=200):
    """Points of the scaled box around x: all 16 corners and uniform samples."""
    s = torch.tensor(SCALE) * eps
    pts = [x + torch.tensor(c) * s for c in itertools.product((-1.0, 1.0), repeat=4)]
    pts += [x + (2 * torch.rand_like(x) - 1) * s for _ in range(n)]
    return pts


@pytest.mark.parametrize("solver", ["ibp", "crown-ibp"])
def test_loss_bounds_contain_points_of_the_scaled_set(solver):
    net, eps = mlp_q(), 0.3
    x = torch.randn(3, 4)
    loss = SADQNLoss(SAConfig(solver=SolverConfig(solver), schedule=EpsSchedule(**NOW)))
    loss.setup({"q": net}, _Cfg())
    lb, ub = loss.bounds_of(net, x, eps, scaled(eps), step=50)
    lb0, ub0 = loss.bounds_of(net, x, eps, ThreatModel(eps=eps), step=50)
    assert not torch.allclose(ub - lb, ub0 - lb0)  # the scale changes the set
    a = net(x).argmax(1)
    m = loss.margins_of(net, x, a, eps, scaled(eps), step=50)
    outside = False
    with torch.no_grad():
        for p in corners_and_samples(x, eps):
            q = net(p)
            assert (q >= lb - 1e-5).all() and (q <= ub + 1e-5).all()
            marg = q.gather(1, a[:, None]) - q
            assert ((marg >= m - 1e-5) | torch.isinf(m)).all()  # +inf at the label
            outside |= bool(((p - x).abs() > eps + 1e-6).any())
    assert outside  # the scaled set reaches beyond the plain eps-ball


def test_radial_car_wocar_use_the_scaled_ball():
    net, eps = mlp_q(), 0.3
    x = torch.randn(3, 4)
    for loss in (RadialDQNLoss(RadialConfig(schedule=EpsSchedule(**NOW))),
                 CARDQNLoss(CARConfig(schedule=EpsSchedule(**NOW))), wocar(mlp_q())):
        loss.setup({"q": net}, _Cfg())
        lb, ub = loss.bounds_of(net, x, eps, scaled(eps), step=50)
        with torch.no_grad():
            for p in corners_and_samples(x, eps, n=50):
                q = net(p)
                assert (q >= lb - 1e-5).all() and (q <= ub + 1e-5).all()


def test_pgd_states_inside_the_scaled_set():
    net, eps = mlp_q(), 0.3
    x = torch.randn(6, 4)
    xa = pgd_states(lambda z: net(z).sum(1), x, scaled(eps), eps, steps=5)
    d = ((xa - x).abs() / torch.tensor(SCALE)).max()
    assert float(d) <= eps * (1 + 1e-5)
    assert bool(((xa - x).abs() > eps * 0.5 + 1e-6).any(0)[1])  # dim 1 (scale 2) used


def test_sortnet_margin_uses_the_largest_scaled_shift():
    net = build_network({"type": "lipschitz_q", "in_dim": 4, "n_out": 2, "hidden": 8,
                         "depth": 2, "scale": 1.0})
    x = torch.randn(1, 4)
    loss = SortNetLoss(SortNetConfig(kappa=1.0, c=100.0, schedule=EpsSchedule(**NOW)))
    loss.setup({"q": net}, _Cfg())
    q = net(x).detach()
    val, _ = loss(ctx({"obs": x, "q": torch.zeros(1)}, {"q": net}, scaled(0.1)))
    gap = float(q.max() - q.min())
    assert float(val) == pytest.approx(-(gap - 2 * 1.0 * 0.1 * 2.0), abs=1e-5)


def test_radial_dueling_advantage_bounds_contain_the_scaled_set():
    net, eps = mlp_q(dueling=True, stream_hidden=8), 0.3
    loss = RadialDQNLoss(RadialConfig(schedule=EpsSchedule(**NOW)))
    loss.setup({"q": net}, _Cfg())
    x = torch.randn(3, 4)
    lb, ub = loss.q_bounds(net, x, eps, scaled(eps), step=50)
    with torch.no_grad():
        v = net.value(x)
        for p in corners_and_samples(x, eps, n=100):
            a = net(p) - net.value(p)  # the centred advantage at p
            assert (a + v >= lb - 1e-5).all() and (a + v <= ub + 1e-5).all()


# ------------------------------------------------------------------ CAR-DQN --trades


@pytest.mark.parametrize("kappa_end", [None, 0.0, 0.8, 1.0])
def test_car_trades_form_equals_its_formula(kappa_end):
    """CAR: sum_i p_i h(delta_i), p = softmax(h / lambda); with kappa_end (the reference's
    --trades) kappa mean h(TD) + (1 - kappa) of it. Q0 = 2x is exact under IBP: over
    [x - e, x + e] its bounds are 2x -+ 2e."""
    net, eps, lam = linear_q(), 0.25, 0.5
    loss = CARDQNLoss(CARConfig(schedule=EpsSchedule(**NOW), lam=lam, kappa_end=kappa_end))
    loss.setup({"q": net}, _Cfg())
    x, y = torch.tensor([[0.5], [1.0]]), torch.tensor([0.2, 3.0])
    batch = {"obs": x, "actions": torch.tensor([0, 0]), "td_target": y}
    td = torch.tensor([0.3, 0.7])  # any per-sample TD loss: only its mean enters
    got, _ = loss.modify_td_loss(td, ctx(batch, {"q": net}, eps))
    delta = [max(abs(2 * xi + 2 * eps - yi), abs(2 * xi - 2 * eps - yi))
             for xi, yi in ((0.5, 0.2), (1.0, 3.0))]
    h = torch.tensor([huber(d) for d in delta])
    p = torch.softmax(h / lam, dim=0)
    worst = float((p * h).sum())
    want = worst if kappa_end is None else kappa_end * 0.5 + (1 - kappa_end) * worst
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)


def test_car_trades_weight_checked_and_old_configs_mean_the_soft_max_alone():
    with pytest.raises(ValueError, match="kappa_end"):
        CARConfig(kappa_end=1.5)
    old = make_loss("dqn", "car").config()
    assert "kappa_end" not in old  # left out at None: earlier CAR runs keep their run group
    assert loss_from_config(old).cfg.kappa_end is None
    trades = make_loss("dqn", "car", kappa_end=0.8)
    assert loss_from_config(trades.config()).cfg.kappa_end == 0.8
