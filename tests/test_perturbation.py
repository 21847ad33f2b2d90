import math

import pytest
import torch

import bounds
from tests.conftest import sample_ball


def test_validation_errors_name_the_problem():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        bounds.LpBall(x, -0.1)
    with pytest.raises(ValueError, match="finite"):
        bounds.LpBall(x, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        bounds.LpBall(torch.tensor([[float("nan"), 0.0, 0.0]]), 0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        bounds.LpBall(x, torch.ones(4))
    with pytest.raises(ValueError, match="lower > upper"):
        bounds.LpBall(x, 0.1, lower=1.0, upper=0.0)
    with pytest.raises(ValueError, match="norm"):
        bounds.LpBall(x, 0.1, norm=3)
    with pytest.raises(ValueError, match="batch"):
        bounds.LpBall(torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="below"):
        bounds.LpBall(torch.full((1, 3), -1.0), 0.1, lower=0.0)


def test_norm_aliases():
    x = torch.zeros(1, 2)
    assert bounds.LpBall(x, 1, norm="inf").norm == math.inf
    assert bounds.LpBall(x, 1, norm="l2").norm == 2.0
    assert bounds.LpBall(x, 1, norm=1).norm == 1.0


def test_box_is_clipped():
    x = torch.tensor([[0.05, 0.5, 0.98]])
    lo, hi = bounds.LpBall(x, 0.1, lower=0.0, upper=1.0).box()
    torch.testing.assert_close(lo, torch.tensor([[0.0, 0.4, 0.88]]))
    torch.testing.assert_close(hi, torch.tensor([[0.15, 0.6, 1.0]]))


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_concretize_matches_extreme_points(norm):
    """min_x' a.x' over the ball equals the closed form (and is attained)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g)
    eps = torch.rand(5, generator=g) + 0.1
    ball = bounds.LpBall(x, eps, norm=norm)
    A = torch.randn(4, 2, 5, generator=g)
    lo = ball.concretize(A, -1.0)
    hi = ball.concretize(A, 1.0)
    pts = sample_ball(ball, 4000, g)  # (n, B, 5)
    vals = torch.einsum("bmd,nbd->nbm", A, pts)
    assert (vals >= lo - 1e-5).all() and (vals <= hi + 1e-5).all()
    # tight: the extreme value is attained at a known point
    if norm == math.inf:
        best = x.unsqueeze(1) - eps * A.sign()
    elif norm == 2.0:
        w = A * eps
        best = x.unsqueeze(1) - eps * w / w.norm(dim=-1, keepdim=True)
    else:  # l1: the minimum is attained at a vertex x -/+ eps_j e_j
        verts = torch.cat([torch.diag(eps), -torch.diag(eps)])  # (2d, d)
        vals_v = torch.einsum("bmd,vd->bmv", A, verts) + (A * x.unsqueeze(1)).sum(-1, True)
        torch.testing.assert_close(vals_v.min(-1).values, lo, rtol=1e-5, atol=1e-5)
        return
    attained = (A * best).sum(-1)
    torch.testing.assert_close(attained, lo, rtol=1e-5, atol=1e-5)


def test_contains_and_per_dim_eps():
    x = torch.zeros(1, 2)
    ball = bounds.LpBall(x, torch.tensor([1.0, 0.0]), norm=2)
    assert ball.contains(torch.tensor([[0.5, 0.0]])).all()
    assert not ball.contains(torch.tensor([[0.5, 0.1]])).any()
