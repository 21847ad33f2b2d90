"""Per-dimension eps (ThreatModel.scale): soundness by sampling, serialisation, errors."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch

import bounds
from certrl import ThreatModel
from certrl.threat import parse_scale
from tests.conftest import NETS, shared_net

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
NORMS = [math.inf, 2.0, 1.0]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _scale_for(shape, seed=0):
    """Scales spread over two orders of magnitude (0.05 .. 5)."""
    g = np.random.default_rng(seed)
    return tuple(float(v) for v in 10 ** g.uniform(-1.3, 0.7, size=math.prod(shape)))


def unit_ball_points(norm, n, B, d, g):
    """(n, B, d) points u with ||u||_norm <= 1: interior, corners / vertices / surface."""
    k = n // 2
    if norm == math.inf:
        inner = torch.rand((k, B, d), generator=g) * 2 - 1
        corners = torch.randint(0, 2, (n - k, B, d), generator=g).float() * 2 - 1
        return torch.cat([inner, corners])
    if norm == 2.0:
        z = torch.randn((n, B, d), generator=g)
        z = z / z.norm(dim=-1, keepdim=True)
        r = torch.rand((n, B, 1), generator=g) ** (1.0 / d)
        r[:k] = 1.0
        return z * r
    idx = torch.randint(0, d, (k, B), generator=g)
    sign = torch.randint(0, 2, (k, B), generator=g).float() * 2 - 1
    verts = torch.zeros(k, B, d).scatter_(2, idx.unsqueeze(-1), sign.unsqueeze(-1))
    ex = -torch.log(torch.rand((n - k, B, d + 1), generator=g))
    inner = ex[..., :d] / ex.sum(-1, keepdim=True)
    inner = inner * (torch.randint(0, 2, inner.shape, generator=g) * 2 - 1)
    return torch.cat([verts, inner])


def sample_threat(tm, x, eps, n, seed=0):
    """Points of {x' : ||(x' - x) / scale||_p <= eps} clipped to the domain, built from
    the threat model's definition (not from the ball's eps tensor): (n, B, *shape)."""
    g = torch.Generator().manual_seed(seed)
    B, d = x.shape[0], x[0].numel()
    u = unit_ball_points(tm.norm, n, B, d, g)
    s = torch.ones(d) if tm.scale is None else torch.tensor(tm.scale)
    pts = x.reshape(1, B, d) + eps * s * u
    return tm.clip(pts).reshape(n, *x.shape)


def _setup(name, norm, clip, scaled=True):
    _, shape = NETS[name]
    net = shared_net(name)
    x = torch.rand((3, *shape), generator=torch.Generator().manual_seed(1))
    tm = ThreatModel(norm=norm, eps=0.05, lower=0.0 if clip else None,
                     upper=1.0 if clip else None, scale=_scale_for(shape) if scaled else None)
    return net, x, tm


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_scaled_bounds_contain_samples(name, method, norm, clip):
    net, x, tm = _setup(name, norm, clip)
    n = 256
    with torch.no_grad():
        lb, ub = bounds.compute(net, tm.ball(x), method=method, alpha_iterations=5)
        pts = sample_threat(tm, x, tm.eps, n)
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(n, x.shape[0], -1)
    assert (lb <= ub + TOL).all()
    assert (out >= lb - TOL).all(), f"sample below lb by {(lb - out).max():.3g}"
    assert (out <= ub + TOL).all(), f"sample above ub by {(out - ub).max():.3g}"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
def test_scaled_margin_lower_below_sampled_margins(method, norm):
    net, x, tm = _setup("mlp", norm, True)
    with torch.no_grad():
        labels = net(x).argmax(1)
        lbm = bounds.margin_lower(net, tm.ball(x), labels, method=method, alpha_iterations=5)
        pts = sample_threat(tm, x, tm.eps, 512, seed=3)
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(512, x.shape[0], -1)
    own = out.gather(2, labels.reshape(1, -1, 1).expand(512, -1, 1))
    mask = torch.ones_like(lbm, dtype=torch.bool).scatter_(1, labels[:, None], False)
    assert ((own - out).min(0).values[mask] >= lbm[mask] - TOL).all()


@pytest.mark.parametrize("norm", NORMS)
def test_scale_really_changes_the_set(norm):
    """The sampler and the ball agree on the shape: a point outside the scaled set but
    inside the plain ball is refused by ``contains``, and the bounds differ."""
    net, x, tm = _setup("mlp", norm, False)
    ball, plain = tm.ball(x), tm.with_scale(None).ball(x)
    pts = sample_threat(tm, x, tm.eps, 64)
    assert ball.contains(pts, tol=1e-4).all()  # float32 rounding relative to eps ~ 3e-3
    s = torch.tensor(tm.scale)
    j = int(s.argmin())
    far = x.clone()
    far[:, j] += tm.eps * 0.99  # fine for the plain ball, too far where scale_j < 0.99
    assert plain.contains(far).all() and not ball.contains(far).any()
    with torch.no_grad():
        a = bounds.compute(net, ball, method="crown")
        b = bounds.compute(net, plain, method="crown")
    assert not torch.allclose(a[0], b[0])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
def test_scale_one_equals_plain_ball(method, norm):
    net, x, tm = _setup("cnn", norm, True, scaled=False)
    ones = tm.with_scale([1.0] * x[0].numel())
    with torch.no_grad():
        a = bounds.compute(net, tm.ball(x), method=method, alpha_iterations=5)
        b = bounds.compute(net, ones.ball(x), method=method, alpha_iterations=5)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_lirpa_agrees_on_scaled_linf(name, method):
    net, x, tm = _setup(name, math.inf, True)
    with torch.no_grad():
        a = bounds.compute(net, tm.ball(x), method=method, backend="native")
        b = bounds.compute(net, tm.ball(x), method=method, backend="lirpa")
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", [2.0, 1.0])
def test_lirpa_refuses_scaled_l2_l1(norm):
    net, x, tm = _setup("mlp", norm, False)
    with pytest.raises(ValueError, match="per-dimension eps"):
        bounds.compute(net, tm.ball(x), method="crown", backend="lirpa")


def test_exact_milp_sound_on_scaled_box():
    net, x, tm = _setup("mlp", math.inf, True)
    with torch.no_grad():
        labels = net(x).argmax(1)
        res = bounds.milp_margin(net, x, tm.ball(x).eps, labels, lower=0.0, upper=1.0)
        pts = sample_threat(tm, x, tm.eps, 512, seed=5)
        out = net(pts.reshape(-1, *x.shape[1:])).reshape(512, x.shape[0], -1)
        crown = bounds.margin_lower(net, tm.ball(x), labels, method="crown")
    own = out.gather(2, labels.reshape(1, -1, 1).expand(512, -1, 1))
    mask = torch.ones_like(crown, dtype=torch.bool).scatter_(1, labels[:, None], False)
    exact = res.values.float()
    assert ((own - out).min(0).values[mask] >= exact[mask] - 1e-4).all()
    assert (exact[mask] >= crown[mask] - 1e-4).all()  # exact is the tightest


# ------------------------------------------------------------------ the threat model
def test_eps_tensor_shapes_and_values():
    tm = ThreatModel(eps=0.1, scale=(1.0, 2.0, 3.0))
    x = torch.zeros(4, 3)
    e = tm.eps_tensor(None, x)
    assert e.shape == (3,) and torch.allclose(e, torch.tensor([0.1, 0.2, 0.3]))
    per_state = tm.eps_tensor(torch.tensor([0.0, 1.0, 2.0, 3.0]), x)
    assert per_state.shape == (4, 3)
    assert torch.allclose(per_state[2], torch.tensor([2.0, 4.0, 6.0]))
    ball = tm.ball(x, 0.5)
    lo, hi = ball.box()
    assert torch.allclose(hi[0], torch.tensor([0.5, 1.0, 1.5]))
    plain = ThreatModel(eps=0.1)
    assert plain.eps_tensor(None, x).dim() == 0
    assert plain.eps_tensor(torch.ones(4), x).shape == (4, 1)
    img = ThreatModel(eps=0.1, scale=[1.0] * 8).eps_tensor(0.2, torch.zeros(2, 2, 2, 2))
    assert img.shape == (2, 2, 2)


def test_scale_length_is_checked_when_a_ball_is_built():
    tm = ThreatModel(eps=0.1, scale=(1.0, 2.0))
    with pytest.raises(ValueError, match="2 entries but the network input"):
        tm.ball(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="per-state eps has 2 entries"):
        tm.ball(torch.zeros(3, 2), torch.ones(2))


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")], [float("inf")],
                                 ["a"], [True], 3.0, "1,x", [1e39]])
def test_bad_scale(bad):
    with pytest.raises(ValueError):
        ThreatModel(eps=0.1, scale=bad)


def test_parse_scale_spellings():
    assert parse_scale(None) is None and parse_scale("none") is None and parse_scale("") is None
    assert parse_scale("0.5, 2") == (0.5, 2.0)
    assert parse_scale(np.array([[1, 2], [3, 4]])) == (1.0, 2.0, 3.0, 4.0)
    assert parse_scale(torch.tensor([0.25])) == (0.25,)


def _hash(d):
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def test_serialisation_round_trip_and_old_dicts_unchanged():
    old = {"norm": "inf", "eps": 0.05, "space": "raw observation", "lower": None,
           "upper": None, "budget": "per-step"}
    tm = ThreatModel.from_dict(old)
    assert tm.scale is None and tm.to_dict() == old and _hash(tm.to_dict()) == _hash(old)
    scaled = tm.with_scale(np.array([0.7, 1.1, 0.12, 0.44]))
    d = scaled.to_dict()
    assert d["scale"] == [0.7, 1.1, 0.12, 0.44]
    assert json.loads(json.dumps(d)) == d
    assert ThreatModel.from_dict(d) == scaled
    assert scaled.with_eps(0.2).scale == scaled.scale and scaled.with_eps(0.2).eps == 0.2
    assert scaled.with_scale(None).to_dict() == old


def test_agent_identity_of_unscaled_agent_unchanged(cartpole):
    """The shipped agents' identity (hashing the threat dict) does not move."""
    from certrl.identity import compute_identity

    before = compute_identity(cartpole)
    assert "scale" not in cartpole.threat_model.to_dict()
    cartpole.threat_model = cartpole.threat_model.with_scale([1.0, 1.0, 1.0, 1.0])
    try:
        assert compute_identity(cartpole) != before
    finally:
        cartpole.threat_model = cartpole.threat_model.with_scale(None)
    assert compute_identity(cartpole) == before


def test_describe_and_max_shift():
    tm = ThreatModel(eps=0.05, space="raw observation", scale=(0.7322321, 1.0629482))
    text = tm.describe()
    assert "l_inf eps 0.05" in text and "0.732" in text and "1.06" in text
    assert "scale" not in ThreatModel(eps=0.05).describe()
    assert tm.max_shift() == pytest.approx(0.05 * 1.0629482)
    assert tm.max_shift(norm=2) == pytest.approx(0.05 * math.hypot(0.7322321, 1.0629482))
    assert ThreatModel(eps=0.1).max_shift(norm=2, dim=16) == pytest.approx(0.4)
    assert ThreatModel(norm=2, eps=0.1, scale=(1.0, 3.0)).max_shift(norm=2) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        ThreatModel(eps=0.1).max_shift(norm=2)


# ------------------------------------------------------------------ obs_stats
def test_floored_std_and_errors():
    from certrl.obs_stats import floored_std, reference_std

    x = np.stack([np.arange(10.0), np.full(10, 3.0), 0.5 * np.arange(10.0)], axis=1)
    std = floored_std(x)
    top = np.arange(10.0).std()
    np.testing.assert_allclose(std, [top, 0.01 * top, 0.5 * top])
    np.testing.assert_allclose(floored_std(x, rel_floor=0.2)[1], 0.2 * top)
    with pytest.raises(ValueError, match="constant"):
        floored_std(np.ones((5, 3)))
    with pytest.raises(ValueError):
        floored_std(x[:1])
    with pytest.raises(ValueError):
        floored_std(x, rel_floor=0.0)
    assert reference_std("CartPole-v1")[2] == pytest.approx(0.12236707)
    assert len(reference_std("Acrobot-v1")) == 6
    with pytest.raises(ValueError, match="no reference std"):
        reference_std("Pong")


def test_measure_obs_std_on_the_shipped_agent(cartpole):
    from certrl.obs_stats import collect_inputs, measure_obs_std

    std = measure_obs_std(cartpole, episodes=2, seed=0)
    assert std.shape == (4,) and (std > 0).all()
    np.testing.assert_allclose(std, measure_obs_std(cartpole, episodes=2, seed=0))
    x = collect_inputs(cartpole, episodes=2, seed=0)
    np.testing.assert_allclose(std, x.std(axis=0))  # no dimension is constant here
    tm = cartpole.threat_model.with_eps(0.05).with_scale(std)
    ball = tm.ball(torch.as_tensor(x[:3], dtype=torch.float32))
    torch.testing.assert_close(ball.eps_full()[0], torch.as_tensor(0.05 * std, dtype=torch.float32))
    with pytest.raises(ValueError):
        measure_obs_std(cartpole, episodes=0)
