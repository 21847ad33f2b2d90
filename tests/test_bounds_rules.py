"""bounds.rules: every layer kind's IBP and backward (linear relaxation) rules are sound on
their own, and the table is what parse and the error messages use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bounds
from bounds import graph, rules

torch.manual_seed(0)

_MODULES = {
    "linear": (nn.Linear(5, 4), (5,)),
    "conv": (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 5, 5)),
    "relu": (nn.ReLU(), (2, 3, 3)),
    "tanh": (nn.Tanh(), (6,)),
    "flatten": (nn.Flatten(), (2, 3, 3)),
    "identity": (nn.Identity(), (4,)),
    "normalize": (bounds.Normalize(torch.rand(2, 1, 1), torch.rand(2, 1, 1) + 0.5), (2, 3, 3)),
}


def test_every_rule_is_exercised_here():
    assert set(_MODULES) == {r.kind for r in rules.RULES}


@pytest.mark.parametrize("kind", sorted(_MODULES))
def test_ibp_and_backward_rules_are_sound(kind):
    module, in_shape = _MODULES[kind]
    layer = graph.parse_modules([module], in_shape)[0]
    assert layer.kind == kind and layer.rule is rules.RULE_BY_KIND[kind]
    g = torch.Generator().manual_seed(1)
    B = 3
    lo = torch.randn(B, *in_shape, generator=g)
    up = lo + torch.rand(B, *in_shape, generator=g)
    x = lo + (up - lo) * torch.rand(200, B, *in_shape, generator=g)  # points in the box
    with torch.no_grad():
        y = torch.stack([module(xi) for xi in x])
        out_l, out_u = layer.rule.ibp(layer, lo, up)
        assert (y >= out_l - 1e-5).all() and (y <= out_u + 1e-5).all()
        # backward: A y >= A_in x + bias for every sampled x, with random rows A
        A = torch.randn(B, 2, *layer.out_shape, generator=g)
        bias = torch.zeros(B, 2)
        A_in, b = layer.rule.backward(layer, A, bias, (lo, up), None)
        lhs = (A.unsqueeze(0) * y.unsqueeze(2)).flatten(3).sum(-1)
        rhs = (A_in.unsqueeze(0) * x.unsqueeze(2)).flatten(3).sum(-1) + b
        assert (lhs >= rhs - 1e-4).all()


def test_unsupported_message_lists_the_table():
    with pytest.raises(bounds.UnsupportedLayerError) as info:
        graph.parse_modules([nn.Sigmoid()], (3,))
    labels = ", ".join(r.label for r in rules.RULES)
    assert f"supported: {labels}" in str(info.value)
    assert rules.find_rule(nn.Sigmoid()) is None
    with pytest.raises(bounds.UnsupportedLayerError, match="Flatten"):
        graph.parse_modules([nn.Flatten(0)], (3,))
