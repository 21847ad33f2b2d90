"""Lipschitz layers (SortNet, l_inf-dist), closed-form certificates, Lipschitz bounds, LipSDP."""

import pytest
import torch
from torch import nn

from bounds import Normalize
from bounds import lipschitz as lp

INF = float("inf")


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
    return net


def pairs(d: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    scale = 10 ** torch.empty(n, 1).uniform_(-3, 0.5, generator=g)
    y = x + scale * torch.randn(n, d, generator=g)
    # also l_inf-ball corners (sign patterns)
    y2 = x + scale * torch.sign(torch.randn(n, d, generator=g))
    return torch.cat([x, x]), torch.cat([y, y2])


@pytest.mark.parametrize("layer_cls", [lp.SortNetLayer, lp.LinfDistLayer])
@pytest.mark.parametrize("negate", [False, True])
def test_layers_are_1_lipschitz_linf(layer_cls, negate):
    layer = randomize(layer_cls(7, 5, negate=negate), seed=1)
    x, y = pairs(7, 2000)
    with torch.no_grad():
        diff = (layer(x) - layer(y)).abs().amax(dim=1)
    dist = (x - y).abs().amax(dim=1)
    assert (diff <= dist * (1 + 1e-5) + 1e-6).all()
    # the bound is attained (tight) for some pair: the ratio gets close to 1
    assert (diff / dist).max() > 0.5


def test_sortnet_weights_parametrization():
    layer = randomize(lp.SortNetLayer(6, 4), seed=3)
    w = layer.weight
    assert (w >= 0).all() and (w.sum(dim=1) < 1).all()
    # hand-check one neuron: y = sum_i w_i * (i-th largest of |x - theta|) + b
    x = torch.randn(1, 6)
    with torch.no_grad():
        s = (x[0] - layer.theta[2]).abs().sort(descending=True).values
        hand = float((w[2] * s).sum() + layer.bias[2])
        assert float(layer(x)[0, 2]) == pytest.approx(hand, abs=1e-5)
    ld = lp.LinfDistLayer(3, 1, negate=True)
    with torch.no_grad():
        ld.theta.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        ld.bias.fill_(0.25)
    with torch.no_grad():
        assert float(ld(torch.zeros(1, 3))) == pytest.approx(-2.0 + 0.25)


@pytest.mark.parametrize("kind", ["sortnet", "linf-dist"])
def test_lipschitz_mlp_outputs_1_lipschitz(kind):
    net = randomize(lp.LipschitzMLP(6, 4, hidden=16, depth=3, kind=kind), seed=2)
    x, y = pairs(6, 1500, seed=4)
    with torch.no_grad():
        diff = (net(x) - net(y)).abs().amax(dim=1)
    assert (diff <= (x - y).abs().amax(dim=1) * (1 + 1e-5) + 1e-5).all()
    assert lp.global_lipschitz(net, INF) == 1.0
    # still trainable (gradients reach every parameter)
    net(x[:8]).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("kind", ["sortnet", "linf-dist"])
def test_radius_certificate_holds_under_attack(kind):
    torch.manual_seed(0)
    net = randomize(lp.LipschitzMLP(5, 3, hidden=12, depth=2, kind=kind), seed=5)
    x = torch.randn(10, 5)
    with torch.no_grad():
        out = net(x)
    radius = lp.margin_radius(out)
    pred = out.argmax(1)
    assert (radius > 0.01).sum() >= 5  # the attack below is exercised
    for b in range(x.shape[0]):
        r = float(radius[b]) * 0.999
        if r <= 0:
            continue
        cert = lp.lipschitz_margin_certificate(out[b:b + 1], r)
        assert bool(cert.certified[0])
        # random points, corners and a PGD attack on the margin inside the ball
        g = torch.Generator().manual_seed(b)
        pts = [x[b] + r * torch.empty(400, 5).uniform_(-1, 1, generator=g),
               x[b] + r * torch.sign(torch.randn(400, 5, generator=g))]
        delta = torch.zeros(32, 5).uniform_(-r, r, generator=g).requires_grad_(True)
        for _ in range(20):
            o = net(x[b] + delta)
            other = o.clone()
            other[:, pred[b]] = -INF
            loss = (o[:, pred[b]] - other.amax(1)).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= 0.1 * r * grad.sign()
                delta.clamp_(-r, r)
        pts.append((x[b] + delta).detach())
        with torch.no_grad():
            o = net(torch.cat(pts))
        assert (o.argmax(1) == pred[b]).all()
        ml = cert.margin_lower[0]
        for j in range(3):
            if j != int(pred[b]):
                assert (o[:, pred[b]] - o[:, j] >= ml[j] - 1e-5).all()


def test_margin_certificate_closed_form():
    out = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.4]])
    assert torch.allclose(lp.margin_radius(out), torch.tensor([1.0, 0.05]))
    assert torch.allclose(lp.margin_radius(out, lipschitz=2.0), torch.tensor([0.5, 0.025]))
    c = lp.lipschitz_margin_certificate(out, 0.9)
    assert c.certified.tolist() == [True, False]
    assert c.prediction.tolist() == [0, 1]
    assert c.margin_lower[0].tolist() == pytest.approx([INF, 2.0 - 1.8, 3.0 - 1.8])
    assert torch.allclose(c.lower, out - 0.9) and torch.allclose(c.upper, out + 0.9)
    assert c.kind == "sound" and c.norm == INF
    # margin exactly 2 eps is not certified; certify a given label
    assert not bool(lp.lipschitz_margin_certificate(out[:1], 1.0).certified[0])
    c2 = lp.lipschitz_margin_certificate(out, 0.0, labels=[1, 1])
    assert c2.certified.tolist() == [False, True]
    assert c2.margin_lower[0, 1] == INF and c2.margin_lower[0, 0] == -2.0
    with pytest.raises(ValueError):
        lp.lipschitz_margin_certificate(out, -0.1)


def sampled_ratio(net, d, p, n=3000, seed=0):
    x, y = pairs(d, n, seed)
    with torch.no_grad():
        fx, fy = net(x).flatten(1), net(y).flatten(1)
    num = torch.linalg.vector_norm(fx - fy, ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y), ord=p, dim=1)
    return float((num / den).max())


@pytest.mark.parametrize("p", [INF, 2.0, 1.0])
def test_global_lipschitz_upper_bounds_sampled_ratios(p):
    torch.manual_seed(0)
    net = nn.Sequential(Normalize(torch.zeros(6), torch.full((6,), 0.5)), nn.Linear(6, 20),
                        nn.ReLU(), nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 3))
    L = lp.global_lipschitz(net, p)
    assert sampled_ratio(net, 6, p) <= L * (1 + 1e-5)
    # a single Linear layer: exactly its operator norm
    lin = nn.Linear(5, 4)
    W = lin.weight.detach().double()
    exact = {INF: W.abs().sum(1).max(), 1.0: W.abs().sum(0).max(),
             2.0: torch.linalg.matrix_norm(W, 2)}[p]
    assert lp.global_lipschitz(lin, p) == pytest.approx(float(exact))


@pytest.mark.parametrize("p", [INF, 2.0])
def test_global_lipschitz_conv(p):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 4))
    shaped = lp.global_lipschitz(net, p, input_shape=(2, 8, 8))  # unrolled, exact per layer
    shapeless = lp.global_lipschitz(net, p)  # kernel sums, looser
    assert shaped <= shapeless * (1 + 1e-9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, 8, 8, generator=g)
    y = x + 0.1 * torch.randn(500, 2, 8, 8, generator=g)
    with torch.no_grad():
        num = torch.linalg.vector_norm(net(x) - net(y), ord=p, dim=1)
    den = torch.linalg.vector_norm((x - y).flatten(1), ord=p, dim=1)
    assert float((num / den).max()) <= shaped * (1 + 1e-5)


def test_global_lipschitz_rejects_unknown_layers():
    with pytest.raises(ValueError, match="unsupported layer"):
        lp.global_lipschitz(nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1)), INF)


def max_jacobian_norm(net, d, n=2000, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2
    J = torch.func.vmap(torch.func.jacrev(net))(x).detach()
    return float(torch.linalg.matrix_norm(J, ord=2).max())


@pytest.mark.parametrize("hidden", [(16,), (12, 12)])
def test_lipsdp_between_gradient_and_product(hidden):
    torch.manual_seed(sum(hidden))
    layers, d = [], 4
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    net = nn.Sequential(*layers, nn.Linear(d, 3))
    sdp = lp.lipsdp_l2(net)
    prod = lp.global_lipschitz(net, 2.0)
    grad = max_jacobian_norm(net, 4)
    assert grad <= sdp * (1 + 1e-6)
    assert sdp <= prod * (1 + 1e-9)
    assert sdp < 0.9 * prod  # LipSDP is actually tighter here


def test_lipsdp_special_cases():
    lin = nn.Sequential(nn.Linear(3, 2))
    W = lin[0].weight.detach().double()
    assert lp.lipsdp_l2(lin) == pytest.approx(float(torch.linalg.matrix_norm(W, 2)))
    # one ReLU neuron: f(x) = v * relu(w . x) has Lipschitz constant |v| ||w||_2
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 4.0]]))
        net[2].weight.fill_(-2.0)
    assert lp.lipsdp_l2(net) == pytest.approx(10.0, rel=1e-4)
    assert lp.lipsdp_l2(net) >= 10.0 * (1 - 1e-9)
    normed = nn.Sequential(Normalize(torch.zeros(3), torch.tensor([0.5, 1.0, 2.0])),
                           nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 2))
    sdp = lp.lipsdp_l2(normed)
    assert max_jacobian_norm(normed, 3) <= sdp * (1 + 1e-6)
    assert sdp <= lp.global_lipschitz(normed, 2.0)
    tanh = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    assert max_jacobian_norm(tanh, 3) <= lp.lipsdp_l2(tanh) * (1 + 1e-6)
    with pytest.raises(ValueError, match="unsupported layer"):
        lp.lipsdp_l2(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1)))
