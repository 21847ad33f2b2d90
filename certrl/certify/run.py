"""Certify an agent along seeded episodes and write JSON lines, resumably.

Work is split in units (episode, eps, method). Each unit's rows (one per state
plus one per episode) are appended to the results file in one write and
fsynced; an unterminated last line (a crash mid-write) is ignored when reading
and dropped before the next append, so no half-written line is ever used.
Re-running with the same file skips units already present (their episode
row, written last in the unit, carries the ``unit`` key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from certrl.agent import Agent
from certrl.certify.state import (
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    certify_states,
    check_method,
    validate,
)
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
from certrl.records import _clean, agent_fields

TRAJ_METHODS = ("policy-smoothing", "gwc")


def all_methods() -> tuple[str, ...]:
    """State methods and trajectory-level methods accepted by ``certrl certify``."""
    from certrl.certify.state import STATE_METHODS

    return (*STATE_METHODS, *TRAJ_METHODS)


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
    ps_episodes: int = 100  # smoothed episodes for policy smoothing / S-DQN
    ps_return_min: float | None = None
    gwc_method: str = "ibp"
    state_rows: bool = True

    def for_method(self, method: str) -> dict:
        """The settings that matter for ``method`` (JSON-able)."""
        d = {"seed": self.seed, "max_steps": self.max_steps}
        if method in ("ibp", "crown", "crown-ibp", "alpha-crown", "exact", "lipschitz"):
            d["radius"] = asdict(self.radius)
        if method in ("ibp", "crown", "crown-ibp", "alpha-crown"):
            d["backend"] = self.backend
        if method == "alpha-crown":
            d["alpha_iterations"] = self.alpha_iterations
        if method == "exact":
            d["exact"] = asdict(self.exact)
        if method in ("smoothing", "policy-smoothing"):
            s = asdict(self.smoothing)
            s.pop("batch_size")
            if method == "policy-smoothing":
                s = {"sigma": s["sigma"], "alpha": s["alpha"], "episodes": self.ps_episodes,
                     "return_min": self.ps_return_min}
            d["smoothing"] = s
        if method == "gwc":
            d["gwc_bounds"] = self.gwc_method
        return d


# Fields written once per unit (episode row), not repeated on every state row.
_UNIT_ONLY = ("config", "versions", "train_versions", "settings", "threat_model")


# ------------------------------------------------------------ results file
def _drop_partial_tail(path: Path) -> None:
    """Truncate a trailing line that has no newline (left by a crash mid-write)."""
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(pos - step + i + 1)
                return
            pos -= step
        f.truncate(0)


def append_rows_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append a unit's JSON lines to ``path`` in one write, then fsync.

    Lines are only ever appended whole: a crash can at worst leave an
    unterminated last line, which is dropped before the next append (and
    ignored by ``read_rows``), so a unit is complete exactly when its final
    episode row is in the file. Cost is linear in what is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(_clean(r)) + "\n" for r in rows).encode()
    if path.exists():
        _drop_partial_tail(path)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON lines file (ValueError naming the line if one is not JSON)."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # unterminated last line: an interrupted write, not a result
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e})") from None
    return rows


def agent_id(agent: Agent, checkpoint: str) -> str:
    return f"{checkpoint}|{agent.env_id}|{agent.algo}|{agent.loss_name}|seed{agent.seed}"


def unit_key(aid: str, episode, eps: float, method: str) -> str:
    return f"{aid}|ep={episode}|eps={float(eps)!r}|{method}"


def settings_hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def completed_units(path: str | os.PathLike, aid: str, settings: CertifySettings,
                    methods: list[str] | None = None) -> set[str]:
    """Unit keys already in ``path`` for this agent; ValueError if their settings differ."""
    p = Path(path)
    if not p.exists():
        return set()
    done = set()
    for r in read_rows(p):
        key = r.get("unit")
        if r.get("record") not in ("episode", "batch", "trajectory_bound") or not key:
            continue
        if not key.startswith(aid + "|") or (methods is not None and r["method"] not in methods):
            continue
        want = settings_hash(settings.for_method(r["method"]))
        if r.get("settings_hash") != want:
            raise ValueError(
                f"{path} already holds {r['method']} results for this agent made with other "
                f"settings ({r.get('settings')}); use another --out or the same settings")
        done.add(key)
    return done


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


def certification_net(agent: Agent):
    """The acting network for certification: its bounded form, or the network itself
    when it is a Lipschitz (SortNet / l_inf-dist) network without one."""
    from certrl.certify.state import lipschitz_constant

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
        bad = [m for m in methods if m in TRAJ_METHODS]
        if bad:
            raise ValueError(f"{', '.join(bad)} certify whole episodes, not given observations")
    if not eps_list:
        raise ValueError("give at least one --eps")
    for e in eps_list:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
            raise ValueError(f"eps must be finite and >= 0; got {e}")
    if not methods:
        raise ValueError("give at least one --method")
    known = all_methods()
    net = certification_net(agent)
    for m in methods:
        if m not in known:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(known)}")
        if m in TRAJ_METHODS:
            if agent.action_space_kind != "discrete":
                raise ValueError(f"{m} needs a discrete-action agent")
            if m == "policy-smoothing" and _return_min(agent, settings) is None:
                raise ValueError(f"policy-smoothing needs a lower bound of the return for "
                                 f"{agent.env_id}: pass --return-min")
            continue
        check_method(m)
        validate(net, agent.obs_shape, m, agent.threat_model.norm, agent.action_space_kind,
                 settings.exact)


def _return_min(agent: Agent, settings: CertifySettings) -> float | None:
    if settings.ps_return_min is not None:
        return float(settings.ps_return_min)
    return RETURN_MIN.get(agent.env_id)


def run_certify(agent: Agent, checkpoint: str, eps_list: list[float], methods: list[str],
                episodes: int, out: str | os.PathLike, settings: CertifySettings | None = None,
                progress: bool = True, observations=None) -> dict:
    """Certify ``agent`` over ``episodes`` seeded episodes; append rows to ``out``.

    Returns {"units": total, "skipped": already done, "written": new units,
    "summary": {(method, eps): {"acr", "episodes", "certified_trajectories", ...}}}
    computed over every episode row of this agent now in ``out``. With
    ``observations`` (raw observations (N, *obs_shape)) those states are certified
    instead of episodes (one unit per eps and method, episode "obs").
    """
    from tqdm import tqdm

    settings = settings or CertifySettings()
    eps_list = [float(e) for e in eps_list]
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    check_request(agent, eps_list, methods, settings, observations)
    aid = agent_id(agent, checkpoint)
    done = completed_units(out, aid, settings, methods)
    units = plan_units(episodes, eps_list, methods, observations is not None)
    todo = [u for u in units if unit_key(aid, *u) not in done]
    base = agent_fields(agent, checkpoint)
    tm = agent.threat_model
    net = certification_net(agent)
    lower, upper = tm.lower, tm.upper
    bar = tqdm(total=len(units), initial=len(units) - len(todo), disable=not progress,
               unit="unit", desc=f"certify {Path(str(checkpoint)).name}", file=sys.stderr,
               dynamic_ncols=True)
    episodes_cache: dict[int, object] = {}
    try:
        # group state-method units by (episode, method) so one radius search serves all eps
        groups: dict[tuple, list[float]] = {}
        for ep, e, m in todo:
            groups.setdefault((ep, m), []).append(e)
        for (ep, m), eps_todo in groups.items():
            st = settings.for_method(m)
            common = {**base, "source": "certify", "method": m, "settings": st,
                      "settings_hash": settings_hash(st), "eval_seed": settings.seed,
                      "threat_model": tm.to_dict()}
            if m == "policy-smoothing":
                _policy_smoothing_units(agent, aid, eps_todo, settings, common, out, bar)
                continue
            if m == "gwc":
                for e in eps_todo:
                    t0 = time.perf_counter()
                    res = gwc_rollout(agent, e, settings.gwc_method, seed=settings.seed,
                                      max_steps=settings.max_steps, indices=[ep])[0]
                    res["gwc_return"] = res.pop("return")
                    row = {**common, "record": "episode", "unit": unit_key(aid, ep, e, m),
                           "eps": e, "certificate_kind": "heuristic",
                           "note": "greedy worst case (RADIAL); not a certificate",
                           **res,
                           "time_s": time.perf_counter() - t0}
                    append_rows_atomic(out, [row])
                    bar.update(1)
                continue
            if ep == "obs" and ep not in episodes_cache:
                xo = agent.preprocess(np.asarray(observations))
                episodes_cache[ep] = Episode("obs", None, xo, np.full(len(xo), -1),
                                             np.full(len(xo), np.nan))
            if ep not in episodes_cache:
                episodes_cache[ep] = rollout(agent, 1, settings.seed, settings.max_steps,
                                             indices=[ep])[0]
            episode = episodes_cache[ep]
            certs = certify_states(
                net, episode.x, eps_todo, m, kind=agent.action_space_kind, norm=tm.norm,
                lower=lower, upper=upper, backend=settings.backend, radius=settings.radius,
                smoothing=settings.smoothing, exact=settings.exact,
                alpha_iterations=settings.alpha_iterations,
                generator=settings.seed * 100003 + (episode.seed or 0))
            # state rows carry the identifying fields of design.md section 5; the
            # bulky config / versions / settings live once per unit in its episode row
            lean = {k: v for k, v in common.items() if k not in _UNIT_ONLY}
            for cert in certs:
                rows = []
                if settings.state_rows:
                    for t in range(episode.steps):
                        rows.append({**lean, "record": "state", "episode": ep,
                                     "episode_seed": episode.seed, "step": t,
                                     **cert.state_row(t)})
                summ = episode_summary(episode, cert)
                extra = {}
                if m == "smoothing":
                    extra = {k: cert.extra[k] for k in
                             ("n0", "n", "alpha", "sigma", "bound", "bound_type", "eps_l2",
                              "conversion", "input_dim", "policy")}
                rows.append({**common, "record": "batch" if ep == "obs" else "episode",
                             "unit": unit_key(aid, ep, cert.eps, m),
                             "episode": ep, "episode_seed": episode.seed, "eps": cert.eps,
                             "certificate_kind": cert.certificate_kind, **extra, **summ,
                             "length": summ["steps"], "time_s": cert.time_s})
                append_rows_atomic(out, rows)
                bar.update(1)
    finally:
        bar.close()
    return {"units": len(units), "skipped": len(units) - len(todo), "written": len(todo),
            "summary": summarize(out, aid)}


def _policy_smoothing_units(agent, aid, eps_todo, settings, common, out, bar) -> None:
    s = settings.smoothing
    t0 = time.perf_counter()
    rets, lens = smoothed_returns(agent, settings.ps_episodes, s.sigma, settings.seed,
                                  settings.max_steps)
    dt = time.perf_counter() - t0
    H = int(settings.max_steps or lens.max())
    d = int(np.prod(agent.obs_shape))
    rmin = _return_min(agent, settings)
    for e in eps_todo:
        budget = episode_l2_budget(e, d, H, agent.threat_model.norm)
        ps = policy_smoothing_bound(rets, budget, s.sigma, s.alpha, rmin)
        per_step = budget / math.sqrt(H)
        med = sdqn_median_bound(rets, per_step, H, s.sigma, s.alpha)
        row = {**common, "record": "trajectory_bound", "unit": unit_key(aid, "all", e,
                                                                        "policy-smoothing"),
               "episode": "all", "eps": e, "certificate_kind": "probabilistic",
               "policy": "smoothed", "bound_type": "l2", "horizon": H, "input_dim": d,
               "conversion": ("B = eps * sqrt(d) * sqrt(H) (per-step l_inf ball inside the l2 "
                              "ball, H steps)" if agent.threat_model.norm == math.inf
                              else "B = eps * sqrt(H)"),
               "policy_smoothing": ps, "sdqn_median": med,
               "certified_return": ps["certified_return"],
               "median_return_bound": med["median_return_bound"],
               "smoothed_returns": rets.tolist(), "n": int(rets.size), "alpha": s.alpha,
               "bound": "DKW (one-sided)", "time_s": dt / len(eps_todo)}
        append_rows_atomic(out, [row])
        bar.update(1)


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
