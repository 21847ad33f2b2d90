"""Re-run recorded episodes (evaluate, attack, GWC, policy smoothing) and compare.

Every episode certrl writes is seeded: episode i is reset with env seed
``eval_seed + i``, its own generator (sampled actions, attack noise) is seeded
from (``eval_seed``, i), and the attack, its radius, steps, step size,
objective and norm are in the row. So a re-run through the same functions
(``certrl.evaluate.evaluate`` with ``certrl.attacks.make_attack``,
``certrl.certify.trajectory.gwc_rollout``, ``smoothed_returns``) must give the
same return, length, truncation and action changes *exactly*; a difference
means the row, the checkpoint or the environment is not what it says.
"""

from __future__ import annotations

import math

import numpy as np

from certrl.agent import Agent
from certrl.attacks import make_attack
from certrl.certify.methods import get_method
from certrl.certify.trajectory import (
    RETURN_MIN,
    episode_l2_budget,
    gwc_rollout,
    policy_smoothing_bound,
    sdqn_median_bound,
    smoothed_returns,
)
from certrl.evaluate import EpisodeRun, episode_rng_seed, evaluate
from certrl.records import EpisodeRow, GwcRow, TrajectoryBoundRow, clean
from certrl.threat import ThreatModel

from .recertify import NotReplayable, settings_from_row
from .verdict import Tol, compare_fields


def episode_run(row: EpisodeRow) -> EpisodeRun:
    """The ``EpisodeRun`` (request) an evaluate / attack row was made by."""
    st = row.settings or {}
    try:
        return EpisodeRun(row.source, 1, (float(row.eps),), row.attack or "none",
                          str(row.norm), int(row.eval_seed), st.get("max_steps"),
                          bool(row.deterministic), int(row.attack_steps or 0),
                          row.step_size, row.objective)
    except (TypeError, ValueError) as e:
        raise NotReplayable(f"the row's settings are incomplete ({e})") from None


def run_problems(row: EpisodeRow, aid: str) -> list[str]:
    """The settings, their hash and the unit key of an episode row must follow from its
    fields (a field edited without the others is caught here)."""
    run = episode_run(row)
    probs = []
    if clean(run.settings()) != clean(row.settings):
        probs.append(f"settings {row.settings} do not match the row's fields "
                     f"({run.settings()})")
    if row.settings_hash != run.settings_hash():
        probs.append(f"settings_hash {row.settings_hash!r} is not the hash of the row's "
                     f"settings ({run.settings_hash()!r})")
    want = run.unit_key(aid, float(row.eps), int(row.episode))
    if row.unit != want:
        probs.append(f"unit: recorded {row.unit!r}, its fields give {want!r}")
    return probs


def replay_episode(agent: Agent, row: EpisodeRow) -> list[str]:
    """Re-run an evaluate / attack episode row; the fields that differ."""
    run = episode_run(row)
    atk = None
    if row.source == "attack":
        d = agent.threat_model.to_dict()
        d["norm"] = row.norm
        tm = ThreatModel.from_dict(d).with_eps(row.eps)
        objective = "ce" if row.objective in (None, "mad") else row.objective
        atk = make_attack(row.attack, agent.forward, tm, row.eps, run.attack_steps,
                          row.step_size, episode_rng_seed(run.seed, row.episode),
                          agent.action_space_kind, objective)
    res = evaluate(agent, seed=run.seed, attack=atk, deterministic=run.deterministic,
                   max_steps=run.max_steps, indices=[int(row.episode)])
    fresh = {"return": res.returns[0], "length": res.lengths[0],
             "truncated": res.truncated[0], "episode_seed": res.seeds[0]}
    if atk is not None and agent.action_space_kind == "discrete":
        fresh["action_changes"] = res.action_changes[0]
    return compare_fields(row.to_json(), fresh, {})


def replay_gwc(agent: Agent, row: GwcRow) -> list[str]:
    """Re-play a greedy-worst-case episode with its bound method; the fields that differ."""
    st = settings_from_row(row.method, row.settings)
    how = get_method(row.method).bounds_for(st)
    res = gwc_rollout(agent, float(row.eps), how, seed=st.seed, max_steps=st.max_steps,
                      indices=[int(row.episode)])[0]
    fresh = {"gwc_return": res["return"], "steps": res["steps"], "length": res["steps"],
             "truncated": res["truncated"], "episode_seed": res["episode_seed"],
             "gwc_changed_fraction": res["gwc_changed_fraction"],
             "gwc_bounds": how}
    return compare_fields(row.to_json(), fresh, {"gwc_changed_fraction": Tol(1e-12, 1e-12)})


def replay_trajectory_bound(agent: Agent, row: TrajectoryBoundRow) -> list[str]:
    """Re-run the smoothed episodes of a policy-smoothing row (same seed, so the same
    noise) and recompute its bounds; the fields that differ."""
    st = settings_from_row(row.method, row.settings)
    s = st.smoothing
    rets, lens = smoothed_returns(agent, st.ps_episodes, s.sigma, st.seed, st.max_steps)
    H = int(st.max_steps or lens.max())
    d = int(np.prod(agent.obs_shape))
    rmin = st.ps_return_min if st.ps_return_min is not None else RETURN_MIN.get(agent.env_id)
    if rmin is None or not math.isfinite(float(rmin)):
        raise NotReplayable("no lower bound of the return is known for this env")
    tm = agent.threat_model
    budget = episode_l2_budget(float(row.eps), d, H, tm.norm, tm.scale)
    ps = policy_smoothing_bound(rets, budget, s.sigma, s.alpha, float(rmin))
    med = sdqn_median_bound(rets, budget / math.sqrt(H), H, s.sigma, s.alpha)
    fresh = clean({"smoothed_returns": rets.tolist(), "n": int(rets.size), "horizon": H,
                   "certified_return": ps["certified_return"],
                   "median_return_bound": med["median_return_bound"]})
    tol = Tol(1e-9, 1e-9)
    return compare_fields(row.to_json(), fresh, {"certified_return": tol,
                                                  "median_return_bound": tol})
