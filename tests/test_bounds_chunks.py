"""Chunking of CROWN's intermediate passes over neurons (a memory / cache knob) does not
change the bounds: one neuron per chunk gives the default numbers, on a CNN and an MLP."""

from __future__ import annotations

import pytest
import torch

import bounds
import bounds.linear as linear
from tests.conftest import make_cnn, make_mlp


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_one_row_chunks_give_the_same_bounds(name, one_thread, monkeypatch):
    net = make_cnn(3) if name == "cnn" else make_mlp(3)
    shape = (2, 9, 9) if name == "cnn" else (6,)
    x = torch.rand((3, *shape), generator=torch.Generator().manual_seed(0))
    # the ReLU after the CNN's Linear is bounded by the full-size (chunked) pass
    ball = bounds.LpBall(x, 0.05, lower=0.0, upper=1.0)
    with torch.no_grad():
        ref = bounds.compute(net, ball, "crown")
        monkeypatch.setattr(linear, "_CHUNK_ELEMENTS_CONV", 1)
        monkeypatch.setattr(linear, "_CHUNK_ELEMENTS", 1)
        one = bounds.compute(net, ball, "crown")
    torch.testing.assert_close(one[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], ref[1], rtol=1e-5, atol=1e-6)
