"""Every shipped ReLU agent: PGD with restarts never flips a CROWN-certified action
on its own trajectory states (regression: a float32-rounding-level margin once did)."""

import numpy as np
import pytest
import torch

import bounds
import certrl
from certrl.agent import shipped_agents
from certrl.envs import make_env

RELU_AGENTS = [
    n for n in shipped_agents() if n.startswith("cartpole-dqn-") and n != "cartpole-dqn-sortnet"
]


def _states(agent, n=300, seed=1):
    env = make_env(agent.env_id, seed=seed)
    obs, _ = env.reset(seed=seed)
    xs = []
    for _ in range(n):
        xs.append(obs)
        obs, _, term, trunc, _ = env.step(int(agent.predict(obs[None])[0]))
        if term or trunc:
            break
    return agent.preprocess(np.array(xs))


@pytest.mark.parametrize("name", RELU_AGENTS)
def test_pgd_never_flips_crown_certified_actions_of_shipped_agents(name):
    torch.manual_seed(0)
    agent = certrl.load(name)
    net = agent.bounded_form()
    x = _states(agent)
    for eps in (0.003, 0.01, 0.03):
        with torch.no_grad():
            lab = net(x).argmax(1)
            cert = bounds.certified(bounds.margin_lower(net, bounds.LpBall(x, eps), lab, "crown"))
        xc, lc = x[cert], lab[cert]
        if not len(xc):
            continue
        for _ in range(5):
            d = (torch.rand_like(xc) * 2 - 1) * eps
            for _ in range(30):
                d.requires_grad_(True)
                out = net(xc + d)
                own = out.gather(1, lc[:, None]).squeeze(1)
                other = out.scatter(1, lc[:, None], -1e9).max(1).values
                (g,) = torch.autograd.grad((other - own).sum(), d)
                d = (d.detach() + eps / 8 * g.sign()).clamp(-eps, eps)
            with torch.no_grad():
                assert (net(xc + d).argmax(1) == lc).all(), f"{name} eps {eps}"
