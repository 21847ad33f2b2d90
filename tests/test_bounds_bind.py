"""bounds.bind: a network checked once gives the same numbers and errors as the one-shot
bounds.compute / bounds.margin_lower, across balls, batch sizes and weight updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bounds
from bounds import graph

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 4))


def _cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 6 * 6, 3))


def _ball(shape, batch: int, norm=math.inf, seed: int = 0) -> bounds.LpBall:
    g = torch.Generator().manual_seed(seed)
    return bounds.LpBall(torch.rand(batch, *shape, generator=g), 0.05, norm, lower=0.0, upper=1.0)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


@pytest.mark.parametrize("make,shape", [(_mlp, (5,)), (_cnn, (2, 6, 6))])
@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_bind_equals_compute_for_every_method(make, shape, backend, norm):
    net = make()
    bound = bounds.bind(net, backend)
    ball = _ball(shape, 3, norm)
    k = net(ball.center).shape[1]
    C = torch.randn(3, 2, k, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2])
    for method in METHODS:
        for spec, upper in ((None, True), (C, True), (C, False), (None, False)):
            kw = dict(method=method, C=spec, alpha_iterations=3, bound_upper=upper)
            lb, ub = bound.compute(ball, **kw)
            lb0, ub0 = bounds.compute(net, ball, backend=backend, **kw)
            assert torch.equal(lb, lb0) and _same(ub, ub0)
        m = bound.margin_lower(ball, labels, method, alpha_iterations=3)
        assert torch.equal(m, bounds.margin_lower(net, ball, labels, method, backend,
                                                  alpha_iterations=3))


def test_bind_lirpa_backend_equals_compute():
    net = _mlp()
    bound = bounds.bind(net, "lirpa")
    ball = _ball((5,), 2)
    C = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    for method in ("ibp", "crown"):
        a = bound.compute(ball, method, C=C)
        b = bounds.compute(net, ball, method, C=C, backend="lirpa")
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(bound.margin_lower(ball, [0, 3], method),
                           bounds.margin_lower(net, ball, [0, 3], method, backend="lirpa"))


def test_bound_object_reused_across_batch_sizes_and_weight_updates():
    net = _mlp()
    bound = bounds.bind(net)
    for batch in (1, 4, 2):
        ball = _ball((5,), batch, seed=batch)
        labels = torch.arange(batch) % 4
        assert torch.equal(bound.compute(ball)[0], bounds.compute(net, ball)[0])
        assert torch.equal(bound.margin_lower(ball, labels),
                           bounds.margin_lower(net, ball, labels))
    ball = _ball((5,), 3)
    before = bound.compute(ball, "crown")[0]
    with torch.no_grad():  # a training step updates the weights in place
        net[0].weight.mul_(1.5)
        net[2].bias.add_(0.3)
    after = bound.compute(ball, "crown")[0]
    assert not torch.equal(before, after)  # the update is seen ...
    assert torch.equal(after, bounds.compute(net, ball, "crown")[0])  # ... exactly


def test_replaced_module_is_parsed_again():
    net = _mlp()
    bound = bounds.bind(net)
    ball = _ball((5,), 2)
    bound.compute(ball)
    net[4] = nn.Linear(16, 6)  # a new head with another width
    lb, ub = bound.compute(ball, "crown")
    assert lb.shape == (2, 6)
    assert torch.equal(lb, bounds.compute(net, ball, "crown")[0])


def test_parse_runs_once_per_input_shape(monkeypatch):
    calls = []
    real = graph.parse_modules

    def counting(modules, in_shape):
        calls.append(in_shape)
        return real(modules, in_shape)

    monkeypatch.setattr(graph, "parse_modules", counting)
    bound = bounds.bind(_cnn())
    for batch in (1, 3, 2):
        bound.compute(_ball((2, 6, 6), batch), "ibp")
        bound.margin_lower(_ball((2, 6, 6), batch), [0] * batch, "crown")
    assert calls == [(2, 6, 6)]
    with pytest.raises(ValueError, match="does not fit layer 3"):  # another shape: parsed
        bound.compute(_ball((2, 8, 8), 1), "ibp")
    assert calls == [(2, 6, 6), (2, 8, 8)]


def _error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test compares whatever is raised
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("backend", ["native", "auto", "lirpa"])
def test_errors_are_the_same_as_the_one_shot_form(backend):
    net = _mlp()
    good = _ball((5,), 2)
    cases = [
        (dict(ball="not a ball"), {}),
        (dict(ball=_ball((6,), 2)), {}),  # input width
        (dict(ball=bounds.LpBall(torch.zeros(2, 5, dtype=torch.float64), 0.1)), {}),
        (dict(ball=good), dict(method="magic")),
        (dict(ball=good), dict(alpha_iterations=-1)),
        (dict(ball=good), dict(C=torch.zeros(2, 3, 7))),
    ]
    bound = bounds.bind(net, backend)
    for ball_kw, kw in cases:
        ball = ball_kw["ball"]
        one = _error(bounds.compute, net, ball, backend=backend, **kw)
        assert one is not None
        assert _error(bound.compute, ball, **kw) == one
    label_cases = [[0.5, 1.0], [0, 9], [0]]
    for labels in label_cases:
        one = _error(bounds.margin_lower, net, good, labels, backend=backend)
        assert one is not None
        assert _error(bound.margin_lower, good, labels) == one


def test_bind_refuses_bad_network_and_backend():
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        bounds.bind("net")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        bounds.bind(_mlp(), "gpu")


# ---------------------------------------------------------------- parse_norm / trusted
@pytest.mark.parametrize("name,value", [
    (math.inf, math.inf), ("inf", math.inf), ("Linf", math.inf), ("l_inf", math.inf),
    ("infinity", math.inf), (" INF ", math.inf), (2, 2.0), ("2", 2.0), ("l2", 2.0),
    ("L_2", 2.0), ("2.0", 2.0), (1, 1.0), ("1", 1.0), ("l1", 1.0), ("l_1", 1.0),
])
def test_parse_norm_accepts(name, value):
    assert bounds.parse_norm(name) == value
    assert isinstance(bounds.parse_norm(name), float)


@pytest.mark.parametrize("bad", [3, 0.5, "l3", "max", None, [2], float("nan")])
def test_parse_norm_refuses(bad):
    with pytest.raises(ValueError, match="norm"):
        bounds.parse_norm(bad)


def test_trusted_ball_bounds_like_a_checked_ball():
    x = torch.rand(2, 5)
    eps = torch.full((1, 5), 0.03)
    checked = bounds.LpBall(x, eps, 2.0, lower=0.0, upper=1.0)
    fast = bounds.LpBall.trusted(x, eps, 2.0, checked.lower, checked.upper)
    assert fast == checked or torch.equal(fast.center, checked.center)
    net = _mlp()
    assert torch.equal(bounds.compute(net, fast)[0], bounds.compute(net, checked)[0])
    # no validation at all: a negative eps is kept as given (callers must pass valid fields)
    assert float(bounds.LpBall.trusted(x, torch.tensor(-1.0), math.inf).eps) == -1.0


@pytest.mark.parametrize("method", METHODS)
def test_margin_problem_equals_one_shot_margins(method):
    """A MarginProblem built once gives the same margins as the one-shot form, on the
    whole batch and on any subset of its states (as a radius search indexes it)."""
    net, ball = _mlp(), _ball((5,), 6)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    bound = bounds.bind(net)
    problem = bound.margin_problem(ball.center, labels)
    assert torch.equal(bound.margin_lower(ball, problem, method),
                       bounds.margin_lower(net, ball, labels, method))
    idx = [4, 1]
    sub = bounds.LpBall(ball.center[idx], 0.02, ball.norm, lower=0.0, upper=1.0)
    assert torch.equal(bound.margin_lower(sub, problem[idx], method),
                       bounds.margin_lower(net, sub, labels[idx], method))


def test_margin_problem_refuses_other_centres():
    """The rounding allowance belongs to the centres it was computed at: a problem
    applied to a ball around other points is an error, not a silent bound."""
    net, ball = _mlp(), _ball((5,), 3)
    bound = bounds.bind(net)
    problem = bound.margin_problem(ball.center, torch.tensor([0, 1, 2]))
    other = _ball((5,), 3, seed=1)
    with pytest.raises(ValueError, match="other centres"):
        bound.margin_lower(other, problem)
    with pytest.raises(ValueError, match="other centres"):
        bound.margin_lower(ball, problem[[0, 1]])
