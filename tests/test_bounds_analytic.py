"""Tiny hand-set networks with known exact bounds, autograd, and error messages."""

import math

import pytest
import torch
from torch import nn

import bounds
from tests.conftest import make_cnn, make_mlp

ALL = ["ibp", "crown-ibp", "crown", "alpha-crown"]


def _linear(W, b):
    lin = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    return lin


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_single_linear_layer_is_exact(method, norm):
    W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    b = torch.tensor([0.5, -1.0])
    net = nn.Sequential(_linear(W, b))
    x = torch.tensor([[0.1, 0.2, 0.3]])
    eps = 0.1
    lb, ub = bounds.compute(net, bounds.LpBall(x, eps, norm=norm), method)
    q = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[norm]
    dev = torch.linalg.vector_norm(W, ord=q, dim=1) * eps
    c = x @ W.T + b
    torch.testing.assert_close(lb, c - dev)
    torch.testing.assert_close(ub, c + dev)


@pytest.mark.parametrize("method", ALL)
def test_relu_of_symmetric_interval(method):
    """f(x) = relu(x) on [-1, 1]: exact range [0, 1] for every method."""
    net = nn.Sequential(_linear(torch.eye(1), torch.zeros(1)), nn.ReLU())
    lb, ub = bounds.compute(net, bounds.LpBall(torch.zeros(1, 1), 1.0), method)
    torch.testing.assert_close(lb, torch.zeros(1, 1))
    torch.testing.assert_close(ub, torch.ones(1, 1))


def test_identity_through_relus_crown_beats_ibp():
    """f(x) = relu(x) - relu(-x) = x on [c - e, c + e]: CROWN's margin bound vs IBP."""
    net = nn.Sequential(
        _linear(torch.tensor([[1.0], [-1.0]]), torch.zeros(2)),
        nn.ReLU(),
        _linear(torch.tensor([[1.0, -1.0]]), torch.zeros(1)),
    )
    x = torch.tensor([[0.5]])
    ball = bounds.LpBall(x, 1.0)  # x' in [-0.5, 1.5], exact range [-0.5, 1.5]
    lb_i, ub_i = bounds.compute(net, ball, "ibp")
    torch.testing.assert_close(lb_i, torch.tensor([[-0.5]]))  # 0 - 0.5
    torch.testing.assert_close(ub_i, torch.tensor([[1.5]]))
    lb_c, ub_c = bounds.compute(net, ball, "crown")
    assert lb_c.item() <= -0.5 + 1e-6 and ub_c.item() >= 1.5 - 1e-6
    # the clipped domain [0, 1] makes both exact: [0, 1]
    clipped = bounds.LpBall(x, 1.0, lower=0.0, upper=1.0)
    for m in ALL:
        lb, ub = bounds.compute(net, clipped, m)
        torch.testing.assert_close(lb, torch.tensor([[0.0]]))
        torch.testing.assert_close(ub, torch.tensor([[1.0]]))


def test_margin_of_identity_network_is_exact():
    """f(x) = x: min (x0 - xj) over the l_inf ball is (c0 - cj) - 2 eps."""
    net = nn.Sequential(_linear(torch.eye(3), torch.zeros(3)))
    x = torch.tensor([[1.0, 0.2, 0.9]])
    for m in ALL:
        lbm = bounds.margin_lower(net, bounds.LpBall(x, 0.1), [0], method=m)
        slack = 1e-5 * (1 + 1.0)  # float32 rounding allowance: 1e-5 (1 + max |f(x)|)
        torch.testing.assert_close(lbm[0, 1:], torch.tensor([0.6, -0.1]) - slack)
        assert math.isinf(lbm[0, 0]) and lbm[0, 0] > 0
    assert not bounds.certified(lbm).item()


def test_margin_lower_has_float32_rounding_allowance():
    """Regression: a margin bound of +3e-7 on outputs near 8 (below one float32 ulp)
    was reported certified while PGD found a float32 flip. A margin that is only
    positive within rounding must not certify."""
    net = nn.Sequential(_linear(torch.eye(2), torch.tensor([8.0, 8.0])))
    x = torch.tensor([[0.2 + 3e-7, 0.2]])
    lbm = bounds.margin_lower(net, bounds.LpBall(x, 0.0), [0], method="crown")
    assert not bounds.certified(lbm).item()
    far = bounds.margin_lower(net, bounds.LpBall(torch.tensor([[0.3, 0.2]]), 0.01), [0], "crown")
    assert bounds.certified(far).item()


def test_tanh_bounds_contain_exact_range():
    net = nn.Sequential(_linear(torch.eye(1), torch.zeros(1)), nn.Tanh())
    for c, e in [(0.0, 2.0), (1.0, 0.5), (-3.0, 0.1), (0.3, 1e-4)]:
        lo, hi = math.tanh(c - e), math.tanh(c + e)
        for m in ALL:
            lb, ub = bounds.compute(net, bounds.LpBall(torch.tensor([[c]]), e), m)
            assert lb.item() <= lo + 1e-6 and ub.item() >= hi - 1e-6
            assert lb.item() >= lo - 0.5 and ub.item() <= hi + 0.5


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
def test_gradients_reach_every_parameter(method):
    for net, x in [(make_mlp(), torch.rand(4, 6)), (make_cnn(), torch.rand(2, 2, 9, 9))]:
        net.zero_grad()
        lb, ub = bounds.compute(net, bounds.LpBall(x, 0.05), method)
        (ub - 2 * lb).sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_no_grad_gives_detached_bounds():
    net = make_mlp()
    with torch.no_grad():
        lb, ub = bounds.compute(net, bounds.LpBall(torch.rand(2, 6), 0.05), "crown")
    assert not lb.requires_grad and not ub.requires_grad


def test_alpha_crown_leaves_parameter_grads_untouched():
    net = make_mlp()
    bounds.compute(net, bounds.LpBall(torch.rand(2, 6), 0.05), "alpha-crown")
    with torch.no_grad():
        bounds.compute(net, bounds.LpBall(torch.rand(2, 6), 0.05), "alpha-crown")
    assert all(p.grad is None for p in net.parameters())


def test_unsupported_layer_error_names_layer_and_suggests_lirpa():
    net = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(), nn.Linear(4, 2))
    with pytest.raises(bounds.UnsupportedLayerError, match=r"LeakyReLU.*backend=\"lirpa\""):
        bounds.compute(net, bounds.LpBall(torch.zeros(1, 3), 0.1), "crown")


def test_bad_arguments():
    net = make_mlp()
    ball = bounds.LpBall(torch.zeros(2, 6), 0.1)
    with pytest.raises(ValueError, match="unknown method"):
        bounds.compute(net, ball, "deeppoly")
    with pytest.raises(ValueError, match="unknown backend"):
        bounds.compute(net, ball, "crown", backend="gpu")
    with pytest.raises(ValueError, match="does not fit"):
        bounds.compute(net, bounds.LpBall(torch.zeros(2, 5), 0.1), "crown")
    with pytest.raises(ValueError, match="C must have shape"):
        bounds.compute(net, ball, "crown", C=torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="labels"):
        bounds.margin_lower(net, ball, [0, 9])
    with pytest.raises(ValueError, match="entries"):
        bounds.margin_lower(net, ball, [0])
    with pytest.raises(TypeError, match="LpBall"):
        bounds.compute(net, torch.zeros(2, 6), "crown")


def test_preactivation_bounds_contain_samples():
    net = make_mlp()
    x = torch.rand(2, 6)
    ball = bounds.LpBall(x, 0.1)
    with torch.no_grad():
        pre = bounds.preactivation_bounds(net, ball, "crown")
        pts = x + (torch.rand(300, 2, 6) * 2 - 1) * 0.1
        h1 = net[0](pts)
        h2 = net[2](net[1](h1))
    assert len(pre) == 2
    for (lo, up), h in zip(pre, (h1, h2)):
        assert (h >= lo - 1e-5).all() and (h <= up + 1e-5).all()


def test_tanh_crown_gradient_is_finite_on_narrow_boxes_near_zero():
    """Pre-activations ~0 with widths < 1e-6: the tanh relaxation's slope is exactly 1 in
    float32 and acosh'(1) is infinite; the stationary points are detached (g'(xs) = 0), so
    CROWN's gradient stays finite (it was NaN on all 80 of these cases)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        net[0].bias.zero_()
        net[2].bias.zero_()
    for eps in (1e-7, 1e-6, 1e-5):
        x = (torch.randn(4, 3) * 1e-4).requires_grad_(True)
        lb, ub = bounds.compute(net, bounds.LpBall(x, eps), "crown")
        (ub - lb).sum().backward()
        assert torch.isfinite(net[0].weight.grad).all() and torch.isfinite(x.grad).all()
        net.zero_grad()
