"""bounds.verify(split="relu"): ReLU-split branch and bound cross-checked against the MILP."""

import pytest
import torch
from torch import nn

import bounds
from bounds.exact import milp_margin
from bounds.verify import verify
from bounds.verify_relu import ReluSetup, bound_domains, optimize_domains
from tests.conftest import check_counterexample


def mlp(seed, din, w=6, dout=3, depth=2):
    torch.manual_seed(seed)
    mods, a = [], din
    for _ in range(depth):
        mods += [nn.Linear(a, w), nn.ReLU()]
        a = w
    return nn.Sequential(*mods, nn.Linear(a, dout)).eval()


def _case(seed, w=6):
    din = 20 + seed % 21
    net = mlp(seed, din, w, depth=1 + seed % 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, din, generator=g)
    eps = float(torch.rand(1, generator=g)) * 0.4 + 0.02
    label = int(net(x).argmax(1))
    C = bounds.margin_spec(torch.tensor([label]), 3)[0][torch.arange(3) != label]
    return net, x, eps, label, C


def _agree(seeds, leaf_relus, w=6, timeout_s=60.0, allow_unknown=False):
    """verify(split="relu") is verified iff the MILP minimum is > 0 (|m| >= 1e-3);
    with ``allow_unknown`` a timeout ("unknown") is accepted and counted, never a
    wrong answer."""
    seen = {"verified": 0, "falsified": 0, "unknown": 0}
    for seed in seeds:
        net, x, eps, label, C = _case(seed, w)
        exact = milp_margin(net, x, eps, [label], preact="crown")
        assert all(s in ("optimal", "label") for s in exact.status[0])
        m = float(exact.values[0][torch.arange(3) != label].min())
        ball = bounds.LpBall(x, eps)
        res = verify(net, ball, C, timeout_s=timeout_s, split="relu",
                     leaf_relus=leaf_relus, max_depth=64)
        assert res.stats["split"] == "relu"
        if abs(m) < 1e-3:
            continue
        want = "verified" if m > 0 else "falsified"
        if allow_unknown and res.status == "unknown":
            seen["unknown"] += 1
            continue
        assert res.status == want, (seed, m, res)
        seen[want] += 1
        if want == "falsified":
            check_counterexample(net, ball, C, torch.zeros(2), res)
            assert res.value >= m - 1e-4
        else:
            assert 0 < res.lower <= m + 1e-5, (seed, m, res.lower)
    return seen


def test_relu_split_agrees_with_milp_fast():
    """10 specs with leaves at <= 4 free unstable ReLUs (seed 1001 left to the slow
    tests: ~9 s; the slow ones also run pure ReLU splitting, leaf_relus=0)."""
    seen = _agree(range(1002, 1012), leaf_relus=4)
    assert seen["verified"] and seen["falsified"], seen


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(4))
def test_relu_split_agrees_with_milp(chunk):
    """4 x 25 = 100 random specs on 20-40-input MLPs (leaves at <= 16 free ReLUs)."""
    seen = _agree(range(chunk * 25, chunk * 25 + 25), 16, w=8)
    assert seen["verified"] + seen["falsified"] >= 20 and not seen["unknown"], seen


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(4))
def test_pure_relu_split_never_wrong(chunk):
    """The same 100 specs with pure ReLU splitting (LP leaves only when every unstable
    ReLU is split) and a 20 s timeout: no wrong answer; without split constraints in
    the bounds (no beta-CROWN) some need more time, so "unknown" is allowed but rare."""
    seen = _agree(range(chunk * 25, chunk * 25 + 25), 0, w=8, timeout_s=20.0,
                  allow_unknown=True)
    assert seen["unknown"] <= 2, seen  # 0 of 100 measured; slack for a loaded machine


def test_offset_specs_need_splits():
    """C f > d at the exact minimum -/+ 0.01: several domains, both answers right."""
    net = mlp(9, 20, w=6, dout=2, depth=2)
    x = torch.randn(1, 20, generator=torch.Generator().manual_seed(9))
    ball = bounds.LpBall(x, 0.3)
    C = torch.tensor([[1.0, -1.0]])
    m = float(milp_margin(net, x, 0.3, [0]).values[0, 1])
    res = verify(net, ball, C, torch.tensor([m - 0.01]), split="relu", leaf_relus=4)
    assert res.status == "verified" and res.stats["domains"] > 1
    assert 0 < res.lower <= 0.01 + 1e-5
    res = verify(net, ball, C, torch.tensor([m + 0.01]), split="relu", leaf_relus=4)
    assert res.status == "falsified"
    check_counterexample(net, ball, C, torch.tensor([m + 0.01]), res)


def test_any_mode_relu():
    net = mlp(5, 20, w=8, dout=2)
    x = torch.zeros(1, 20)
    ball = bounds.LpBall(x, 0.25)
    C = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    with torch.no_grad():
        t = float(net(x) @ C[0])
    d = torch.tensor([t, -t - 0.05])
    assert verify(net, ball, C, d, mode="any", split="relu").status == "verified"
    assert verify(net, ball, C, d, mode="all", split="relu").status == "falsified"
    d = torch.tensor([t + 0.01, -t + 0.01])
    res = verify(net, ball, C, d, mode="any", split="relu", leaf_relus=0)
    assert res.status == "falsified"
    check_counterexample(net, ball, C, d, res, "any")


def test_split_domain_bounds_are_sound():
    """Bounds of a domain with split decisions hold on sampled points satisfying them."""
    net = mlp(3, 20, w=8, depth=2)
    x = torch.zeros(1, 20)
    ball = bounds.LpBall(x, 1.0)
    setup = ReluSetup(net, ball)
    k0, k1 = setup.relus
    sp = {k: torch.zeros(1, *setup.root[k][0].shape[1:], dtype=torch.int8)
          for k in setup.relus}
    l0, u0 = setup.root[k0]
    unst = ((l0 < 0) & (u0 > 0)).flatten().nonzero().flatten()[:2]
    sp[k0][0, unst[0]], sp[k0][0, unst[1]] = 1, -1
    C = torch.eye(3)
    with torch.no_grad():
        lb, act, _, _ = bound_domains(setup, C, sp, dict(setup.root))
        pts = x + (torch.rand(20000, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1)
        z0 = net[0](pts)
        keep = (z0[:, unst[0]] >= 0) & (z0[:, unst[1]] <= 0)
        pts = pts[keep]
        assert pts.shape[0] > 100
        out = net(pts)
        z1 = net[2](net[1](net[0](pts)))
    assert (out >= lb - 1e-5).all()
    opt = optimize_domains(setup, C, act, sp, lb, iterations=20)
    assert (opt >= lb).all() and (opt > lb + 1e-4).any()  # the split multipliers help
    assert (out >= opt - 1e-5).all()
    assert (z1 >= act[k1][0] - 1e-5).all() and (z1 <= act[k1][1] + 1e-5).all()


def test_timeout_budget_and_auto():
    net = mlp(3, 30, w=16, depth=3)
    x = torch.zeros(1, 30)
    ball = bounds.LpBall(x, 1.0)
    C = torch.tensor([[1.0, -1.0, 0.0]])
    res = verify(net, ball, C, timeout_s=0.0, split="relu")
    assert res.status == "unknown" and res.counterexample is None
    with torch.no_grad():
        t = float((net(x) @ C.T)[0, 0])
    res = verify(net, ball, C, torch.tensor([t - 1e-3]), split="relu", max_domains=1,
                 leaf_relus=0)
    assert res.status in ("unknown", "falsified")
    if res.status == "falsified":
        check_counterexample(net, ball, C, torch.tensor([t - 1e-3]), res)
    assert verify(net, ball, C, timeout_s=0.0, split="auto").stats["split"] == "relu"
    small = mlp(0, 3)
    r = verify(small, bounds.LpBall(torch.zeros(1, 3), 0.1), torch.eye(3)[:1], split="auto")
    assert "split" not in r.stats  # input splitting for 3 inputs


def test_bad_split_and_non_relu():
    net = mlp(0, 20)
    ball = bounds.LpBall(torch.zeros(1, 20), 0.1)
    with pytest.raises(ValueError, match="split"):
        verify(net, ball, torch.eye(3), split="neurons")
    tanh = nn.Sequential(nn.Linear(20, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="ReLU"):
        verify(tanh, ball, torch.tensor([[1.0, -1.0]]), split="relu")
