"""Soundness by sampling: no point of the perturbation set escapes the bounds."""

import math

import pytest
import torch

import bounds
from tests.conftest import NETS, sample_ball

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
NORMS = [math.inf, 2.0, 1.0]
TOL = 1e-5


def _ball(name, x, norm, clip, eps=0.08):
    if clip:
        return bounds.LpBall(x, eps, norm=norm, lower=0.0, upper=1.0)
    return bounds.LpBall(x, eps, norm=norm)


@pytest.mark.parametrize("backend", ["native", "lirpa"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
def test_bounds_contain_samples(net_and_input, method, norm, clip, backend):
    name, net, x = net_and_input
    slow_lirpa = name == "normalized" or norm != math.inf
    if backend == "lirpa" and method == "alpha-crown" and slow_lirpa:
        pytest.skip("auto_LiRPA alpha-CROWN is slow: tested on l_inf only, Tanh heads natively")
    ball = _ball(name, x, norm, clip)
    with torch.no_grad():
        lb, ub = bounds.compute(net, ball, method=method, backend=backend, alpha_iterations=5)
        g = torch.Generator().manual_seed(7)
        pts = sample_ball(ball, 256, g)
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(256, x.shape[0], -1)
    assert lb.shape == ub.shape == out.shape[1:]
    assert (lb <= ub + TOL).all()
    assert (out >= lb - TOL).all(), f"sample below lb by {(lb - out).max():.3g}"
    assert (out <= ub + TOL).all(), f"sample above ub by {(out - ub).max():.3g}"


@pytest.mark.parametrize("method", METHODS)
def test_margin_lower_below_sampled_margins(net_and_input, method):
    name, net, x = net_and_input
    ball = bounds.LpBall(x, 0.05, lower=0.0, upper=1.0)
    with torch.no_grad():
        labels = net(x).argmax(1)
        lbm = bounds.margin_lower(net, ball, labels, method=method)
        pts = sample_ball(ball, 512, torch.Generator().manual_seed(3))
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(512, x.shape[0], -1)
    own = out.gather(2, labels.reshape(1, -1, 1).expand(512, -1, 1))
    margins = own - out  # (n, B, K)
    K = out.shape[-1]
    assert lbm.shape == (x.shape[0], K)
    assert torch.isinf(lbm.gather(1, labels[:, None])).all()
    mask = torch.ones_like(lbm, dtype=torch.bool).scatter_(1, labels[:, None], False)
    assert (margins.min(0).values[mask] >= lbm[mask] - TOL).all()
    # certified -> every sample keeps the label
    cert = bounds.certified(lbm)
    if cert.any():
        assert (out.argmax(-1)[:, cert] == labels[cert]).all()


@pytest.mark.parametrize("name", sorted(NETS))
def test_tightness_ladder_and_monotone_in_eps(name):
    make, shape = NETS[name]
    net = make()
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(2))
    widths = {}
    with torch.no_grad():
        for m in METHODS:
            lbs, prev = [], None
            for eps in (0.01, 0.03, 0.06):
                lb, ub = bounds.compute(net, bounds.LpBall(x, eps), m)
                if prev is not None:  # larger ball, wider bounds
                    assert (lb <= prev[0] + TOL).all() and (ub >= prev[1] - TOL).all()
                prev = (lb, ub)
                lbs.append((lb, ub))
            widths[m] = lbs[-1]
    cr, acr = widths["crown"], widths["alpha-crown"]
    assert (acr[0] >= cr[0] - TOL).all() and (acr[1] <= cr[1] + TOL).all()
    ci, ib = widths["crown-ibp"], widths["ibp"]
    # CROWN-IBP's final layer is at least as tight as IBP with the same intermediates
    assert (ci[0] >= ib[0] - 1e-4).all() and (ci[1] <= ib[1] + 1e-4).all()


def test_per_dimension_eps_and_zero_eps():
    net = NETS["mlp"][0]()
    x = torch.rand(2, 6)
    eps = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.05, 0.0])
    for norm in NORMS:
        ball = bounds.LpBall(x, eps, norm=norm)
        with torch.no_grad():
            lb, ub = bounds.compute(net, ball, "crown")
            pts = sample_ball(ball, 256, torch.Generator().manual_seed(0))
            out = net(pts.reshape(-1, 6)).reshape(256, 2, -1)
        assert (out >= lb - TOL).all() and (out <= ub + TOL).all()
    with torch.no_grad():
        lb, ub = bounds.compute(net, bounds.LpBall(x, 0.0), "crown")
        torch.testing.assert_close(lb, net(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ub, net(x), rtol=1e-5, atol=1e-5)
