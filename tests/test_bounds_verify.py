"""bounds.verify: complete branch and bound cross-checked against the exact MILP."""

import pytest
import torch
from torch import nn

import bounds
from bounds.exact import milp_margin
from bounds.verify import verify
from tests.conftest import check_counterexample


def tiny(seed, din=3, w=8, dout=3, depth=2):
    torch.manual_seed(seed)
    mods, a = [], din
    for _ in range(depth):
        mods += [nn.Linear(a, w), nn.ReLU()]
        a = w
    return nn.Sequential(*mods, nn.Linear(a, dout)).eval()


def _margin_case(seed):
    net = tiny(seed, depth=1 + seed % 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, generator=g)
    eps = float(torch.rand(1, generator=g)) * 0.8 + 0.02
    label = int(net(x).argmax(1))
    C = bounds.margin_spec(torch.tensor([label]), 3)[0]
    C = C[torch.arange(3) != label]
    return net, x, eps, label, C


@pytest.mark.parametrize("chunk", range(6))
def test_verify_agrees_with_milp(chunk):
    """30 random specs per chunk (180 in all): verified iff the MILP minimum is > 0."""
    seen = {"verified": 0, "falsified": 0}
    for seed in range(chunk * 30, chunk * 30 + 30):
        net, x, eps, label, C = _margin_case(seed)
        exact = milp_margin(net, x, eps, [label])
        assert all(s in ("optimal", "label") for s in exact.status[0])
        m = float(exact.values[0][torch.arange(3) != label].min())
        ball = bounds.LpBall(x, eps)
        res = verify(net, ball, C, timeout_s=30)
        if abs(m) < 1e-3:
            assert res.status in ("verified", "falsified", "unknown")
            continue
        want = "verified" if m > 0 else "falsified"
        assert res.status == want, (seed, m, res)
        seen[want] += 1
        if want == "falsified":
            check_counterexample(net, ball, C, torch.zeros(2), res)
            assert res.value >= m - 1e-4  # no point goes below the exact minimum
        else:  # the proven bound is positive and below the exact minimum
            assert 0 < res.lower <= m + 1e-5, (seed, m, res.lower)
    assert seen["verified"] and seen["falsified"], seen


@pytest.mark.parametrize("seed", range(10))
def test_offset_d_and_single_output(seed):
    """C f > d with an offset at the exact minimum -/+ 0.01."""
    net = tiny(seed, din=2, dout=2, depth=3)
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(seed))
    ball = bounds.LpBall(x, 0.5)
    C = torch.tensor([[1.0, -1.0]])
    exact = milp_margin(net, x, 0.5, [0])
    m = float(exact.values[0, 1])
    assert verify(net, ball, C, torch.tensor([m - 0.01])).status == "verified"
    res = verify(net, ball, C, torch.tensor([m + 0.01]))
    assert res.status == "falsified"
    check_counterexample(net, ball, C, torch.tensor([m + 0.01]), res)


def test_any_mode():
    """Rows c f > t and -c f > -t - delta: some row always holds when delta > 0; with
    the band t - 0.01 <= c f <= t + 0.01 (it holds at x) fails both rows."""
    net = tiny(5, din=2, dout=2)
    x = torch.zeros(1, 2)
    ball = bounds.LpBall(x, 1.0)
    C = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    with torch.no_grad():
        t = float(net(x) @ C[0])
    assert verify(net, ball, C, torch.tensor([t, -t - 0.05]), mode="any").status == "verified"
    assert verify(net, ball, C, torch.tensor([t, -t - 0.05]), mode="all").status == "falsified"
    res = verify(net, ball, C, torch.tensor([t + 0.01, -t + 0.01]), mode="any")
    assert res.status == "falsified"
    check_counterexample(net, ball, C, torch.tensor([t + 0.01, -t + 0.01]), res, "any")


def test_timeout_and_budget_give_unknown():
    net = tiny(3, din=3, w=16, depth=3)
    x = torch.zeros(1, 3)
    ball = bounds.LpBall(x, 2.0)
    exact = milp_margin(net, x, 2.0, [int(net(x).argmax(1))])
    label = int(net(x).argmax(1))
    C = bounds.margin_spec(torch.tensor([label]), 3)[0][torch.arange(3) != label]
    m = float(exact.values[0][torch.arange(3) != label].min())
    d = torch.full((2,), m - 1e-4)  # true, with a tiny margin: many domains needed
    res = verify(net, ball, C, d, timeout_s=0.0)
    assert res.status == "unknown" and res.counterexample is None
    res = verify(net, ball, C, d, max_domains=3)
    assert res.status == "unknown" and res.lower <= 1e-4


def test_bad_arguments():
    net = tiny(0)
    with pytest.raises(ValueError, match="l_inf"):
        verify(net, bounds.LpBall(torch.zeros(1, 3), 0.1, norm=2), torch.eye(3))
    with pytest.raises(ValueError, match="mode"):
        verify(net, bounds.LpBall(torch.zeros(1, 3), 0.1), torch.eye(3), mode="some")
    with pytest.raises(ValueError, match="rows"):
        verify(net, bounds.LpBall(torch.zeros(1, 3), 0.1), torch.eye(3), torch.zeros(2))


def test_margin_inside_the_rounding_allowance_is_unknown_at_once():
    """f_0 - f_1 = 1e-7 everywhere: true, but below float32's rounding allowance, so no
    sound bound can prove it; verify says "unknown" (never "verified") without searching."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1e-7, 0.0]))
    res = verify(net, bounds.LpBall(torch.zeros(1, 3), 0.1), torch.tensor([[1.0, -1.0]]))
    assert res.status == "unknown" and res.stats["reason"] == "within rounding allowance"
    assert res.stats["domains"] == 1
