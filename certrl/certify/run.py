"""Certify an agent along seeded episodes and write JSON lines, resumably.

Work is split in units (agent identity, episode, eps, method). Each unit's rows
(one per state plus one per episode) are appended to the results file in one
write under an exclusive file lock and fsynced (``certrl.records``); an
unterminated last line (a crash mid-write) is skipped when reading and dropped
before the next append, so no half-written line is ever used. Re-running with
the same file skips units already present (their episode row, written last in
the unit, carries the ``unit`` key); several processes may work on one file at
once and no unit is written twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from certrl.agent import Agent
from certrl.certify.methods import (
    BabConfig,
    CertifyOptions,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    get_method,
    lipschitz_constant,
    method_names,
)
from certrl.certify.state import certify_states, check_eps_list, in_reward_units, validate
from certrl.certify.trajectory import (
    RETURN_MIN,
    Episode,
    episode_l2_budget,
    episode_summary,
    gwc_rollout,
    policy_smoothing_bound,
    rollout,
    sdqn_median_bound,
    smoothed_returns,
)
from certrl.identity import agent_identity
from certrl.records import UnitLog, agent_fields, read_rows, reset_file

TRAJ_METHODS = method_names("trajectory")


def all_methods() -> tuple[str, ...]:
    """Every registered method (state and trajectory level), as ``certrl certify`` takes."""
    return method_names()


# Deliberate parallel (duplicates lists it): a run's settings repeat CertifyOptions' fields
# flat (rows record them flat); ``options`` converts them.
@dataclass
class CertifySettings:
    """Everything that changes the numbers of a certification run (recorded in every row)."""

    seed: int = 0
    max_steps: int | None = None
    backend: str = "auto"
    alpha_iterations: int = 20
    radius: RadiusConfig = field(default_factory=RadiusConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    bab: BabConfig = field(default_factory=BabConfig)
    ps_episodes: int = 100  # smoothed episodes for policy smoothing / S-DQN
    ps_return_min: float | None = None
    gwc_method: str = "ibp"
    state_rows: bool = True

    def for_method(self, method: str) -> dict:
        """The settings that matter for ``method`` (JSON-able; see ``methods``)."""
        return {"seed": self.seed, "max_steps": self.max_steps,
                **get_method(method).settings(self)}

    def options(self, seed) -> CertifyOptions:
        """The state-certification options of these settings (smoothing noise ``seed``)."""
        return CertifyOptions(backend=self.backend, alpha_iterations=self.alpha_iterations,
                              radius=self.radius, smoothing=self.smoothing, exact=self.exact,
                              bab=self.bab, seed=seed)


# Fields written once per unit (episode row), not repeated on every state row.
_UNIT_ONLY = ("config", "versions", "train_versions", "settings", "threat_model")


# ------------------------------------------------------------ results file
UNIT_RECORDS = ("episode", "batch", "trajectory_bound")  # rows that finish a unit


def agent_id(agent: Agent) -> str:
    """The agent part of certify unit keys: its sha256 identity (never the path)."""
    return agent_identity(agent)


def unit_key(aid: str, episode, eps: float, method: str) -> str:
    return f"{aid}|ep={episode}|eps={float(eps)!r}|{method}"


def settings_hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def unit_log(path: str | os.PathLike, aid: str, settings: CertifySettings,
             methods: list[str] | None = None) -> UnitLog:
    """The finished certify units of agent ``aid`` in ``path`` (see ``records.UnitLog``).

    Refreshing it raises ValueError when the file holds results for this agent
    and one of ``methods`` made with other settings.
    """
    path = Path(path)

    def key_of(r: dict) -> str | None:
        key = r.get("unit")
        if r.get("record") not in UNIT_RECORDS or not isinstance(key, str):
            return None
        if not key.startswith(aid + "|"):
            return None
        if methods is not None and r.get("method") not in methods:
            return None
        if r.get("settings_hash") != settings_hash(settings.for_method(r["method"])):
            raise ValueError(
                f"{path} already holds {r['method']} results for this agent made with other "
                f"settings ({r.get('settings')}); use another --out, the same settings, or "
                "--force to overwrite it")
        return key

    return UnitLog(path, key_of)


def completed_units(path: str | os.PathLike, aid: str, settings: CertifySettings,
                    methods: list[str] | None = None) -> set[str]:
    """Unit keys already in ``path`` for this agent; ValueError if their settings differ."""
    return set(unit_log(path, aid, settings, methods).refresh())


# ------------------------------------------------------------------ runner
def plan_units(episodes: int, eps_list: list[float], methods: list[str],
               observations: bool = False) -> list[tuple]:
    """(episode, eps, method) work units; policy smoothing is one unit per eps."""
    if observations:
        return [("obs", e, m) for m in methods for e in eps_list]
    units = []
    for m in methods:
        if m == "policy-smoothing":
            units += [("all", e, m) for e in eps_list]
        else:
            units += [(i, e, m) for i in range(episodes) for e in eps_list]
    return units


def q_scale(agent: Agent) -> float | None:
    """The factor between the network's Q values and Q in true reward units: the
    agent's ``reward_scale`` (rewards were multiplied by it in training; 1.0 for older
    checkpoints) for a DQN agent, None for agents whose outputs are not Q values."""
    if agent.algo != "dqn":
        return None
    return float(agent.reward_scale)


def certification_net(agent: Agent):
    """The acting network for certification: its bounded form, or the network itself
    when it is a Lipschitz (SortNet / l_inf-dist) network without one."""
    try:
        return agent.bounded_form()
    except ValueError:
        if lipschitz_constant(agent.net) is not None:
            return agent.net.eval()
        raise


def check_request(agent: Agent, eps_list: list[float], methods: list[str],
                  settings: CertifySettings, observations=None) -> None:
    """Raise ValueError for a request that cannot run (before anything is written)."""
    if observations is not None:
        _check_observations(agent, observations, methods)
    if not eps_list:
        raise ValueError("give at least one --eps")
    check_eps_list(eps_list)
    if not methods:
        raise ValueError("give at least one --method")
    net = certification_net(agent)
    for name in methods:
        m = get_method(name)
        if m.level == "state":
            validate(net, agent.obs_shape, name, agent.threat_model.norm,
                     agent.action_space_kind, settings.options(settings.seed))
            continue
        if agent.action_space_kind not in m.actions:
            raise ValueError(f"{name} needs a discrete-action agent")
        if name == "policy-smoothing":
            _check_return_min(agent, settings)


def _check_observations(agent: Agent, observations, methods: list[str]) -> None:
    obs = np.asarray(observations)
    if obs.dtype == object or not np.issubdtype(obs.dtype, np.number):
        raise ValueError("observations must be a numeric array")
    if tuple(obs.shape[1:]) != agent.obs_shape or obs.ndim != len(agent.obs_shape) + 1:
        raise ValueError(f"observations of shape {tuple(obs.shape)} do not match the "
                         f"agent's (N, {', '.join(map(str, agent.obs_shape))}) for "
                         f"{agent.env_id}")
    if obs.shape[0] == 0:
        raise ValueError("observations: empty batch")
    if not np.isfinite(obs.astype(np.float64)).all():
        raise ValueError("observations contain NaN or inf values")
    bad = [m for m in methods if get_method(m).level == "trajectory"]
    if bad:
        raise ValueError(f"{', '.join(bad)} certify whole episodes, not given observations")


def _check_return_min(agent: Agent, settings: CertifySettings) -> None:
    rmin = _return_min(agent, settings)
    if rmin is None:
        raise ValueError(f"policy-smoothing needs a lower bound of the return for "
                         f"{agent.env_id}: pass --return-min")
    if not math.isfinite(rmin):
        raise ValueError(f"--return-min must be a finite number; got {rmin}")


def _return_min(agent: Agent, settings: CertifySettings) -> float | None:
    if settings.ps_return_min is not None:
        return float(settings.ps_return_min)
    return RETURN_MIN.get(agent.env_id)


def run_certify(agent: Agent, checkpoint: str, eps_list: list[float], methods: list[str],
                episodes: int, out: str | os.PathLike, settings: CertifySettings | None = None,
                progress: bool = True, observations=None, fresh: bool = False,
                device: str | torch.device | None = None) -> dict:
    """Certify ``agent`` over ``episodes`` seeded episodes; append rows to ``out``.

    ``checkpoint`` is the label the user gave (path or shipped name); units are
    keyed by the agent's sha256 identity. Before each unit the finished units
    are re-read (under the file lock) and a unit another process finished is
    skipped; a unit finished meanwhile is discarded instead of written twice.
    ``fresh`` empties ``out`` first (``--force``), after the request is checked.

    Returns {"units": total, "skipped": done by earlier runs or other processes,
    "written": new units, "summary": {(method, eps): {"acr", "episodes",
    "certified_trajectories", ...}}} computed over every episode row of this
    agent now in ``out``. With ``observations`` (raw observations (N, *obs_shape))
    those states are certified instead of episodes (one unit per eps and method,
    episode "obs"). ``device``: move the agent's networks there first (``Agent.to``; None:
    where they are); every bound is computed on the agent's device.
    """
    agent.to(device)
    settings = settings or CertifySettings()
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    check_request(agent, eps_list, methods, settings, observations)
    eps_list = [float(e) for e in eps_list]
    aid = agent_id(agent)
    if fresh:
        reset_file(out)
    log = unit_log(out, aid, settings, methods)
    done = log.refresh()
    units = plan_units(episodes, eps_list, methods, observations is not None)
    ctx = _RunContext(agent, aid, settings, out, log, observations, checkpoint)
    bar = _progress_bar(progress, len(units), sum(unit_key(aid, *u) in done for u in units),
                        checkpoint)
    try:
        # group units by (episode, method) so one rollout / radius search serves all eps
        groups: dict[tuple, list[float]] = {}
        for ep, e, m in units:
            groups.setdefault((ep, m), []).append(e)
        for (ep, m), eps_all in groups.items():
            eps_todo = [e for e in eps_all if unit_key(aid, ep, e, m) not in log.refresh()]
            bar.update(len(eps_all) - len(eps_todo))
            if eps_todo:
                ctx.run_group(ep, m, eps_todo, bar)
    finally:
        bar.close()
    return {"units": len(units), "skipped": len(units) - ctx.written, "written": ctx.written,
            "summary": summarize(out, aid)}


def _progress_bar(progress: bool, total: int, initial: int, checkpoint: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not progress, unit="unit",
                desc=f"certify {Path(str(checkpoint)).name}", file=sys.stderr,
                dynamic_ncols=True)


class _RunContext:
    """What the units of one ``run_certify`` call share; counts the units it wrote."""

    def __init__(self, agent: Agent, aid: str, settings: CertifySettings, out, log: UnitLog,
                 observations, checkpoint: str):
        self.agent, self.aid, self.settings, self.out = agent, aid, settings, out
        self.log, self.observations = log, observations
        self.base = agent_fields(agent, checkpoint)
        self.net = certification_net(agent)
        self.written = 0
        self._episodes: dict = {}

    def commit(self, key: str, rows: list[dict], bar) -> None:
        self.written += int(self.log.commit(key, rows))
        bar.update(1)

    def common(self, m: str) -> dict:
        st = self.settings.for_method(m)
        tm = self.agent.threat_model
        return {**self.base, "source": "certify", "method": m, "settings": st,
                "settings_hash": settings_hash(st), "eval_seed": self.settings.seed,
                "threat_model": tm.to_dict()}

    def run_group(self, ep, m: str, eps_todo: list[float], bar) -> None:
        """Compute and commit the units (ep, e, m) for e in ``eps_todo``."""
        if get_method(m).level == "state":
            self.states(ep, m, eps_todo, bar)
        elif m == "policy-smoothing":  # trajectory methods: one runner each
            self.policy_smoothing(eps_todo, bar)
        else:
            self.gwc(ep, m, eps_todo, bar)

    def episode(self, ep) -> Episode:
        if ep not in self._episodes:
            if ep == "obs":
                xo = self.agent.preprocess(np.asarray(self.observations))
                self._episodes[ep] = Episode("obs", None, xo, np.full(len(xo), -1),
                                             np.full(len(xo), np.nan))
            else:
                st = self.settings
                self._episodes[ep] = rollout(self.agent, 1, st.seed, st.max_steps,
                                             indices=[ep])[0]
        return self._episodes[ep]

    def gwc(self, ep: int, m: str, eps_todo: list[float], bar) -> None:
        """Greedy worst case (``m``: gwc, gwc-ibp or gwc-crown) of episode ``ep``."""
        st, common = self.settings, self.common(m)
        how = get_method(m).bounds_for(st)
        for e in eps_todo:
            t0 = time.perf_counter()
            res = gwc_rollout(self.agent, e, how, seed=st.seed,
                              max_steps=st.max_steps, indices=[ep])[0]
            res["gwc_return"] = res.pop("return")
            key = unit_key(self.aid, ep, e, m)
            row = {**common, "record": "episode", "unit": key, "eps": e,
                   "certificate_kind": "heuristic", "gwc_bounds": how,
                   "note": f"greedy worst case (RADIAL) with {how} bounds; not a certificate",
                   **res, "length": res["steps"], "time_s": time.perf_counter() - t0}
            self.commit(key, [row], bar)

    def states(self, ep, m: str, eps_todo: list[float], bar) -> None:
        st, tm, agent = self.settings, self.agent.threat_model, self.agent
        common = self.common(m)
        episode = self.episode(ep)
        certs = certify_states(
            self.net, episode.x, eps_todo, m, kind=agent.action_space_kind, threat=tm,
            options=st.options(st.seed * 100003 + (episode.seed or 0)))
        scale = q_scale(agent)
        if scale is not None:  # report Q values and bounds in true reward units
            certs = [in_reward_units(c, scale) for c in certs]
        # state rows carry the identifying fields of a result row (docs/results.md); the
        # bulky config / versions / settings live once per unit in its episode row
        lean = {k: v for k, v in common.items() if k not in _UNIT_ONLY}
        for cert in certs:
            rows = []
            if st.state_rows:
                rows = [{**lean, "record": "state", "episode": ep, "episode_seed": episode.seed,
                         "step": t, **cert.state_row(t)} for t in range(episode.steps)]
            summ = episode_summary(episode, cert)
            extra = {k: cert.extra[k] for k in get_method(m).episode_fields}
            key = unit_key(self.aid, ep, cert.eps, m)
            last = {**common, "record": "batch" if ep == "obs" else "episode", "unit": key,
                    "episode": ep, "episode_seed": episode.seed, "eps": cert.eps,
                    "certificate_kind": cert.certificate_kind, **extra, **summ,
                    "reward_scale": scale,
                    "length": summ["steps"], "time_s": cert.time_s}
            if ep != "obs":
                last["truncated"] = episode.truncated
            self.commit(key, [*rows, last], bar)

    def policy_smoothing(self, eps_todo: list[float], bar) -> None:
        agent, settings = self.agent, self.settings
        common = self.common("policy-smoothing")
        s = settings.smoothing
        t0 = time.perf_counter()
        rets, lens = smoothed_returns(agent, settings.ps_episodes, s.sigma, settings.seed,
                                      settings.max_steps)
        dt = time.perf_counter() - t0
        H = int(settings.max_steps or lens.max())
        d = int(np.prod(agent.obs_shape))
        rmin = _return_min(agent, settings)
        tm = agent.threat_model
        for e in eps_todo:
            budget = episode_l2_budget(e, d, H, tm.norm, tm.scale)
            ps = policy_smoothing_bound(rets, budget, s.sigma, s.alpha, rmin)
            per_step = budget / math.sqrt(H)
            med = sdqn_median_bound(rets, per_step, H, s.sigma, s.alpha)
            key = unit_key(self.aid, "all", e, "policy-smoothing")
            row = {**common, "record": "trajectory_bound", "unit": key,
                   "episode": "all", "eps": e, "certificate_kind": "probabilistic",
                   "policy": "smoothed", "bound_type": "l2", "horizon": H, "input_dim": d,
                   "conversion": _budget_words(tm),
                   "policy_smoothing": ps, "sdqn_median": med,
                   "certified_return": ps["certified_return"],
                   "median_return_bound": med["median_return_bound"],
                   "smoothed_returns": rets.tolist(), "n": int(rets.size), "alpha": s.alpha,
                   "bound": "DKW (one-sided)", "time_s": dt / len(eps_todo)}
            self.commit(key, [row], bar)


def _budget_words(tm) -> str:
    """How the per-step threat set became the episode's total l2 budget B (in words)."""
    if tm.scale is not None:
        k = "||scale||_2" if tm.norm == math.inf else "max(scale)"
        return f"B = eps * {k} * sqrt(H) (per-step scaled set inside the l2 ball, H steps)"
    if tm.norm == math.inf:
        return "B = eps * sqrt(d) * sqrt(H) (per-step l_inf ball inside the l2 ball, H steps)"
    return "B = eps * sqrt(H)"


def summarize(out: str | os.PathLike, aid: str | None = None) -> dict:
    """Per (method, eps): episodes, pooled ACR, certified trajectories (or return bounds)."""
    p = Path(out)
    if not p.exists():
        return {}
    acc: dict[tuple, dict] = {}
    for r in read_rows(p):
        if r.get("record") == "trajectory_bound" and r.get("source") == "certify":
            if aid is None or str(r.get("unit", "")).startswith(aid + "|"):
                acc[(r["method"], float(r["eps"]))] = {
                    "episodes": r["n"], "kind": r["certificate_kind"], "acr": None,
                    "certified_return": r["certified_return"],
                    "median_return_bound": r["median_return_bound"], "returns": []}
            continue
        if r.get("record") not in ("episode", "batch") or r.get("source") != "certify":
            continue
        if aid is not None and not str(r.get("unit", "")).startswith(aid + "|"):
            continue
        k = (r["method"], float(r["eps"]))
        a = acc.setdefault(k, {"episodes": 0, "steps": 0, "certified_steps": 0,
                               "certified_trajectories": 0, "returns": [], "kind":
                               r.get("certificate_kind")})
        a["episodes"] += 1
        a["returns"].append(r.get("gwc_return", r.get("return")))
        if r.get("certified_steps") is not None:
            a["steps"] += r["steps"]
            a["certified_steps"] += r["certified_steps"]
            a["certified_trajectories"] += int(bool(r.get("certified_trajectory")))
    for a in acc.values():
        if "certified_return" not in a:
            a["acr"] = a["certified_steps"] / a["steps"] if a["steps"] else None
    return acc
