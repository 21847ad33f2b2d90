"""State certificates: soundness against PGD and MILP, tightness ladder, smoothing, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm as _norm
from torch import nn

import bounds
from certrl.agent import shipped_agents
from certrl.attacks import pgd
from certrl.certify import (
    CertifyOptions,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    certify_states,
    rollout,
)
from certrl.threat import ThreatModel

SHIPPED = "cartpole-dqn-vanilla"
has_shipped = pytest.mark.skipif(SHIPPED not in shipped_agents(), reason="no shipped agent")
SOUND = ("ibp", "crown", "crown-ibp", "alpha-crown")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


BARE = CertifyOptions(radius=False, q_values=False)  # action certificate only


def small_net(seed: int = 0, din: int = 4, width: int = 8, dout: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, dout)).eval()


def strong_pgd_flips(net, x, labels, eps, restarts=20, steps=30) -> torch.Tensor:
    """(B,) bool: some PGD restart (margin objective) found x' with another argmax."""
    tm = ThreatModel(eps=eps)
    flipped = torch.zeros(x.shape[0], dtype=torch.bool)
    for r in range(restarts):
        g = torch.Generator().manual_seed(r)
        xa = pgd(net, x, tm, eps, steps=steps, step_size=eps / 4, objective="margin",
                 labels=labels, generator=g)
        assert ((xa - x).abs() <= eps * (1 + 1e-5)).all()
        with torch.no_grad():
            flipped |= net(xa).argmax(1) != labels
    return flipped


@has_shipped
def test_pgd_never_flips_sound_certificates_shipped_agent():
    import certrl

    agent = certrl.load(SHIPPED)
    ep = rollout(agent, 1, seed=0, max_steps=80)[0]
    net = agent.bounded_form()
    x = ep.x
    for eps in (0.005, 0.02):
        labels = net(x).argmax(1)
        flipped = strong_pgd_flips(net, x, labels, eps, restarts=10, steps=20)
        for m in SOUND:
            c = certify_states(net, x, eps, m, options=BARE)[0]
            assert (c.action == labels.numpy()).all()
            bad = c.certified & flipped.numpy()
            assert not bad.any(), f"{m} certified a state PGD flipped at eps {eps}"
        # PGD is strong enough to find flips at states that are not certified
    assert flipped.any()


@pytest.mark.parametrize("seed", [0, 1])
def test_pgd_never_flips_sound_certificates_random_net(seed):
    net = small_net(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=g)
    labels = net(x).argmax(1)
    for eps in (0.05, 0.2):
        flipped = strong_pgd_flips(net, x, labels, eps).numpy()
        for m in (*SOUND, "exact"):
            c = certify_states(net, x, eps, m, options=BARE)[0]
            assert not (c.certified & flipped).any(), m
        # sampled points too: certified action is the argmax everywhere
        c = certify_states(net, x, eps, "crown", options=BARE)[0]
        pts = x + eps * (2 * torch.rand((200, *x.shape), generator=g) - 1)
        with torch.no_grad():
            arg = net(pts).argmax(-1)
        ok = (arg == labels).all(0).numpy()
        assert ok[c.certified].all()


def test_sound_margins_never_exceed_milp_optimum():
    for seed in (0, 3):
        net = small_net(seed)
        g = torch.Generator().manual_seed(seed + 10)
        x = torch.randn(6, 4, generator=g)
        for eps in (0.05, 0.15):
            ex = certify_states(net, x, eps, "exact", options=BARE)[0]
            assert all(s == "optimal" for s in ex.extra["milp_status"])
            for m in SOUND:
                c = certify_states(net, x, eps, m, options=BARE)[0]
                fin = np.isfinite(ex.margin_lower)
                assert (c.margin_lower[fin] <= ex.margin_lower[fin] + 1e-4).all(), m
                # certified by a bound method => certified exactly
                assert (~c.certified | ex.certified).all()


def test_radius_ladder_exact_alpha_crown_crown_ibp():
    net = small_net(2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 4, generator=g)
    rc = RadiusConfig(init=0.05, rtol=0.03, max_iter=6)
    radii = {}
    for m in ("ibp", "crown", "alpha-crown", "exact"):
        radii[m] = certify_states(net, x, 0.05, m,
                                  options=CertifyOptions(radius=rc, q_values=False))[0].radius
    assert (radii["exact"] >= radii["alpha-crown"] - 1e-12).all()
    assert (radii["alpha-crown"] >= radii["crown"] - 1e-12).all()
    assert (radii["crown"] >= radii["ibp"] - 1e-12).all()
    assert (radii["exact"] > radii["ibp"]).any()
    # every reported radius is itself verified
    for m in ("ibp", "crown"):
        r = torch.as_tensor(radii[m], dtype=torch.float32).reshape(-1, 1)
        keep = r[:, 0] > 0
        ball = bounds.LpBall(x[keep], r[keep])
        ml = bounds.margin_lower(net, ball, net(x[keep]).argmax(1), method=m)
        assert bounds.certified(ml).all()


def test_radius_is_at_least_every_certified_grid_eps():
    net = small_net(1)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    res = certify_states(net, x, [0.01, 0.05, 0.1], "crown")
    for c in res:
        assert (c.radius[c.certified] >= c.eps).all()
        assert np.array_equal(c.radius, res[0].radius)


def test_value_and_q_bounds_contain_sampled_values():
    net = small_net(4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g)
    eps = 0.1
    c = certify_states(net, x, eps, "crown", options=CertifyOptions(radius=False))[0]
    pts = x + eps * (2 * torch.rand((300, *x.shape), generator=g) - 1)
    with torch.no_grad():
        q = net(pts).double().numpy()
    assert (q >= c.output_lower - 1e-5).all() and (q <= c.output_upper + 1e-5).all()
    v = q.max(-1)
    assert (v >= c.value_lower - 1e-5).all() and (v <= c.value_upper + 1e-5).all()
    # the worst reachable value lower-bounds the clean Q of any action the attack induces
    clean = c.output
    induced = q.argmax(-1)  # (300, B)
    q_induced = np.take_along_axis(np.broadcast_to(clean, (300, *clean.shape)),
                                   induced[..., None], -1)[..., 0]
    assert (q_induced >= c.worst_value - 1e-9).all()
    row = c.state_row(0)
    assert row["certificate_kind"] == "sound" and len(row["q_lower"]) == 3


def test_continuous_action_mean_bounds_and_deviation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).eval()
    x = torch.randn(8, 3)
    eps = 0.05
    c = certify_states(net, x, eps, "crown", kind="continuous")[0]
    assert c.action is None and c.certified is None and c.radius is None
    pts = x + eps * (2 * torch.rand((200, *x.shape)) - 1)
    with torch.no_grad():
        mu_p = net(pts).double().numpy()
    dev = np.abs(mu_p - c.output).max(0)
    assert (dev <= c.deviation + 1e-5).all()
    assert np.allclose(c.max_deviation, c.deviation.max(1))
    c2 = certify_states(net, x, eps, "ibp", kind="continuous",
                        options=CertifyOptions(deviation_tol=1e9))[0]
    assert c2.certified.all()


def test_smoothing_radius_matches_hand_computation():
    # a constant classifier: every noisy sample votes for action 1
    net = nn.Sequential(nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.zeros(3, 4)
    sig, n, alpha = 0.5, 500, 0.01
    res = certify_states(net, x, [0.1, 0.5], "smoothing",
                         options=CertifyOptions(smoothing=SmoothingConfig(sigma=sig, n0=50,
                                                                          n=n, alpha=alpha)))
    pA = alpha ** (1.0 / n)  # Clopper-Pearson lower bound with n successes out of n
    r2 = sig * _norm.ppf(pA)
    c = res[0]
    assert c.certificate_kind == "probabilistic"
    assert np.allclose(c.extra["radius_l2"], r2, rtol=1e-9)
    assert np.allclose(c.radius, r2 / 2.0, rtol=1e-6)  # l_inf radius = R / sqrt(d), d = 4
    assert (c.action == 1).all()
    # l_inf eps -> l2 eps * sqrt(4) = 2 eps, explicit in the record
    row = c.state_row(0)
    assert row["eps_l2"] == pytest.approx(0.2) and row["bound_type"] == "l2"
    assert row["n"] == n and row["alpha"] == alpha and row["sigma"] == sig
    assert "sqrt(d)" in row["conversion"]
    assert c.certified.all() == (0.2 < r2)
    assert res[1].certified.any() == (1.0 < r2)


def test_lipschitz_method_closed_form_and_errors():
    torch.manual_seed(0)
    net = bounds.LipschitzMLP(4, 3, hidden=16, depth=2).eval()
    x = torch.randn(12, 4)
    out = net(x).detach().double()
    top2 = out.topk(2, 1).values
    c = certify_states(net, x, [0.01, 0.1], "lipschitz")
    expect = ((top2[:, 0] - top2[:, 1]) / 2).numpy()
    assert np.allclose(c[0].radius, expect, rtol=1e-4, atol=1e-6)
    assert (c[0].radius <= expect + 1e-12).all()
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    assert np.array_equal(c[1].certified, margin - 0.2 > 1e-5) or \
        (c[1].certified <= (margin > 0.2)).all()
    # sampled: certified action stays the argmax
    pts = x + 0.1 * (2 * torch.rand((200, *x.shape)) - 1)
    with torch.no_grad():
        arg = net(pts.reshape(-1, 4)).argmax(-1).reshape(200, -1)
        ok = (arg == out.argmax(1)).all(0).numpy()
    assert ok[c[1].certified].all()
    with pytest.raises(ValueError, match="bounds.lipschitz layers"):
        certify_states(small_net(), torch.zeros(2, 4), 0.1, "lipschitz")


def test_exact_refuses_large_or_conv_nets():
    big = nn.Sequential(nn.Linear(4, 300), nn.ReLU(), nn.Linear(300, 2))
    with pytest.raises(ValueError, match="too large"):
        certify_states(big, torch.zeros(2, 4), 0.1, "exact")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(ValueError, match="ReLU MLPs only"):
        certify_states(conv, torch.zeros(2, 1, 6, 6), 0.1, "exact")
    # a raised limit lets it through
    c = certify_states(big, torch.zeros(1, 4), 0.0, "exact",
                       options=CertifyOptions(radius=False, exact=ExactConfig(max_relus=400),
                                              q_values=False))[0]
    assert c.certificate_kind == "sound"


@pytest.mark.parametrize("bad,match", [
    (dict(eps=-0.1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(method="magic"), "unknown method"),
    (dict(x=torch.tensor([[0.0, float("nan"), 0.0, 0.0]])), "NaN"),
    (dict(x=torch.zeros(2, 5)), "does not fit"),
    (dict(x=torch.zeros(4)), "batch"),
    (dict(kind="continuous", method="smoothing"), "discrete"),
])
def test_bad_input_errors(bad, match):
    kw = dict(x=torch.zeros(2, 4), eps=0.1, method="crown")
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        certify_states(small_net(), kw.pop("x"), kw.pop("eps"), kw.pop("method"), **kw)


def test_every_record_has_a_kind():
    net = small_net()
    x = torch.randn(3, 4)
    for m in ("ibp", "smoothing"):
        c = certify_states(net, x, 0.01, m,
                           options=CertifyOptions(smoothing=SmoothingConfig(n=100)))[0]
        assert c.state_row(0)["certificate_kind"] in ("sound", "probabilistic")
        assert math.isfinite(c.state_row(0)["time_s"])


def test_lipschitz_q_network_with_declared_constant():
    from certrl.nets import NETWORKS, build_network

    if "lipschitz_q" not in NETWORKS:
        pytest.skip("no lipschitz_q network type")
    net = build_network({"type": "lipschitz_q", "in_dim": 4, "n_out": 2, "hidden": 16,
                         "depth": 2, "scale": 10.0}).eval()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    c = certify_states(net, x, [0.001, 0.01], "lipschitz")
    q = net(x).detach().double()
    t = q.topk(2, 1).values
    assert np.allclose(c[0].radius, ((t[:, 0] - t[:, 1]) / 20).numpy(), rtol=1e-4, atol=1e-7)
    pts = x + 0.01 * (2 * torch.rand((200, *x.shape)) - 1)
    with torch.no_grad():
        arg = net(pts.reshape(-1, 4)).argmax(-1).reshape(200, -1)
    assert (arg == q.argmax(1)).all(0).numpy()[c[1].certified].all()
    with pytest.raises(ValueError, match="use --method lipschitz"):
        certify_states(net, x, 0.01, "crown")
