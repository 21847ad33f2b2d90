"""Randomized smoothing: Cohen et al. CERTIFY/PREDICT and the CROP smoothed-value certificate."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from bounds import smoothing as sm

PhiInv = NormalDist().inv_cdf
Phi = NormalDist().cdf


def constant_scores(cls: int, K: int = 3):
    def f(z):
        out = torch.zeros(z.shape[0], K)
        out[:, cls] = 1.0
        return out

    return f


def halfspace(z):
    """Class 0 iff z[0] > 0: a linear binary classifier (distance to boundary = z[0])."""
    s = z.reshape(z.shape[0], -1)[:, :1]
    return torch.cat([s, -s], dim=1)


# ---------------------------------------------------------------- statistics
@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (7, 10), (10, 10), (990, 1000), (5000, 10000),
                                 (100000, 100000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_scipy(k, n, alpha):
    ours = float(sm.clopper_pearson_lower(k, n, alpha))
    one_sided = binomtest(k, n, alternative="greater").proportion_ci(
        confidence_level=1 - alpha, method="exact").low
    two_sided = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert ours == pytest.approx(one_sided, abs=1e-10)
    assert ours == pytest.approx(two_sided, abs=1e-10)


def test_predict_pvalue_matches_binomtest():
    for nA, nB in [(0, 0), (5, 5), (6, 4), (60, 40), (900, 100), (3, 0)]:
        ours = float(sm.binom_two_sided_pvalue_half(nA, nA + nB))
        ref = binomtest(nA, nA + nB, 0.5).pvalue if nA + nB > 0 else 1.0
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------- certificate
def test_constant_classifier_radius_hand_computed():
    x = torch.zeros(4, 5)
    n, alpha, sigma = 1000, 0.001, 0.5
    cert = sm.certify(constant_scores(2), x, sigma, n0=10, n=n, alpha=alpha, generator=0)
    pA = alpha ** (1.0 / n)  # Clopper-Pearson lower bound when all n samples agree
    R = sigma * PhiInv(pA)
    assert (cert.prediction == 2).all()
    assert torch.equal(cert.counts, torch.tensor([[0, 0, n]] * 4))
    assert torch.allclose(cert.pA_lower, torch.full((4,), pA, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cert.radius_l2, torch.full((4,), R, dtype=torch.float64), atol=1e-9)
    assert cert.kind == "probabilistic" and cert.n == n and cert.n0 == 10
    assert cert.alpha == alpha and cert.sigma == sigma
    # chunks that straddle states give the same per-state counts
    small = sm.certify(constant_scores(2), x, sigma, n0=10, n=n, alpha=alpha, generator=0,
                       batch_size=7)
    assert torch.equal(small.counts, cert.counts) and (small.counts_selection.sum(1) == 10).all()


def test_linear_classifier_radius_close_to_distance():
    # smoothed halfspace: P[class 0] = Phi(d / sigma), so the exact radius is d.
    d = torch.tensor([0.1, 0.3, 0.6])
    x = torch.zeros(3, 2)
    x[:, 0] = d
    sigma, n, alpha = 0.5, 100_000, 0.001
    cert = sm.certify(halfspace, x, sigma, n0=100, n=n, alpha=alpha, generator=1,
                      batch_size=50_000)
    assert (cert.prediction == 0).all()
    for b in range(3):
        nA = int(cert.counts[b, 0])
        pA = binomtest(nA, n, alternative="greater").proportion_ci(1 - alpha).low
        assert float(cert.radius_l2[b]) == pytest.approx(sigma * PhiInv(pA), abs=1e-9)
        assert float(cert.radius_l2[b]) < float(d[b])  # never more than the true radius
        assert float(cert.radius_l2[b]) > float(d[b]) - 0.03


def test_abstain():
    # on the decision boundary pA ~ 1/2: CERTIFY abstains with radius 0
    x = torch.zeros(2, 2)
    cert = sm.certify(halfspace, x, 0.25, n0=100, n=2000, alpha=0.001, generator=0)
    assert (cert.prediction == -1).all() and (cert.radius_l2 == 0).all()
    pred = sm.predict(halfspace, x, 0.25, n=2000, alpha=0.001, generator=0)
    assert (pred.prediction == -1).all()
    # too few samples: even a constant classifier has pA_lower = alpha < 1/2
    cert1 = sm.certify(constant_scores(1), x, 0.25, n0=1, n=1, alpha=0.01, generator=0)
    assert (cert1.prediction == -1).all()
    assert torch.allclose(cert1.pA_lower, torch.full((2,), 0.01, dtype=torch.float64))
    # far from the boundary PREDICT answers
    far = torch.tensor([[2.0, 0.0]])
    assert int(sm.predict(halfspace, far, 0.25, 200, 0.001, generator=0).prediction[0]) == 0


def test_determinism_under_seed():
    x = torch.randn(5, 3) * 0.2
    a = sm.certify(halfspace, x, 0.5, 50, 500, 0.01, generator=123)
    b = sm.certify(halfspace, x, 0.5, 50, 500, 0.01, generator=torch.Generator().manual_seed(123))
    c = sm.certify(halfspace, x, 0.5, 50, 500, 0.01, generator=124)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius_l2, b.radius_l2)
    assert not torch.equal(a.counts, c.counts)
    v1 = sm.certify_value(halfspace, x, 0.5, 300, 0.01, -1, 1, generator=7)
    v2 = sm.certify_value(halfspace, x, 0.5, 300, 0.01, -1, 1, generator=7)
    assert torch.equal(v1.q_smooth, v2.q_smooth)


def test_fresh_noise_per_state_and_per_phase():
    seen = []

    def rec(z):
        seen.append(z.clone())
        return halfspace(z)

    x = torch.zeros(3, 4)  # three identical states
    sm.certify(rec, x, 1.0, n0=8, n=16, alpha=0.1, generator=0, batch_size=5)
    z = torch.cat(seen)  # state-major: selection (3 x 8) then estimation (3 x 16)
    assert z.shape[0] == 3 * 8 + 3 * 16
    assert torch.unique(z, dim=0).shape[0] == z.shape[0]  # every sample has its own noise
    sel = z[:24].reshape(3, 8, 4)
    est = z[24:].reshape(3, 16, 4)
    assert not torch.allclose(sel[0], sel[1]) and not torch.allclose(est[1], est[2])
    # noise is N(0, sigma^2): sanity of the scale
    seen.clear()
    sm.certify_value(rec, torch.zeros(2, 4), 0.3, 4000, 0.1, -1, 1, generator=0)
    z = torch.cat(seen)
    assert z.std().item() == pytest.approx(0.3, rel=0.05)
    assert not torch.allclose(z[:4000], z[4000:])


# ------------------------------------------------------ smoothed value (CROP)
def test_value_certificate_hand_computed():
    q = torch.tensor([0.6, 0.1, -0.4])

    def qf(z):
        return q.expand(z.shape[0], 3)

    x = torch.zeros(2, 6)
    m, alpha, sigma, lo, hi = 1000, 0.01, 0.2, -1.0, 1.0
    for simultaneous, a_eff in [(True, alpha / 6), (False, alpha)]:
        cert = sm.certify_value(qf, x, sigma, m, alpha, lo, hi, generator=0,
                                simultaneous=simultaneous)
        D = (hi - lo) * math.sqrt(math.log(1 / a_eff) / (2 * m))
        R = sigma / 2 * (PhiInv((0.6 - D - lo) / (hi - lo)) - PhiInv((0.1 + D - lo) / (hi - lo)))
        assert cert.hoeffding_margin == pytest.approx(D)
        assert cert.alpha_per_bound == pytest.approx(a_eff)
        assert torch.allclose(cert.radius_l2, torch.full((2,), R, dtype=torch.float64))
        assert (cert.prediction == 0).all() and (cert.runner_up == 1).all()
        lo_r, hi_r = cert.bounds_at(0.3)
        exp_lo = lo + (hi - lo) * Phi(PhiInv((0.6 - D - lo) / (hi - lo)) - 0.3 / sigma)
        exp_hi = lo + (hi - lo) * Phi(PhiInv((0.1 + D - lo) / (hi - lo)) + 0.3 / sigma)
        assert float(lo_r[0, 0]) == pytest.approx(exp_lo)
        assert float(hi_r[0, 1]) == pytest.approx(exp_hi)
    # Q values are clamped to [V_lo, V_hi] before averaging
    big = sm.certify_value(lambda z: torch.full((z.shape[0], 2), 5.0), x, 0.1, 10, 0.1, -1, 1, 0)
    assert torch.allclose(big.q_smooth, torch.ones(2, 2, dtype=torch.float64))
    # tied actions: no positive radius -> abstain
    assert (big.prediction == -1).all() and (big.radius_l2 == 0).all()


def test_value_bounds_hold_under_perturbation():
    torch.manual_seed(0)
    W = torch.randn(3, 4)
    bias = torch.tensor([1.0, 0.0, -0.5])

    def qf(z):
        return z @ W.T + bias

    x = torch.randn(1, 4) * 0.3
    sigma, lo, hi = 0.5, -3.0, 3.0
    cert = sm.certify_value(qf, x, sigma, 20_000, 0.001, lo, hi, generator=0, batch_size=20_000)
    assert int(cert.prediction[0]) == 0 and float(cert.radius_l2[0]) > 0.1
    for r in [0.0, 0.1, 0.5]:
        lb, ub = cert.bounds_at(r)
        for seed in range(3):
            g = torch.Generator().manual_seed(100 + seed)
            delta = torch.randn(1, 4, generator=g)
            delta = delta / delta.norm() * r
            ref = sm.certify_value(qf, x + delta, sigma, 200_000, 0.001, lo, hi,
                                   generator=seed + 10, batch_size=100_000)
            assert (ref.q_smooth >= lb - 2e-3).all() and (ref.q_smooth <= ub + 2e-3).all()
            if cert.prediction[0] >= 0 and r < float(cert.radius_l2[0]):
                assert int(ref.top_action[0]) == int(cert.prediction[0])


# ------------------------------------------------------------- l_inf bridge
def test_linf_to_l2_explicit():
    assert sm.linf_to_l2(0.1, 4) == pytest.approx(0.2)
    # the corner of the l_inf ball has exactly that l2 norm
    d = 7
    corner = torch.full((d,), 0.03)
    assert corner.norm().item() == pytest.approx(sm.linf_to_l2(0.03, d), rel=1e-6)
    with pytest.raises(ValueError):
        sm.linf_to_l2(-1.0, 3)
    x = torch.zeros(3, 4)
    x[:, 0] = torch.tensor([0.05, 0.3, 0.0])
    cert = sm.certify(halfspace, x, 0.25, 100, 5000, 0.001, generator=0)
    chk = cert.certified_linf(0.05)
    assert chk.eps_linf == 0.05 and chk.eps_l2_equiv == pytest.approx(0.1) and chk.dim == 4
    expect = (cert.prediction >= 0) & (cert.radius_l2 > 0.1)
    assert torch.equal(chk.certified, expect)
    assert bool(chk.certified[1]) and not bool(chk.certified[2])
    assert "sqrt" in chk.conversion and chk.kind == "probabilistic"
    vc = sm.certify_value(halfspace, x, 0.25, 2000, 0.001, -1, 1, generator=0)
    chk2 = sm.certified_linf(vc, 0.01, dim=2)
    assert chk2.eps_l2_equiv == pytest.approx(0.01 * math.sqrt(2))


def test_bad_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        sm.certify(halfspace, x, 0.0, 10, 10, 0.01)
    with pytest.raises(ValueError):
        sm.certify(halfspace, x, 0.1, 10, 10, 1.5)
    with pytest.raises(ValueError):
        sm.certify(halfspace, torch.full((2, 3), float("nan")), 0.1, 10, 10, 0.01)
    with pytest.raises(ValueError):
        sm.certify_value(halfspace, x, 0.1, 10, 0.01, 1.0, 1.0)
    with pytest.raises(ValueError):
        sm.certify(lambda z: z.sum(), x, 0.1, 10, 10, 0.01)
    with pytest.raises(TypeError):
        sm.certify(halfspace, x, 0.1, 10, 10, 0.01, generator="seed")
    assert np.all(sm.clopper_pearson_lower([0, 5], [5, 5], 0.05) >= 0)
