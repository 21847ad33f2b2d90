"""Exact worst-case margins (MILP) and the LP relaxation."""

import math

import pytest
import torch
from torch import nn

from bounds import Normalize
from bounds.exact import lp_margin, milp_margin
from bounds.lipschitz import global_lipschitz

INF = float("inf")


def abs_net() -> nn.Sequential:
    """f_0(x) = |x_1| + |x_2| (via ReLU(x) + ReLU(-x)), f_1(x) = 0.5, f_2(x) = x_1 - x_2."""
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [1, -1, -1, 1]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
    return net


def random_net(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def sample_ball(x, eps, n, lower=None, upper=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = x.numel()
    u = torch.empty(n, d).uniform_(-1, 1, generator=g)
    u[: n // 2] = torch.sign(u[: n // 2])  # corners
    pts = x.reshape(1, -1) + eps * u
    if lower is not None:
        pts = pts.clamp_min(lower)
    if upper is not None:
        pts = pts.clamp_max(upper)
    return pts


def test_hand_set_net_exact_answers():
    net = abs_net()
    x = torch.tensor([[1.0, 1.0], [0.2, -0.1]])
    # state 0: ball [0.2, 1.8]^2 -> min |x1|+|x2| = 0.4, so f0 - f1 >= -0.1;
    #          f0 - f2 = |x1|+|x2| - x1 + x2 = 2 x2 (x2 > 0) -> min 0.4
    # state 1: ball [-0.8, 1.2] x [-0.9, 1.1] contains 0 -> f0 - f1 min = -0.5;
    #          f0 - f2 = 2 * max(0,-x1) + 2 * max(0, x2) -> min 0
    r = milp_margin(net, x, 0.8, [0, 0])
    assert r.status[0] == ["label", "optimal", "optimal"]
    assert r.values[0].tolist() == pytest.approx([INF, -0.1, 0.4], abs=1e-6)
    assert r.values[1].tolist() == pytest.approx([INF, -0.5, 0.0], abs=1e-6)
    assert r.method == "milp" and r.kind == "sound"
    assert not r.certified.any()
    # witnesses attain the optimum
    assert torch.allclose(r.upper[:, 1:], r.values[:, 1:], atol=1e-6)
    # with the domain box [0.5, 2]^2 the minimum of |x1|+|x2| moves to 1.0
    rb = milp_margin(net, x[:1], 0.8, 0, lower=0.5, upper=2.0)
    assert rb.values[0].tolist() == pytest.approx([INF, 0.5, 1.0], abs=1e-6)
    assert bool(rb.certified[0])
    # per-dimension eps (a box): [0.9, 1.1] x [0.2, 1.8]
    re = milp_margin(net, x[:1], torch.tensor([0.1, 0.8]), 0)
    assert re.values[0, 1].item() == pytest.approx(0.9 + 0.2 - 0.5, abs=1e-6)
    # eps = 0 gives the margins at x itself
    r0 = milp_margin(net, x, 0.0, [0, 0])
    with torch.no_grad():
        out = net(x).double()
    assert torch.allclose(r0.values[:, 1:], out[:, :1] - out[:, 1:], atol=1e-6)


def test_milp_below_samples_and_above_lp():
    net = random_net([4, 16, 16, 3], seed=1)
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    with torch.no_grad():
        labels = net(x).argmax(1)
    eps = 0.25
    milp = milp_margin(net, x, eps, labels)
    lp = lp_margin(net, x, eps, labels)
    assert lp.method == "lp"
    assert all(s in ("optimal", "label") for row in milp.status for s in row)
    finite = torch.isfinite(milp.values)
    assert (lp.values[finite] <= milp.values[finite] + 1e-6).all()
    assert (lp.values[finite] < milp.values[finite] - 1e-4).any()  # the LP is looser here
    assert (milp.num_unstable > 0).all()
    for b in range(3):
        pts = sample_ball(x[b], eps, 4000, seed=b)
        with torch.no_grad():
            out = net(pts).double()
        marg = out[:, labels[b]:labels[b] + 1] - out
        for j in range(3):
            if j == labels[b]:
                continue
            assert milp.values[b, j] <= marg[:, j].min() + 1e-6
            # exact: the witness attains the optimum (and lies in the ball)
            assert milp.upper[b, j] == pytest.approx(milp.values[b, j].item(), abs=1e-5)
            w = milp.witness[b, j]
            assert (w - x[b].double()).abs().max() <= eps + 1e-7


def test_milp_matches_dense_grid_on_2d_net():
    net = random_net([2, 12, 12, 3], seed=3)
    x = torch.tensor([[0.3, -0.2]])
    with torch.no_grad():
        label = int(net(x).argmax(1))
    eps, n = 0.4, 801
    milp = milp_margin(net, x, eps, label)
    g = torch.linspace(-eps, eps, n)
    grid = x + torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        out = net(grid).double()
    gmin = (out[:, label:label + 1] - out).min(0).values
    # each margin f_a - f_j is 2L-Lipschitz in l_inf; every ball point is within h/2 of the grid
    slack = 2 * global_lipschitz(net, INF) * (2 * eps / (n - 1)) / 2
    for j in range(3):
        if j == label:
            continue
        assert milp.values[0, j] <= gmin[j] + 1e-6
        assert milp.values[0, j] >= gmin[j] - slack
        assert milp.values[0, j] == pytest.approx(gmin[j].item(), abs=2e-3)


def test_normalize_flatten_identity_supported():
    base = random_net([3, 8, 2], seed=4)
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([0.5, 2.0, 1.0])
    net = nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Identity(), *base)
    x = torch.tensor([[0.2, 0.1, -0.3]])
    r = milp_margin(net, x, 0.1, 0)
    # equivalent: the base net on the normalized input, per-dimension eps / std
    r2 = milp_margin(base, (x - mean) / std, 0.1 / std, 0)
    assert r.values[0, 1].item() == pytest.approx(r2.values[0, 1].item(), abs=1e-6)


def test_sound_bound_methods_below_milp():
    api = pytest.importorskip("bounds.api")
    from bounds import LpBall

    net = random_net([4, 10, 10, 3], seed=5)
    torch.manual_seed(1)
    x = torch.randn(2, 4)
    with torch.no_grad():
        labels = net(x).argmax(1)
    eps = 0.15
    milp = milp_margin(net, x, eps, labels)
    crown = milp_margin(net, x, eps, labels, preact="crown")
    assert torch.allclose(crown.values, milp.values, atol=1e-5)  # tighter big-M, same optimum
    for method in ("ibp", "crown"):
        lb = api.margin_lower(net, LpBall(x, eps), labels, method=method).double()
        finite = torch.isfinite(milp.values)
        assert (lb[finite] <= milp.values[finite] + 1e-5).all()


def test_time_limit_reports_sound_dual_bound():
    net = random_net([20, 64, 64, 4], seed=6)
    torch.manual_seed(2)
    x = torch.randn(1, 20)
    r = milp_margin(net, x, 0.3, 0, time_limit=0.05, max_relus=1000)
    stats = {s for s in r.status[0][1:]}
    assert stats <= {"optimal", "time_limit"}
    assert "time_limit" in stats
    pts = sample_ball(x[0], 0.3, 2000)
    with torch.no_grad():
        out = net(pts).double()
    for j in range(1, 4):
        assert r.values[0, j] <= (out[:, 0] - out[:, j]).min() + 1e-6
        if not math.isnan(r.upper[0, j]):
            assert r.values[0, j] <= r.upper[0, j] + 1e-6


def test_too_large_or_unsupported_raises():
    big = random_net([10, 64, 64, 3], seed=7)
    x = torch.zeros(1, 10)
    with pytest.raises(ValueError, match="exact: network too large"):
        milp_margin(big, x, 1.0, 0, max_relus=20)
    with pytest.raises(ValueError, match="exact: unsupported layer Tanh"):
        milp_margin(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)),
                    torch.zeros(1, 2), 0.1, 0)
    with pytest.raises(ValueError, match="eps"):
        milp_margin(abs_net(), torch.zeros(1, 2), -0.1, 0)
    with pytest.raises(ValueError, match="label"):
        milp_margin(abs_net(), torch.zeros(2, 2), 0.1, [0, 1, 2])
