import pytest
import torch
from torch import nn

import bounds
from bounds.graph import UnsupportedLayerError
from certrl.nets import BOUNDABLE, body_spec, build_network
from certrl.threat import ThreatModel

MLP = body_spec((6,), (32, 16), "relu")
MLP_NORM = {**body_spec((6,), (32,), "tanh"),
            "input_norm": {"mean": [0.5] * 6, "std": [2.0] * 6}}
CNN = body_spec((4, 84, 84))
CNN_NOFC = {**CNN, "fc": 0}

SPECS = [
    {"type": "q", "body": MLP, "n_out": 3},
    {"type": "q", "body": MLP, "n_out": 3, "dueling": True},
    {"type": "q", "body": MLP, "n_out": 3, "dueling": True, "stream_hidden": 8},
    {"type": "q", "body": MLP_NORM, "n_out": 3, "dueling": True},
    {"type": "q", "body": CNN, "n_out": 6},
    {"type": "q", "body": CNN, "n_out": 6, "dueling": True},
    {"type": "q", "body": CNN_NOFC, "n_out": 6, "dueling": True, "stream_hidden": 32},
    {"type": "categorical_policy", "body": body_spec((6,), (16,), "tanh"), "n_out": 2},
    {"type": "gaussian_policy", "body": body_spec((6,), (16, 16), "tanh"), "n_out": 3},
    {"type": "gaussian_policy", "body": MLP_NORM, "n_out": 3},
    {"type": "value", "body": body_spec((6,), (16,), "tanh")},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['type']}-{s['body']['kind']}")
def test_bounded_form_equals_network(spec):
    torch.manual_seed(0)
    net = build_network(spec)
    with torch.no_grad():  # make dueling streams non-trivial
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seq = net.bounded_form()
    assert isinstance(seq, nn.Sequential)
    assert all(isinstance(m, BOUNDABLE) for m in seq)
    shape = spec["body"].get("in_shape") or [spec["body"]["in_dim"]]
    x = torch.rand(5, *shape)
    with torch.no_grad():
        torch.testing.assert_close(seq(x), net(x), rtol=1e-5, atol=1e-5)
    # the bounded form is a copy: editing it leaves the network alone
    with torch.no_grad():
        seq[-1].bias.add_(1.0)
        assert not torch.allclose(seq(x), net(x))


def test_nature_cnn_shapes():
    net = build_network({"type": "q", "body": CNN, "n_out": 6})
    convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == \
        [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert net(torch.rand(2, 4, 84, 84)).shape == (2, 6)


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown network type"):
        build_network({"type": "transformer"})
    with pytest.raises(ValueError):
        build_network({"type": "q", "body": {"kind": "rnn"}, "n_out": 2})
    with pytest.raises(ValueError):
        build_network({"type": "q", "body": {**MLP, "activation": "gelu"}, "n_out": 2})
    with pytest.raises(UnsupportedLayerError, match="Sigmoid"):  # bounds names the layer
        bounds.compute(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid()),
                       bounds.LpBall(torch.zeros(1, 2), 0.1))


def test_rebuild_from_spec_round_trip():
    net = build_network(SPECS[1])
    net2 = build_network(net.spec)
    net2.load_state_dict(net.state_dict())
    x = torch.rand(3, 6)
    torch.testing.assert_close(net(x), net2(x))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['type']}-{s['body']['kind']}")
def test_shared_form_equals_network_and_trains_it(spec):
    """shared_form computes the network, shares its parameters (dueling included: the
    folded head is computed from the live streams) and bounds through it reach them."""
    torch.manual_seed(0)
    net = build_network(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seq = net.shared_form()
    shape = spec["body"].get("in_shape") or [spec["body"]["in_dim"]]
    x = torch.rand(3, *shape)
    torch.testing.assert_close(seq(x), net(x), rtol=1e-5, atol=1e-5)
    lb, ub = bounds.compute(seq, ThreatModel(eps=0.01).ball(x, 0.01), method="ibp")
    ref_lb, ref_ub = bounds.compute(net.bounded_form(), ThreatModel(eps=0.01).ball(x, 0.01),
                                    method="ibp")
    torch.testing.assert_close(lb, ref_lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ub, ref_ub, rtol=1e-5, atol=1e-5)
    (torch.rand_like(lb) * lb + torch.rand_like(ub) * ub).sum().backward()  # A's bias
    # cancels in a plain sum over actions (mean subtracted), so weight the outputs
    head = [p for n, p in net.named_parameters() if "stream" in n or "head" in n]
    assert head and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in head)
    with torch.no_grad():  # an optimiser step on the network is seen by the shared form
        for p in net.parameters():
            p.add_(0.1)
    torch.testing.assert_close(seq(x), net(x), rtol=1e-5, atol=1e-5)
