"""Trajectory certificates: certify every state of seeded episodes, and return bounds.

* ``rollout``: N deterministic episodes (env seed ``seed + i``), keeping the
  network inputs, actions and rewards, and whether ``max_steps`` cut the
  episode before the env ended it (``Episode.truncated``).
* ``episode_summary``: per episode, return, steps, certified steps, certified
  fraction and "certified trajectory" (every step certified: in a deterministic
  env with a deterministic policy no per-step eps attack can change any action,
  so the return is guaranteed equal to the nominal one). ACR over several
  episodes = certified steps / steps (``pooled_acr``).
* ``policy_smoothing_bound`` (Kumar et al. 2022, adaptive adversary with a total
  l2 budget B over the episode): certified expected return
  r_0 + sum_k (r_k - r_{k-1}) Phi(PhiInv(LCB_k) - B / sigma), where r_1 < ... < r_m
  are the distinct smoothed returns, r_0 a known lower bound of the return and
  LCB_k = max(0, #{R >= r_k} / n - sqrt(ln(1/alpha) / (2n))) a DKW lower
  confidence bound on P[R >= r_k] (simultaneous over k, level 1 - alpha).
* ``sdqn_median_bound`` (S-DQN, Sun et al. 2024): the p-quantile of the clean
  smoothed returns with p = Phi(PhiInv(1/2 - sqrt(ln(1/alpha) / (2N))) - eps sqrt(H) / sigma).
* ``gwc_rollout`` (RADIAL's greedy worst case): at every step play the lowest-Q
  action among those whose UB >= max_j LB_j. A *heuristic* (an attack that is
  not even realizable), never a certificate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm as _norm

import bounds
from certrl.agent import Agent
from certrl.certify.state import StateCertificates
from certrl.rollout import Step, acting, play

# known lower bounds of the episode return (needed by the policy-smoothing bound)
RETURN_MIN = {"CartPole-v1": 0.0, "Acrobot-v1": -500.0, "MountainCar-v0": -200.0}


@dataclass
class Episode:
    """One nominal (unattacked, deterministic) episode."""

    index: int
    seed: int
    x: torch.Tensor  # (T, *in_shape) network inputs
    actions: np.ndarray  # (T,)
    rewards: np.ndarray  # (T,)
    truncated: bool = False  # cut by max_steps before the env itself ended it

    @property
    def steps(self) -> int:
        return int(self.x.shape[0])

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())


def rollout(agent: Agent, episodes: int, seed: int = 0, max_steps: int | None = None,
            indices: list[int] | None = None) -> list[Episode]:
    """Run deterministic episodes i (env seed ``seed + i``) and keep their network inputs."""
    idx = list(range(episodes)) if indices is None else list(indices)
    steps: dict[int, list[Step]] = {i: [] for i in idx}
    ends = play(agent, idx, seed, lambda i: acting(agent), max_steps,
                lambda i, s: steps[i].append(s))
    return [Episode(e.index, e.seed, torch.stack([s.x[0] for s in steps[e.index]]),
                    np.asarray([s.action[0] for s in steps[e.index]]),
                    np.asarray([s.reward for s in steps[e.index]], dtype=np.float64),
                    truncated=e.truncated) for e in ends]


def episode_summary(ep: Episode, cert: StateCertificates) -> dict:
    """Return, steps, certified steps/fraction, certified trajectory for one episode."""
    steps = ep.steps
    given = ep.seed is None  # a batch of given observations, not an episode
    out = {"return": None if given else ep.ret, "steps": steps}
    if cert.certified is None:
        out.update(certified_steps=None, certified_fraction=None, certified_trajectory=None)
    else:
        c = int(np.asarray(cert.certified).sum())
        out.update(certified_steps=c, certified_fraction=c / max(1, steps),
                   certified_trajectory=None if given else bool(c == steps))
    if cert.radius is not None:
        out["mean_radius"] = float(np.mean(cert.radius))
        out["min_radius"] = float(np.min(cert.radius))
    if cert.max_deviation is not None:
        out["mean_max_deviation"] = float(np.mean(cert.max_deviation))
        out["max_max_deviation"] = float(np.max(cert.max_deviation))
    if cert.worst_value is not None:
        out["mean_worst_value"] = float(np.mean(cert.worst_value))
    if cert.action is not None and cert.method == "smoothing" and not given:
        out["smoothed_agrees"] = float(np.mean(cert.action == ep.actions))
    return out


def pooled_acr(summaries: list[dict]) -> float:
    """ACR = sum of certified steps / sum of steps over the episodes."""
    steps = sum(s["steps"] for s in summaries)
    return sum(s["certified_steps"] or 0 for s in summaries) / max(1, steps)


# ------------------------------------------------------ smoothed episodes
def smoothed_returns(agent: Agent, n: int, sigma: float, seed: int = 0,
                     max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of n episodes of the smoothed policy a = pi(x + N(0, sigma^2 I)).

    Episode i uses env seed ``seed + i``; the noise comes from a generator seeded
    with ``seed`` (fresh noise at every step).
    """
    if n < 1:
        raise ValueError(f"need n >= 1 smoothed episodes; got {n}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be positive and finite; got {sigma}")
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    policy = acting(agent, lambda x: x + sigma * torch.randn(x.shape, generator=gen).to(x.device))
    ends = play(agent, list(range(n)), seed, lambda i: policy, max_steps)
    return np.asarray([e.ret for e in ends]), np.asarray([e.length for e in ends])


def dkw_margin(n: int, alpha: float) -> float:
    """One-sided DKW: P[sup_r (F_n(r) - F(r)) > e] <= exp(-2 n e^2); e = sqrt(ln(1/alpha)/(2n))."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
    return math.sqrt(math.log(1.0 / alpha) / (2.0 * n))


def episode_l2_budget(eps: float, dim: int, horizon: int, norm: float = math.inf,
                      scale=None) -> float:
    """Total l2 budget B of a per-step eps attack over ``horizon`` steps.

    Per step ||delta||_2 <= eps * sqrt(dim) (l_inf) or eps (l2); with a per-dimension
    ``scale`` s (the set {||delta / s||_p <= eps}) it is eps * ||s||_2 (l_inf) or
    eps * max(s) (l2 / l1). Over H steps the stacked perturbation has l2 norm
    <= sqrt(H) times that.
    """
    if scale is None:
        per = eps * math.sqrt(dim) if norm == math.inf else eps
    else:
        s = np.asarray(scale, dtype=np.float64).reshape(-1)
        if s.size != int(dim):
            raise ValueError(f"scale has {s.size} entries but the input has {dim} elements")
        per = eps * float(np.linalg.norm(s) if norm == math.inf else s.max())
    return per * math.sqrt(horizon)


def policy_smoothing_bound(returns, budget: float, sigma: float, alpha: float,
                           return_min: float) -> dict:
    """Kumar et al. certified expected return of the smoothed policy (probabilistic).

    E[R under any adaptive attack with total l2 budget B] >=
    r_0 + sum_k (r_k - r_{k-1}) Phi(PhiInv(LCB_k) - B / sigma), with r_0 =
    ``return_min`` (every return is >= r_0) and LCB_k the DKW lower bound of
    P[R >= r_k]. Holds with probability >= 1 - alpha over the n episodes.
    """
    R = np.asarray(returns, dtype=np.float64)
    if R.size == 0:
        raise ValueError("need at least one smoothed return")
    if (R < return_min - 1e-9).any():
        raise ValueError(f"a return {R.min()} is below return_min={return_min}")
    n = R.size
    d = dkw_margin(n, alpha)
    levels = np.unique(R)
    levels = levels[levels > return_min]
    prev = return_min
    cert = emp = return_min
    for r in levels:
        p = float((R >= r).mean())
        lcb = max(0.0, p - d)
        shifted = float(_norm.cdf(_norm.ppf(lcb) - budget / sigma)) if lcb > 0 else 0.0
        cert += (r - prev) * shifted
        emp += (r - prev) * p
        prev = r
    return {"certified_return": float(cert), "smoothed_mean_return": float(emp),
            "dkw_margin": d, "budget_l2": float(budget), "sigma": float(sigma),
            "alpha": float(alpha), "n": int(n), "return_min": float(return_min),
            "bound": "DKW (one-sided)", "adversary": "adaptive, total l2 budget"}


def sdqn_median_bound(returns, eps_l2: float, horizon: int, sigma: float,
                      alpha: float) -> dict:
    """Lower bound of the median attacked return (probabilistic; S-DQN / CROP style).

    With s = eps_l2 sqrt(H) / sigma the attacker's total l2 budget in noise units, the
    Gaussian-shift lemma (Kumar et al.) gives F_adv(v) <= Phi(PhiInv(F(v)) + s) for the
    CDF F of the clean smoothed return, and the one-sided DKW inequality
    F <= F_N + delta, delta = sqrt(ln(1/alpha) / (2N)), with probability 1 - alpha. So
    P_adv(R < v) <= 1/2 whenever F_N(v-) <= p = Phi(-s) - delta, and the bound is the
    k-th smallest return with k = ceil(pN) (F_N(R_(k)-) <= (k-1)/N < p); -inf when
    p <= 0. (S-DQN applies the DKW term inside Phi, p = Phi(PhiInv(1/2 - delta) - s),
    which is larger than Phi(-s) - delta for s > 0 and not a valid bound: certrl's
    deviation, docs/smoothing.md.)
    """
    R = np.sort(np.asarray(returns, dtype=np.float64))
    N = R.size
    if N == 0:
        raise ValueError("need at least one smoothed return")
    p = float(_norm.cdf(-eps_l2 * math.sqrt(horizon) / sigma)) - dkw_margin(N, alpha)
    k = math.ceil(p * N) if p > 0 else 0
    value = float(R[k - 1]) if k >= 1 else -math.inf
    return {"median_return_bound": value, "quantile": p, "n": int(N), "alpha": float(alpha),
            "sigma": float(sigma), "eps_l2": float(eps_l2), "horizon": int(horizon),
            "bound": "DKW (one-sided)"}


# ---------------------------------------------------------------- GWC
def gwc_rollout(agent: Agent, eps: float, method: str = "ibp", episodes: int = 1,
                seed: int = 0, max_steps: int | None = None,
                indices: list[int] | None = None) -> list[dict]:
    """Greedy worst case (RADIAL): play argmin_{a: UB_a >= max_j LB_j} Q(x, a) at every step.

    A heuristic lower estimate of the attacked return, never a certificate.
    """
    if agent.action_space_kind != "discrete":
        raise ValueError("GWC needs a discrete-action agent")
    idx = list(range(episodes)) if indices is None else list(indices)
    worst = _GreedyWorstCase(agent, eps, method)
    ends = play(agent, idx, seed, lambda i: worst, max_steps, worst.count)
    return [{"episode": e.index, "episode_seed": e.seed, "return": e.ret, "steps": e.length,
             "truncated": e.truncated,
             "gwc_changed_fraction": worst.changed.get(e.index, 0) / max(1, e.length)}
            for e in ends]


class _GreedyWorstCase:
    """The GWC policy: the lowest-Q action among those whose UB >= max_j LB_j over the
    eps ball; counts per episode the steps where it differs from the greedy action."""

    def __init__(self, agent: Agent, eps: float, method: str):
        if method not in ("ibp", "crown", "crown-ibp", "alpha-crown"):
            raise ValueError(f"GWC bounds must come from ibp, crown, crown-ibp or "
                             f"alpha-crown; got {method!r}")
        self.net, self.tm, self.eps, self.method = agent.bounded_form(), agent.threat_model, \
            eps, method
        self.bound = bounds.bind(self.net, backend="auto")  # parsed once per rollout
        self.changed: dict[int, int] = {}
        self.greedy = -1

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            q = self.net(x)
            lb, ub = self.bound.compute(self.tm.ball(x, self.eps), method=self.method)
        self.greedy = int(q.argmax(1)[0])
        return np.asarray([gwc_action(q, lb, ub)[0]])

    def count(self, i: int, step: Step) -> None:
        self.changed[i] = self.changed.get(i, 0) + int(int(step.action[0]) != self.greedy)


def gwc_action(q: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor) -> list[int]:
    """Per state argmin_{a in A} q_a with A = {a : ub_a >= max_j lb_j} plus the greedy
    action (RADIAL's rule; with sound bounds the greedy action is in A anyway)."""
    possible = ub >= lb.max(dim=1, keepdim=True).values
    possible[torch.arange(q.shape[0], device=q.device), q.argmax(1)] = True
    masked = torch.where(possible, q, torch.full_like(q, math.inf))
    return [int(a) for a in masked.argmin(1).tolist()]
