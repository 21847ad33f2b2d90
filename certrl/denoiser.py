"""S-DQN's denoiser (Sun et al. 2024) in front of a frozen Q-network, and its composition.

Denoiser (an MLP version of the reference's residual DnCNN): D(x) = x - g(x), g an MLP
d -> hidden -> d with ReLU, its last layer initialised to zero (D starts as the identity,
as the reference's last convolution). Trained with the Q-network frozen on transitions
collected by acting with Q(D(x + sigma z)) (epsilon-greedy), minimizing per batch

    L = mean_i Huber(Q(D(x_i + sigma z_i), a_i) - y_i) + sum_{i,j} (D(x_i + sigma z_i)_j - x_ij)^2
    y_i = c r_i + gamma (1 - done_i) max_a Q(x'_i, a)            (clean x', frozen Q)

(reference ``SDQN/train_denoiser.py``: SmoothL1 TD loss of the frozen Q through the
denoiser, target of the frozen Q at the clean next state, plus the summed MSE
reconstruction; c = the agent's reward scale). ``compose`` writes Q o D as one plain ReLU
Q-network: with x = relu(x) - relu(-x) every hidden layer of g carries [h; relu(x);
relu(-x)], and the output layer of D folds into Q's first layer, so the composition is an
ordinary ``q`` MLP (hidden [h_1 + 2d, ..., h_k + 2d, Q's hidden]) that every certificate,
attack and evaluation takes as is: certify certifies exactly the deployed Q o D.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from certrl.agent import Agent
from certrl.envs import make_env
from certrl.nets import build_network


class Denoiser(nn.Module):
    """D(x) = x - g(x), g: Linear-ReLU-...-Linear (d -> hidden -> d), last layer zero."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64,)):
        super().__init__()
        if not hidden:
            raise ValueError("the denoiser needs at least one hidden layer")
        self.spec = {"type": "mlp_denoiser", "in_dim": int(in_dim),
                     "hidden": [int(h) for h in hidden]}
        layers: list[nn.Module] = []
        size = int(in_dim)
        for h in hidden:
            layers += [nn.Linear(size, int(h)), nn.ReLU()]
            size = int(h)
        last = nn.Linear(size, int(in_dim))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.g = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.g(x)


def _mlp_q(net: nn.Module) -> None:
    """ValueError unless ``net`` is a non-dueling MLP ``q`` network without input_norm."""
    spec = getattr(net, "spec", {}) or {}
    body = spec.get("body", {})
    if spec.get("type") != "q" or body.get("kind") != "mlp" or body.get("input_norm") \
            or spec.get("dueling") or body.get("activation", "relu") != "relu":
        raise ValueError("the denoiser composes with a non-dueling ReLU MLP Q-network "
                         "(no input normalization)")


@torch.no_grad()
def compose(q: nn.Module, den: Denoiser) -> nn.Module:
    """One ``q`` MLP computing q(den(x)) (see the module docstring)."""
    _mlp_q(q)
    d = den.spec["in_dim"]
    lin = [m for m in den.g if isinstance(m, nn.Linear)]
    qlin = [m for m in q.body if isinstance(m, nn.Linear)]
    spec = copy.deepcopy(q.spec)
    spec["body"]["hidden"] = [m.out_features + 2 * d for m in lin[:-1]] + \
        [m.out_features for m in qlin]
    fused = build_network(spec)
    out = [m for m in fused.body if isinstance(m, nn.Linear)]
    eye = torch.eye(d)
    for k, m in enumerate(lin[:-1]):
        carry_in = torch.cat([eye, -eye], 0) if k == 0 else \
            torch.cat([torch.zeros(2 * d, m.in_features), torch.eye(2 * d)], 1)
        w_main = m.weight if k == 0 else torch.cat([m.weight, torch.zeros(m.out_features,
                                                                           2 * d)], 1)
        out[k].weight.copy_(torch.cat([w_main, carry_in], 0))
        out[k].bias.copy_(torch.cat([m.bias, torch.zeros(2 * d)]))
    wf, bf, q1 = lin[-1], lin[-1].bias, qlin[0]
    k = len(lin) - 1
    out[k].weight.copy_(torch.cat([-q1.weight @ wf.weight, q1.weight, -q1.weight], 1))
    out[k].bias.copy_(q1.bias - q1.weight @ bf)
    for src, dst in zip(qlin[1:], out[k + 1:]):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)
    fused.head.load_state_dict(q.head.state_dict())
    return fused.eval()


# Deliberate parallel (duplicates lists it): settings dataclasses are lists of typed fields
# of one shape (algorithms, adversaries, denoiser, schedules); each owns its own defaults.
@dataclass
class DenoiserConfig:
    """S-DQN denoiser training (reference Pong config: sigma 0.1, lr_denoiser 1e-3,
    batch 64, Q frozen; its 300k frames and 5000-transition warm-up are scaled down for
    CartPole)."""

    sigma: float = 0.1
    steps: int = 20_000
    hidden: tuple[int, ...] = (64,)
    lr: float = 1e-3
    batch_size: int = 64
    learning_starts: int = 1_000
    buffer_size: int = 50_000
    act_epsilon: float = 0.01
    gamma: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"denoiser sigma must be a finite number > 0; got {self.sigma}")
        if self.steps < 1 or self.batch_size < 1 or self.learning_starts < 1:
            raise ValueError("steps, batch_size and learning_starts must be >= 1")


def denoiser_loss(q: nn.Module, den: Denoiser, batch: dict, sigma: float, gamma: float,
                  reward_scale: float, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """S-DQN's loss: mean Huber TD of the frozen q through den at x + sigma z, plus the
    summed squared reconstruction error of den(x + sigma z) against x."""
    x = batch["obs"]
    xd = den(x + sigma * torch.randn(x.shape, generator=gen))
    q_a = q(xd).gather(1, batch["actions"][:, None]).squeeze(1)
    with torch.no_grad():
        y = reward_scale * batch["rewards"] + gamma * (1 - batch["dones"]) * \
            q(batch["next_obs"]).max(1).values
    td = F.smooth_l1_loss(q_a, y)
    rec = ((xd - x) ** 2).sum()
    return td + rec, {"td": float(td.detach()), "reconstruction": float(rec.detach())}


def train_denoiser(agent: Agent, cfg: DenoiserConfig, progress: bool = True) -> tuple[
        Denoiser, list[dict]]:
    """Train a denoiser for ``agent``'s frozen Q-network (see the module docstring);
    returns it and one log row per episode."""
    _mlp_q(agent.nets["q"])
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed)
    q = copy.deepcopy(agent.nets["q"]).eval().requires_grad_(False)
    d = int(np.prod(agent.obs_shape))
    den = Denoiser(d, cfg.hidden)
    opt = torch.optim.Adam(den.parameters(), lr=cfg.lr)
    buf = _Buffer(cfg.buffer_size, d)
    env = make_env(agent.env_id, cfg.seed, episode_seeds=(cfg.seed, 0))
    obs, _ = env.reset()
    logs, ret, ep_logs = [], 0.0, {}
    for t in tqdm(range(cfg.steps), disable=not progress, desc="denoiser", unit="step"):
        x = agent.preprocess(np.asarray(obs)[None])
        with torch.no_grad():
            a = int(q(den(x + cfg.sigma * torch.randn(x.shape, generator=gen))).argmax(1)[0])
        if rng.random() < cfg.act_epsilon:
            a = int(rng.integers(int(agent.action_space["n"])))
        nxt, r, term, trunc, _ = env.step(a)
        buf.add(x[0].numpy(), a, float(r), agent.preprocess(np.asarray(nxt)[None])[0].numpy(),
                float(term))
        ret, obs = ret + float(r), nxt
        if term or trunc:
            logs.append({"step": t + 1, "return": ret, **ep_logs})
            obs, _ = env.reset()
            ret = 0.0
        if buf.size >= cfg.learning_starts:
            loss, ep_logs = denoiser_loss(q, den, buf.sample(cfg.batch_size, rng), cfg.sigma,
                                          cfg.gamma, agent.reward_scale, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    env.close()
    return den.eval(), logs


class _Buffer:
    """A circular replay buffer of network inputs."""

    def __init__(self, n: int, d: int):
        self.obs, self.nxt = np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
        self.act, self.rew = np.zeros(n, np.int64), np.zeros(n, np.float32)
        self.done, self.n, self.pos, self.size = np.zeros(n, np.float32), n, 0, 0

    def add(self, o, a, r, o2, done) -> None:
        i = self.pos
        self.obs[i], self.act[i], self.rew[i], self.nxt[i], self.done[i] = o, a, r, o2, done
        self.pos, self.size = (i + 1) % self.n, min(self.size + 1, self.n)

    def sample(self, b: int, rng: np.random.Generator) -> dict:
        idx = rng.integers(0, self.size, b)
        return {"obs": torch.as_tensor(self.obs[idx]), "actions": torch.as_tensor(self.act[idx]),
                "rewards": torch.as_tensor(self.rew[idx]), "dones": torch.as_tensor(self.done[idx]),
                "next_obs": torch.as_tensor(self.nxt[idx])}


def denoised_agent(agent: Agent, den: Denoiser, cfg: DenoiserConfig,
                   base_id: str | None = None) -> Agent:
    """A new DQN agent acting with the composition Q o D (one fused MLP), its smoothing
    sigma the denoiser's training sigma, the denoiser's spec and settings in metadata."""
    fused = compose(agent.nets["q"], den)
    meta = {**copy.deepcopy(agent.metadata), "smoothing_sigma": float(cfg.sigma),
            "denoiser": {"spec": den.spec, "config": {**asdict(cfg), "hidden": list(cfg.hidden)},
                         "base_agent": base_id, "reference": "S-DQN (Sun et al. 2024)"}}
    meta.pop("run_group", None)
    return Agent({"q": fused}, env_id=agent.env_id, algo=agent.algo, obs_shape=agent.obs_shape,
                 action_space=agent.action_space, preprocessing=agent.preprocessing,
                 threat_model=agent.threat_model, obs_rms=agent.obs_rms, config=agent.config,
                 seed=agent.seed, loss_name=f"{agent.loss_name}+denoiser", metadata=meta,
                 reward_scale=agent.reward_scale)
