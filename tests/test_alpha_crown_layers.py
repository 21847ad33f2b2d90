"""alpha-CROWN on every layer (intermediate ReLU slopes optimized per bounded neuron):
sound by sampling, never looser than CROWN or the final-layer-only version, and as tight
as auto_LiRPA's alpha-CROWN (which also optimizes the intermediate layers) on deep MLPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bounds
import bounds.linear as linear


def deep_mlp(seed: int, din: int = 6, width: int = 24, depth: int = 3, dout: int = 4):
    torch.manual_seed(seed)
    layers, d = [], din
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, dout)).eval()


def _width(b):
    return float((b[1] - b[0]).mean())


@pytest.mark.parametrize("seed", range(4))
def test_every_layer_alpha_is_sound_and_tighter(seed, one_thread, monkeypatch):
    net = deep_mlp(seed)
    x = torch.randn(2, 6)
    ball = bounds.LpBall(x, 0.4)
    with torch.no_grad():
        cr = bounds.compute(net, ball, "crown")
        full = bounds.compute(net, ball, "alpha-crown", alpha_iterations=20)
        monkeypatch.setattr(linear, "all_layers_pay", lambda rest: False)
        last = bounds.compute(net, ball, "alpha-crown", alpha_iterations=20)
        pts = x.unsqueeze(1) + 0.4 * (2 * torch.rand(2, 4000, 6) - 1)
        pts[:, :64] = x.unsqueeze(1) + 0.4 * torch.sign(torch.randn(2, 64, 6))  # corners
        out = net(pts)
    assert (out >= full[0].unsqueeze(1) - 1e-5).all() and (out <= full[1].unsqueeze(1) + 1e-5).all()
    assert (full[0] >= cr[0] - 1e-6).all() and (full[1] <= cr[1] + 1e-6).all()
    assert _width(full) < _width(last) < _width(cr)


@pytest.mark.parametrize("seed", range(3))
def test_as_tight_as_auto_lirpa_alpha_crown(seed, one_thread):
    net = deep_mlp(seed + 10)
    x = torch.randn(2, 6)
    ball = bounds.LpBall(x, 0.4)
    with torch.no_grad():
        nat = bounds.compute(net, ball, "alpha-crown", alpha_iterations=20)
        lir = bounds.compute(net, ball, "alpha-crown", alpha_iterations=20, backend="lirpa")
    assert _width(nat) <= 1.01 * _width(lir), (_width(nat), _width(lir))


def test_training_path_keeps_gradients(one_thread):
    """With autograd on (training), alpha-CROWN keeps the final-layer-only optimization and
    stays differentiable in the weights."""
    net = deep_mlp(0)
    lb, ub = bounds.compute(net, bounds.LpBall(torch.randn(2, 6), 0.2), "alpha-crown",
                            alpha_iterations=3)
    (ub - lb).sum().backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
