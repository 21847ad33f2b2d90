"""Shared fixtures: small networks and inputs used across the bound tests, one torch
thread, the shipped CartPole agent."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import bounds
from certrl.agent import load, shipped_agents

warnings.filterwarnings("ignore", module="auto_LiRPA")

SHIPPED = "cartpole-dqn-vanilla"
# The first shipped vanilla CartPole agent (before the 2026-12-05 re-ship), frozen for the
# tests whose recorded numbers depend on one fixed set of weights.
FROZEN = Path(__file__).parent / "data" / "cartpole-dqn-vanilla-v0.pt"


def tiny_finetune(**over):
    """A seconds-long DQN fine-tune config of the shipped vanilla agent with periodic
    selection (60 steps, an evaluation of one episode every 10); ``over`` overrides."""
    from certrl.algos.dqn import DQNConfig

    base = dict(total_steps=60, learning_starts=5, buffer_size=500, eval_every=10,
                eval_episodes=1)
    base.update(over)
    return DQNConfig.for_finetune(SHIPPED, **base)


def check_counterexample(net, ball, C, d, res, mode="all") -> None:
    """A ``bounds.verify`` counterexample lies in the ball and breaks the property
    C f(x) > d: in some row (mode "all", which needs every row) or in every row
    (mode "any", which needs one)."""
    lo, hi = ball.box()
    p = res.counterexample.unsqueeze(0)
    assert (p >= lo).all() and (p <= hi).all()
    with torch.no_grad():
        v = net(p) @ C.T - d
    assert (v.amin() if mode == "all" else v.amax()) <= 0


has_shipped = pytest.mark.skipif(SHIPPED not in shipped_agents(), reason="no shipped agent")


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after the test (commands set it)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread(keep_threads):
    """Torch on one thread for the test (no oversubscription under pytest-xdist)."""
    torch.set_num_threads(1)


@pytest.fixture
def cartpole():
    """The shipped CartPole DQN agent (the test is skipped where it is not shipped)."""
    if SHIPPED not in shipped_agents():
        pytest.skip("no shipped agent")
    return load(SHIPPED)


@pytest.fixture
def frozen_cartpole():
    """The frozen CartPole DQN agent (``FROZEN``): recorded numbers stay valid across
    re-ships of the agents in ``certrl/agents``."""
    return load(FROZEN)


def make_mlp(seed: int = 0, act=nn.ReLU, din: int = 6, dout: int = 4, width: int = 16):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(din, width), act(), nn.Linear(width, width), act(), nn.Linear(width, dout)
    )


def make_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def make_normalized_mlp(seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(
        bounds.Normalize(torch.linspace(-0.5, 0.5, 6), torch.linspace(0.5, 2.0, 6)),
        nn.Linear(6, 12),
        nn.Tanh(),
        nn.Linear(12, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
        nn.Tanh(),
    )


NETS = {
    "mlp": (make_mlp, (6,)),
    "mlp_tanh": (lambda seed=0: make_mlp(seed, act=nn.Tanh), (6,)),
    "cnn": (make_cnn, (2, 9, 9)),
    "normalized": (make_normalized_mlp, (6,)),
}


_BUILT: dict[str, nn.Module] = {}


def shared_net(name: str) -> nn.Module:
    """One instance per network name for the whole session (keeps auto_LiRPA's
    bounded-module cache warm; tests must not modify it)."""
    if name not in _BUILT:
        _BUILT[name] = NETS[name][0]()
    return _BUILT[name]


@pytest.fixture(params=sorted(NETS))
def net_and_input(request):
    _, shape = NETS[request.param]
    net = shared_net(request.param)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((3, *shape), generator=g)
    return request.param, net, x


def sample_ball(ball: bounds.LpBall, n: int, generator: torch.Generator) -> torch.Tensor:
    """Points of the (clipped) ball: interior, l_inf corners, l2 / l1 surface points.

    Returns (n, B, *shape). Clipping each coordinate to [lower, upper] keeps a
    point inside the ball, because the center is inside the domain.
    """
    c = ball.center
    e = ball.eps_full()
    shape = (n, *c.shape)
    d = c[0].numel()
    if ball.norm == float("inf"):
        k = n // 2
        inner = torch.rand(shape, generator=generator) * 2 - 1
        corners = torch.randint(0, 2, shape, generator=generator).to(c.dtype) * 2 - 1
        u = torch.cat([inner[:k], corners[k:]])
    elif ball.norm == 2.0:
        g = torch.randn(shape, generator=generator)
        g = g / g.flatten(2).norm(dim=-1).reshape(n, c.shape[0], *[1] * (c.dim() - 1))
        r = torch.rand((n, c.shape[0]), generator=generator) ** (1.0 / d)
        r[: n // 2] = 1.0  # surface points
        u = g * r.reshape(n, c.shape[0], *[1] * (c.dim() - 1))
    else:
        # l1: vertices +-e_i (the extreme points) and random interior points
        k = n // 2
        idx = torch.randint(0, d, (k, c.shape[0]), generator=generator)
        sign = torch.randint(0, 2, (k, c.shape[0]), generator=generator).to(c.dtype) * 2 - 1
        verts = torch.zeros(k, c.shape[0], d)
        verts.scatter_(2, idx.unsqueeze(-1), sign.unsqueeze(-1))
        expo = -torch.log(torch.rand((n - k, c.shape[0], d + 1), generator=generator))
        inner = expo[..., :d] / expo.sum(-1, keepdim=True)
        inner = inner * (torch.randint(0, 2, inner.shape, generator=generator) * 2 - 1)
        u = torch.cat([verts, inner]).reshape(shape)
    pts = c + e * u
    if ball.lower is not None:
        pts = torch.maximum(pts, ball.lower.expand_as(pts))
    if ball.upper is not None:
        pts = torch.minimum(pts, ball.upper.expand_as(pts))
    return pts
