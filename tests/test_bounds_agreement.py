"""Native engine vs auto_LiRPA: the same method gives the same numbers."""

import math

import pytest
import torch

import bounds
from tests.conftest import shared_net

RTOL, ATOL = 1e-4, 1e-5


def _inputs(name, B=3):
    shape = {"mlp": (6,), "cnn": (2, 9, 9), "normalized": (6,)}[name]
    return torch.rand((B, *shape), generator=torch.Generator().manual_seed(11))


def _spec(net, x, kind):
    if kind is None:
        return None
    with torch.no_grad():
        K = net(x[:1]).shape[1]
    if kind == "margin":
        return bounds.margin_spec(net(x).argmax(1), K)
    g = torch.Generator().manual_seed(5)
    return torch.randn(x.shape[0], 2, K, generator=g)


@pytest.mark.parametrize("spec", [None, "margin", "random"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "normalized"])
def test_native_equals_lirpa_linf(name, method, clip, spec):
    net = shared_net(name)
    if name == "normalized" and method != "ibp":
        pytest.skip("Tanh relaxations differ by design (see docs/bounds.md); soundness tested")
    x = _inputs(name)
    ball = bounds.LpBall(x, 0.05, lower=0.0 if clip else None, upper=1.0 if clip else None)
    C = _spec(net, x, spec)
    with torch.no_grad():
        a = bounds.compute(net, ball, method, C=C, backend="native")
        b = bounds.compute(net, ball, method, C=C, backend="lirpa")
    torch.testing.assert_close(a[0], b[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(a[1], b[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("norm", [2.0, 1.0])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_native_equals_lirpa_l2_l1_mlp(norm, method):
    net = shared_net("mlp")
    x = _inputs("mlp")
    ball = bounds.LpBall(x, 0.1, norm=norm)
    C = _spec(net, x, "margin")
    for c in (None, C):
        with torch.no_grad():
            a = bounds.compute(net, ball, method, C=c, backend="native")
            b = bounds.compute(net, ball, method, C=c, backend="lirpa")
        torch.testing.assert_close(a[0], b[0], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(a[1], b[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("norm", [2.0, 1.0])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_native_within_lirpa_l2_l1_cnn(norm, method):
    """On CNNs with l2 / l1 balls auto_LiRPA 0.3 bounds the first convolution with
    ||W||_2 * eps for every output pixel (ignoring zero padding, and the dual norm
    for l1); the native engine bounds it exactly, so its bounds lie inside."""
    net = shared_net("cnn")
    x = _inputs("cnn")
    ball = bounds.LpBall(x, 0.1, norm=norm)
    with torch.no_grad():
        a = bounds.compute(net, ball, method, backend="native")
        b = bounds.compute(net, ball, method, backend="lirpa")
    assert (a[0] >= b[0] - ATOL).all() and (a[1] <= b[1] + ATOL).all()


def test_auto_backend_picks_native_or_lirpa():
    net = shared_net("mlp")
    x = _inputs("mlp")
    ball = bounds.LpBall(x, 0.05)
    with torch.no_grad():
        a = bounds.compute(net, ball, "crown", backend="auto")
        b = bounds.compute(net, ball, "crown", backend="native")
    torch.testing.assert_close(a[0], b[0])
    odd = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Sigmoid(), torch.nn.Linear(5, 2))
    assert bounds.unsupported_layers(odd) == ["1:Sigmoid"]
    with torch.no_grad():
        lb, ub = bounds.compute(odd, ball, "crown", backend="auto")
        out = odd(x)
    assert (lb <= out + 1e-6).all() and (out <= ub + 1e-6).all()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_alpha_crown_never_looser_than_crown_both_backends(name):
    net = shared_net(name)
    x = _inputs(name)
    ball = bounds.LpBall(x, 0.08)
    backends = ("native", "lirpa") if name == "mlp" else ("native",)
    with torch.no_grad():
        cr = bounds.compute(net, ball, "crown")
        for backend in backends:
            acr = bounds.compute(net, ball, "alpha-crown", backend=backend, alpha_iterations=10)
            assert (acr[0] >= cr[0] - ATOL).all() and (acr[1] <= cr[1] + ATOL).all()
    assert math.isfinite(float(acr[0].sum()))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_margin_lower_native_equals_lirpa_and_lower_only_path(name, method):
    """margin_lower computes lower bounds only; they equal the two-sided call."""
    net = shared_net(name)
    x = _inputs(name)
    ball = bounds.LpBall(x, 0.05, lower=0.0, upper=1.0)
    with torch.no_grad():
        labels = net(x).argmax(1)
        C = bounds.margin_spec(labels, net(x).shape[1])
        nat = bounds.margin_lower(net, ball, labels, method, alpha_iterations=5)
        both, _ = bounds.compute(net, ball, method, C=C, alpha_iterations=5)
        lb_only, ub_none = bounds.compute(net, ball, method, C=C, bound_upper=False,
                                          alpha_iterations=5)
    assert ub_none is None
    mask = ~torch.isinf(nat)
    if method != "alpha-crown":  # alpha-CROWN optimizes per row: same rows, same result
        torch.testing.assert_close(lb_only, both, rtol=RTOL, atol=ATOL)
        with torch.no_grad():
            lir = bounds.margin_lower(net, ball, labels, method, backend="lirpa")
        torch.testing.assert_close(nat[mask], lir[mask], rtol=RTOL, atol=ATOL)
    assert (lb_only >= both - 1e-4).all()
    with torch.no_grad():
        slack = bounds.api.rounding_allowance(net(x))
    torch.testing.assert_close(nat, (lb_only - slack).masked_fill(~mask, float("inf")))


def test_windowed_conv_crown_equals_lirpa_on_padded_deep_cnn():
    """Receptive-field windowing (padding and stride at every depth, a Normalize
    and a Tanh in between): on the ReLU CNN native CROWN is at least as tight as
    auto_LiRPA's (with three ReLU layers its intermediate bounds are intersected
    with the one-layer interval step, which auto_LiRPA 0.3 does not do), and
    sound bounds overall."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, stride=1, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 4, stride=2, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 3),
    )
    x = torch.rand(2, 2, 9, 9)
    ball = bounds.LpBall(x, 0.05, lower=0.0, upper=1.0)
    with torch.no_grad():
        a = bounds.compute(net, ball, "crown")
        b = bounds.compute(net, ball, "crown", backend="lirpa")
        pts = x + (torch.rand(400, *x.shape) * 2 - 1) * 0.05
        out = net(pts.clamp(0, 1).reshape(-1, 2, 9, 9)).reshape(400, 2, -1)
    assert (a[0] >= b[0] - ATOL).all() and (a[1] <= b[1] + ATOL).all()
    assert (out >= a[0] - 1e-5).all() and (out <= a[1] + 1e-5).all()
    tanh_net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Tanh(),
        bounds.Normalize(torch.full((3, 1, 1), 0.1), torch.full((3, 1, 1), 0.5)),
        torch.nn.Conv2d(3, 2, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(2 * 5 * 5, 2),
    )
    with torch.no_grad():
        lb, ub = bounds.compute(tanh_net, ball, "crown")
        pts = x + (torch.rand(400, *x.shape) * 2 - 1) * 0.05
        out = tanh_net(pts.clamp(0, 1).reshape(-1, 2, 9, 9)).reshape(400, 2, -1)
    assert (out >= lb - 1e-5).all() and (out <= ub + 1e-5).all()
