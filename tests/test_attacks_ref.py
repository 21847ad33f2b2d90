"""Attacks under a per-dimension scale, and the reference PGD ("pgd-ref")."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from certrl import ThreatModel
from certrl.attacks import (
    ATTACKS,
    fgsm,
    mad,
    make_attack,
    pgd,
    pgd_maximize,
    pgd_ref,
    project,
    random_noise,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _net(din=6, dout=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, 32), nn.ReLU(), nn.Linear(32, dout))


def _inside(x_adv, x, tm, eps):
    """Membership by the threat model's definition (not by the attack code)."""
    s = torch.ones(x[0].numel()) if tm.scale is None else torch.tensor(tm.scale)
    u = (x_adv - x).reshape(x.shape[0], -1) / s
    ok = torch.linalg.vector_norm(u, ord=tm.norm, dim=1) <= eps * (1 + 1e-5) + 1e-6
    if tm.lower is not None:
        ok &= (x_adv >= tm.lower).reshape(x.shape[0], -1).all(1)
    if tm.upper is not None:
        ok &= (x_adv <= tm.upper).reshape(x.shape[0], -1).all(1)
    return bool(ok.all())


def _all_attacks(net, x, tm, g):
    return {
        "project": project(x + 3 * torch.randn(x.shape, generator=g), x, tm),
        "random": random_noise(x, tm, generator=g),
        "fgsm": fgsm(net, x, tm),
        "fgsm_margin": fgsm(net, x, tm, objective="margin"),
        "pgd": pgd(net, x, tm, steps=6, generator=g),
        "pgd_margin": pgd(net, x, tm, steps=6, objective="margin", generator=g),
        "pgd_big_step": pgd(net, x, tm, steps=3, step_size=5 * tm.eps, generator=g),
        "pgd_ref": pgd_ref(net, x, tm),
        "mad": mad(net, x, tm, steps=4, generator=g),
        "pgd_maximize": pgd_maximize(lambda z: net(z).sum(1), x, tm, tm.eps, steps=4,
                                     generator=g),
    }


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_every_attack_stays_in_the_scaled_ball_and_domain(norm, clip, seed):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale = tuple(float(v) for v in 10 ** rng.uniform(-1.5, 0.5, size=6))
    tm = ThreatModel(norm=norm, eps=float(rng.uniform(0.05, 0.5)), scale=scale,
                     lower=0.0 if clip else None, upper=1.0 if clip else None)
    net = _net(seed=seed)
    x = torch.rand(48, 6, generator=g)
    x[:6] = 0.0  # on the domain boundary
    x[6:12] = 1.0
    for name, xa in _all_attacks(net, x, tm, g).items():
        assert xa.shape == x.shape, name
        assert _inside(xa, x, tm, tm.eps), name
    # the scale is used, not ignored: the plain-ball corner leaves the scaled box
    corner = x + tm.eps
    assert not _inside(corner, x, tm, tm.eps) or min(scale) >= 1


def test_scale_of_ones_changes_nothing():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    net, x = _net(), torch.rand(16, 6, generator=torch.Generator().manual_seed(9))
    for norm in (math.inf, 2.0):
        tm = ThreatModel(norm=norm, eps=0.2)
        ones = tm.with_scale([1.0] * 6)
        a, b = _all_attacks(net, x, tm, g1), _all_attacks(net, x, ones, g2)
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=name)


# ------------------------------------------------------------------ hand-made linear net
def _linear(W, b=None):
    lin = nn.Linear(W.shape[1], W.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(W)
        if b is not None:
            lin.bias.copy_(b)
    return lin


def test_fgsm_is_the_exact_maximizer_of_a_linear_objective_on_the_scaled_set():
    """Two actions, f = W x: the CE gradient at a* is a positive multiple of w = W_o - W_a,
    so FGSM must land on argmax_{||d/s|| <= eps} w.d: eps s sign(w) (l_inf) and
    eps s (s w) / ||s w|| (l_2)."""
    W = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])
    net = _linear(W)
    s = torch.tensor([0.5, 2.0, 0.1])
    x = torch.tensor([[3.0, 0.0, 0.0]])  # action 0 greedy
    w = W[1] - W[0]
    eps = 0.3
    got = fgsm(net, x, ThreatModel(eps=eps, scale=tuple(s.tolist())))
    torch.testing.assert_close(got - x, (eps * s * w.sign())[None])
    got2 = fgsm(net, x, ThreatModel(norm=2, eps=eps, scale=tuple(s.tolist())))
    want2 = eps * s * (s * w) / (s * w).norm()
    torch.testing.assert_close(got2 - x, want2[None])


def test_pgd_ref_matches_its_definition_on_a_linear_net():
    """Margin m(x) = (W_a - W_o) . x falls by 0.1 eps sum_i s_i |w_i| per sign step; the
    attack stops at the first step where it is negative (or after 10 steps)."""
    W = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])
    net = _linear(W)
    s = torch.tensor([0.5, 2.0, 0.1])
    tm = ThreatModel(eps=0.5, scale=tuple(s.tolist()))
    w = W[1] - W[0]
    drop = 0.1 * tm.eps * float((s * w.abs()).sum())  # margin decrease per step
    # clean margins chosen between steps: flips after 3, after 7, never (margin > 10 drops)
    margins = torch.tensor([2.5, 6.5, 12.0]) * drop
    base = torch.zeros(3)
    x = torch.stack([base + m / float((W[0] - W[1]) @ (W[0] - W[1])) * (W[0] - W[1])
                     for m in margins])
    with torch.no_grad():
        assert torch.allclose(x @ (W[0] - W[1]), margins, atol=1e-5)
    got = pgd_ref(net, x, tm)
    step = 0.1 * tm.eps * s * w.sign()
    want = torch.stack([x[0] + 3 * step, x[1] + 7 * step, x[2] + 10 * step])
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        flipped = net(got).argmax(1) != 0
    assert flipped.tolist() == [True, True, False]
    # deterministic (no random start) and reachable through make_attack
    torch.testing.assert_close(make_attack("pgd-ref", net, tm)(x), got)
    assert "pgd-ref" in ATTACKS


def test_pgd_ref_stops_at_the_first_flip_with_three_actions():
    """Continuing after the first flip would change the played action again; pgd-ref keeps
    the first flipping iterate, as the reference's early return does."""
    W = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([0.0, -0.05, -0.2])
    net = _linear(W, b)
    x = torch.tensor([[0.0, 0.0]])  # Q = (0, -0.05, -0.2): action 0
    tm = ThreatModel(eps=1.0)
    got = pgd_ref(net, x, tm)
    with torch.no_grad():
        assert int(net(got).argmax(1)) == 1  # first flip: to action 1
    torch.testing.assert_close(got, torch.tensor([[0.1, 0.0]]))  # sign(0) = 0 on x_2
    # our PGD keeps ascending the CE and can end elsewhere; pgd-ref is the weaker form
    assert not torch.allclose(pgd(net, x, tm, random_start=False), got)


def test_pgd_ref_domain_clip_and_errors():
    W = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    net = _linear(W)
    x = torch.tensor([[1.0, 1.0]])
    tm = ThreatModel(eps=0.5, lower=0.0, upper=1.0)
    got = pgd_ref(net, x, tm)
    assert _inside(got, x, tm, tm.eps)
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.5]]))  # 10 steps of 0.05, no flip
    with pytest.raises(ValueError, match="discrete"):
        make_attack("pgd-ref", net, tm, action_kind="continuous")
    with pytest.raises(ValueError):
        pgd_ref(net, x, tm, steps=0)
    with pytest.raises(ValueError):
        pgd_ref(net, x, ThreatModel(norm=1, eps=0.1))
    with pytest.raises(ValueError, match="scale has 3 entries"):
        pgd_ref(net, x, ThreatModel(eps=0.1, scale=(1.0, 1.0, 1.0)))
