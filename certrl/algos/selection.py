"""Best-checkpoint selection: periodic natural (robust, smoothed) evaluation in training.

Every ``every`` env steps (and at step 0 when fine-tuning, so a fine-tuned agent is
never worse than its start on the metric) the current weights play ``episodes``
greedy episodes with env seeds ``EVAL_SEED + i`` (i = 0..episodes-1: the same
episodes at every evaluation, and separate from the training episodes, which are
reset from seeds derived from the run seed, and from ``certrl evaluate``'s default
seeds 0..N-1). The score is the mean natural return (true env reward units). The
best weights are those with the highest score; ties go to the later evaluation (as
in the RADIAL-DQN and CAR-DQN reference code, ``>=``). Evaluation draws no random
numbers from the training RNGs and uses its own env, so it never changes training.

Four scores (the rule is fixed before training and recorded in the agent's metadata):

* ``natural`` (default): S = mean natural return R_nat over the episodes.
* ``robust`` (``certrl train --select robust``): S = min(R_nat, R_gwc) where R_gwc is the
  mean greedy-worst-case return (RADIAL's GWC, ``certrl.certify.trajectory.gwc_rollout``
  with CROWN bounds) at eps ``robust_eps`` on the same episodes (same env seeds). A
  checkpoint scores high only if it both solves the task and keeps it against the GWC
  heuristic at that eps. GWC is a heuristic (not a certificate), so the kept checkpoint's
  certificates are measured separately.
* ``robust-pgd`` (``--select robust-pgd``): S = min(R_nat, R_gwc, R_pgd), R_pgd the mean
  return under certrl's PGD at ``robust_eps`` (``certrl.attacks.pgd``: ``PGD_STEPS`` steps,
  random start, best iterate, cross-entropy away from the clean greedy action; attack
  seed = the episode index) on the same episodes: early stopping on the attacked return
  of separate validation episodes (Rice et al. 2020's robust early stopping), which the
  table's PGD column then measures on its own episodes.
* ``smoothed`` (``certrl train --loss noise --sigma S --select smoothed``): S = mean return
  of the smoothed agent a user deploys (``certrl.smoothed.SmoothedAgent``: majority vote
  of the greedy action over ``SMOOTHED_SAMPLES`` noisy copies x + sigma z, z ~ N(0, I),
  noise seed 0, at the agent's training sigma) on the same episodes (same env seeds).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from certrl.agent import Agent
from certrl.rollout import acting, play

EVAL_SEED = 1_000_000
METRIC = "natural_return_mean"
ROBUST_METRIC = "min(natural_return_mean, gwc_crown_return_mean)"
ROBUST_PGD_METRIC = "min(natural_return_mean, gwc_crown_return_mean, pgd_return_mean)"
SMOOTHED_METRIC = "smoothed_return_mean"
SELECTS = ("natural", "robust", "robust-pgd", "smoothed")
ROBUST_SELECTS = ("robust", "robust-pgd")  # the scores at an eps (``robust_eps``)
PGD_STEPS = 10  # certrl attack's default PGD
SMOOTHED_SAMPLES = 100  # certrl.smoothed.DEFAULT_SAMPLES (S-DQN's m)
GWC_BOUNDS = "crown"

Evaluator = Callable[[Agent], float]


@contextmanager
def modes_kept(agent: Agent) -> Iterator[None]:
    """Run the block, then give every network of ``agent`` back its train/eval mode."""
    modes = {k: n.training for k, n in agent.nets.items()}
    try:
        yield
    finally:
        for k, n in agent.nets.items():
            n.train(modes[k])


def natural_score(agent: Agent, episodes: int, seed: int = EVAL_SEED,
                  env_kwargs: dict | None = None) -> float:
    """Mean return of ``episodes`` greedy episodes (env seeds seed..seed+episodes-1).

    The networks' train/eval modes are restored afterwards.
    """
    with modes_kept(agent):
        ends = play(agent, list(range(episodes)), seed, lambda i: acting(agent),
                    env_kwargs=env_kwargs)
    return float(np.mean([e.ret for e in ends]))


def gwc_score(agent: Agent, episodes: int, eps: float, seed: int = EVAL_SEED) -> float:
    """Mean GWC-CROWN return at ``eps`` over ``episodes`` env seeds seed..; modes restored."""
    from certrl.certify.trajectory import gwc_rollout  # certify imports algos: lazy

    with modes_kept(agent):
        rows = gwc_rollout(agent, float(eps), GWC_BOUNDS, episodes, seed)
    return float(np.mean([r["return"] for r in rows]))


def robust_score(agent: Agent, episodes: int, eps: float, seed: int = EVAL_SEED,
                 env_kwargs: dict | None = None) -> float:
    """S = min(natural_score, gwc_score at ``eps``) over the same ``episodes`` env seeds."""
    if env_kwargs:
        raise ValueError("robust selection: GWC rollouts take no env kwargs "
                         f"(got {sorted(env_kwargs)})")
    return min(natural_score(agent, episodes, seed), gwc_score(agent, episodes, eps, seed))


def pgd_score(agent: Agent, episodes: int, eps: float, seed: int = EVAL_SEED) -> float:
    """Mean return over ``episodes`` env seeds seed.. when every observation is replaced by
    certrl's PGD (``certrl.attacks.make_attack("pgd")``: PGD_STEPS steps, random start, best
    iterate, CE objective) within the agent's threat set at ``eps``; attack seed = episode
    index. Networks' modes restored."""
    from certrl.attacks import make_attack

    tm = agent.threat_model.with_eps(float(eps))

    def policy_for(i: int):
        return acting(agent, make_attack("pgd", agent.forward, tm, float(eps), PGD_STEPS,
                                         seed=i, action_kind=agent.action_space_kind))
    with modes_kept(agent):
        ends = play(agent, list(range(episodes)), seed, policy_for)
    return float(np.mean([e.ret for e in ends]))


def robust_pgd_score(agent: Agent, episodes: int, eps: float, seed: int = EVAL_SEED,
                     env_kwargs: dict | None = None) -> float:
    """S = min(natural, GWC-CROWN at ``eps``, PGD at ``eps``) over the same env seeds."""
    return min(robust_score(agent, episodes, eps, seed, env_kwargs),
               pgd_score(agent, episodes, eps, seed))


def smoothed_score(agent: Agent, episodes: int, sigma: float, seed: int = EVAL_SEED,
                   env_kwargs: dict | None = None, samples: int = SMOOTHED_SAMPLES) -> float:
    """Mean return of the smoothed agent a(x) = argmax_k #{i : argmax Q(x + sigma z_i) = k}
    (``samples`` seeded draws z_i ~ N(0, I), noise seed 0) over ``episodes`` env seeds
    seed..; the base networks' modes are restored."""
    from certrl.smoothed import SmoothedAgent  # smoothed imports losses: lazy

    with modes_kept(agent):
        return natural_score(SmoothedAgent(agent, float(sigma), samples), episodes, seed,
                             env_kwargs)


def selection_rule(every: int, episodes: int, from_init: bool, select: str = "natural",
                   eps: float | None = None, sigma: float | None = None) -> str:
    """The selection rule in words (recorded in the agent's metadata)."""
    start = " and at step 0 (the init agent's weights)" if from_init else ""
    seeds = f"{episodes} greedy episodes (env seeds {EVAL_SEED}..{EVAL_SEED + episodes - 1})"
    what = f"best mean natural return over {seeds}" if select == "natural" else (
        f"best min(mean natural return, mean GWC-CROWN return at eps {eps:g}) over the same "
        f"{seeds}") if select == "robust" else (
        f"best min(mean natural return, mean GWC-CROWN return at eps {eps:g}, mean return "
        f"under PGD ({PGD_STEPS} steps, random start, CE) at eps {eps:g}) over the same "
        f"{seeds}") if select == "robust-pgd" else (
        f"best mean return of the smoothed agent (majority vote of the greedy action over "
        f"{SMOOTHED_SAMPLES} noisy copies x + sigma z, z ~ N(0, I), sigma {sigma:g}, noise "
        f"seed 0) over the same {seeds}")
    return f"{what} evaluated every {every} env steps{start}; ties -> the later evaluation"


class BestKeeper:
    """Keeps the best-scoring weights of periodic evaluations (see the module doc).

    ``select``: "natural", "robust" / "robust-pgd" (``robust_eps`` > 0 then) or "smoothed"
    (``sigma`` > 0 then); see the module doc.
    ``evaluator(agent) -> score`` defaults to the select's score; tests may replace it.
    ``state_dict`` / ``load_state_dict`` carry the rule, the best weights, score, step and
    the evaluation history through ``--resume``.
    """

    def __init__(self, every: int, episodes: int, from_init: bool = False,
                 env_kwargs: dict | None = None, evaluator: Evaluator | None = None,
                 select: str = "natural", robust_eps: float | None = None,
                 sigma: float | None = None):
        self.every, self.episodes, self.from_init = int(every), int(episodes), from_init
        self.env_kwargs, self.custom = env_kwargs, evaluator
        self.select, self.robust_eps, self.sigma = "natural", None, None
        self.evaluator: Evaluator = evaluator or self.default_evaluator()
        self.set_select(select, robust_eps, sigma)
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_weights: dict[str, dict] | None = None
        self.history: list[list] = []

    def set_select(self, select: str, robust_eps: float | None = None,
                   sigma: float | None = None) -> None:
        """Choose the score ("natural", "robust" / "robust-pgd" at ``robust_eps`` or
        "smoothed" at ``sigma``); only before the first evaluation (fixed in advance)."""
        if select not in SELECTS:
            raise ValueError(f"selection must be one of {SELECTS}; got {select!r}")
        if select in ROBUST_SELECTS and not (robust_eps is not None
                                             and np.isfinite(robust_eps) and robust_eps > 0):
            raise ValueError(f"{select} selection needs an eps > 0 (got {robust_eps})")
        if select == "smoothed" and not (sigma is not None and np.isfinite(sigma)
                                         and sigma > 0):
            raise ValueError(f"smoothed selection needs a sigma > 0 (got {sigma})")
        if getattr(self, "history", None):
            raise ValueError("the selection rule is fixed once evaluations have started")
        self.select = select
        self.robust_eps = float(robust_eps) if select in ROBUST_SELECTS else None
        self.sigma = float(sigma) if select == "smoothed" else None
        if self.custom is None:
            self.evaluator = self.default_evaluator()

    def default_evaluator(self) -> Evaluator:
        """The score of ``self.select`` (natural_score or robust_score)."""
        if self.select in ROBUST_SELECTS:
            score = robust_score if self.select == "robust" else robust_pgd_score
            return lambda agent: score(agent, self.episodes, self.robust_eps, EVAL_SEED,
                                       self.env_kwargs)
        if self.select == "smoothed":
            return lambda agent: smoothed_score(agent, self.episodes, self.sigma, EVAL_SEED,
                                               self.env_kwargs)
        return lambda agent: natural_score(agent, self.episodes, EVAL_SEED, self.env_kwargs)

    def due(self, step: int) -> bool:
        """True when ``step`` is an evaluation point not evaluated yet."""
        if self.history and self.history[-1][0] == step:
            return False
        if step == 0:
            return self.from_init
        return self.every > 0 and step % self.every == 0

    def evaluate(self, agent: Agent, step: int) -> float:
        """Score the agent's current weights; keep them if they are the best so far."""
        score = float(self.evaluator(agent))
        self.history.append([int(step), score])
        if self.best_score is None or score >= self.best_score:
            self.best_score, self.best_step = score, int(step)
            self.best_weights = {k: copy.deepcopy(n.state_dict()) for k, n in agent.nets.items()}
        return score

    @property
    def last_score(self) -> float | None:
        """Score of the latest evaluation (None before the first)."""
        return self.history[-1][1] if self.history else None

    def info(self, chosen: str) -> dict:
        """The ``selection`` metadata entry; ``chosen`` is "best" or "final"."""
        metric = {"natural": METRIC, "robust": ROBUST_METRIC,
                  "robust-pgd": ROBUST_PGD_METRIC, "smoothed": SMOOTHED_METRIC}
        return {"rule": selection_rule(self.every, self.episodes, self.from_init,
                                       self.select, self.robust_eps, self.sigma),
                "metric": metric[self.select], "select": self.select,
                "select_eps": self.robust_eps, "select_sigma": self.sigma,
                "eval_every": self.every, "eval_episodes": self.episodes,
                "eval_seed": EVAL_SEED, "best_step": self.best_step,
                "best_score": self.best_score, "evaluations": [list(h) for h in self.history],
                "chosen": chosen}

    def best_agent(self, agent: Agent) -> Agent:
        """A copy of ``agent`` holding the best weights (``agent`` itself is untouched)."""
        payload = agent.to_payload()
        if self.best_weights is not None:
            for k, entry in payload["nets"].items():
                entry["state_dict"] = copy.deepcopy(self.best_weights[k])
        payload["metadata"]["selection"] = self.info("best")
        payload["metadata"]["selected_step"] = self.best_step
        best = Agent.from_payload(payload, source="best weights")
        best.source = getattr(agent, "source", None)
        return best

    def state_dict(self) -> dict:
        """Best score, step, weights and the history (for the training state)."""
        return {"best_score": self.best_score, "best_step": self.best_step,
                "from_init": self.from_init, "select": self.select,
                "select_eps": self.robust_eps, "select_sigma": self.sigma,
                "best_weights": self.best_weights, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Inverse of ``state_dict`` (the rule too; old states: natural)."""
        self.history = []
        self.set_select(state.get("select", "natural"), state.get("select_eps"),
                        state.get("select_sigma"))
        self.best_score = None if state["best_score"] is None else float(state["best_score"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        weights = state["best_weights"]
        self.best_weights = None if weights is None else {
            k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in sd.items()}
            for k, sd in weights.items()}
        self.history = [[int(s), float(v)] for s, v in state["history"]]
        self.from_init = bool(state.get("from_init", self.from_init))
