"""Re-certify the states of a recorded certify unit and compare with its rows.

A certify unit (agent, episode i, eps, method) was made by rolling out the
deterministic episode i (env seed ``eval_seed + i``) and certifying every
visited state with ``certrl.certify.state.certify_states`` at the radii of one
call (its *group*), with the recorded settings (backend, radius search,
smoothing / MILP settings; smoothing noise seed ``seed * 100003 + episode
seed``). Audit does exactly that again through the same functions and the
certifier registry, and compares:

* state rows: every per-state field ``StateCertificates.state_row`` writes
  (action, certified flag, margins, radius, Q / value bounds, smoothing's
  pA lower bound and l2 radius, ...), ``time_s`` excepted;
* episode rows: return, steps, truncation, certified steps / fraction /
  trajectory, mean and min radius, mean worst value (``episode_summary``).

Tolerances (``Tol``): Q values, margins and bounds agree within
1e-5 * (1 + max |Q|) + 1e-5 relative (float32 rounding of the network outputs on
another machine or thread count; on the same machine re-runs are bit-identical);
radii within the radius search's own resolution (``rtol`` of the recorded
radius settings); smoothing's pA lower bound and l2 radius within 1e-9 (same
noise, same counts); returns, actions, flags and counts exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, is_dataclass

import numpy as np

from certrl.agent import Agent
from certrl.certify.methods import SmoothingConfig, get_method
from certrl.certify.run import (
    CertifySettings,
    certification_net,
    q_scale,
    settings_hash,
    unit_key,
)
from certrl.certify.state import StateCertificates, certify_states, in_reward_units
from certrl.certify.trajectory import Episode, episode_summary, rollout
from certrl.records import clean

from .verdict import EXACT, Tol, compare_fields

Q_KEYS = ("margin_lower", "margin_lower_all", "output", "q_lower", "q_upper", "value_lower",
          "value_upper", "worst_value", "max_deviation", "deviation", "mean_worst_value",
          "mean_max_deviation", "max_max_deviation")
RADIUS_KEYS = ("radius", "mean_radius", "min_radius")
PROB_KEYS = ("pA_lower", "radius_l2", "eps_l2", "certified_fraction", "smoothed_agrees")
Q_RTOL = 1e-5


class NotReplayable(Exception):
    """A row that cannot be re-run from what the results record (the message says why)."""


def settings_from_row(method: str, st: dict | None) -> CertifySettings:
    """The ``CertifySettings`` a certify row's ``settings`` dict was made from.

    Each recorded key sets the field of that name (a dict fills that field's config
    dataclass: radius, exact, smoothing, ...; ``gwc_bounds`` is ``gwc_method``; policy
    smoothing's ``smoothing`` holds sigma, alpha, episodes and return_min).
    ``NotReplayable`` when the dict is missing or holds settings this version does not
    know: the rebuilt settings must give back exactly the recorded dict."""
    if not isinstance(st, dict):
        raise NotReplayable("the unit row has no settings")
    try:
        s = CertifySettings(seed=int(st["seed"]), max_steps=st.get("max_steps"))
        for key, value in st.items():
            _set_field(s, method, key, value)
        rebuilt = s.for_method(method)
    except (KeyError, TypeError, ValueError) as e:
        raise NotReplayable(f"settings {st} cannot be rebuilt ({e})") from None
    if json.dumps(clean(rebuilt), sort_keys=True) != json.dumps(clean(st), sort_keys=True):
        raise NotReplayable(f"settings {st} hold fields this version does not know")
    return s


def _set_field(s: CertifySettings, method: str, key: str, value) -> None:
    """Set one recorded setting on ``s`` (KeyError for a key ``s`` has no field for)."""
    if key in ("seed", "max_steps"):
        return
    if key == "gwc_bounds":
        s.gwc_method = value
    elif key == "smoothing" and method == "policy-smoothing":
        s.smoothing = SmoothingConfig(sigma=value["sigma"], alpha=value["alpha"])
        s.ps_episodes, s.ps_return_min = int(value["episodes"]), value["return_min"]
    elif not hasattr(s, key):
        raise KeyError(key)
    elif is_dataclass(getattr(s, key)) and isinstance(value, dict):
        setattr(s, key, type(getattr(s, key))(**value))
    else:
        setattr(s, key, value)


def unit_problems(row, aid: str) -> list[str]:
    """The unit key and settings hash of a certify unit row must follow from its fields."""
    probs = []
    want = unit_key(aid, row.episode, row.eps, row.method)
    if row.unit != want:
        probs.append(f"unit: recorded {row.unit!r}, its fields give {want!r}")
    if isinstance(row.settings, dict) and row.settings_hash != settings_hash(row.settings):
        probs.append(f"settings_hash {row.settings_hash!r} is not the hash of its settings "
                     f"({settings_hash(row.settings)!r})")
    return probs


@dataclass
class Recertified:
    """A unit group certified again: the replayed episode and one certificate per eps."""

    episode: Episode
    certs: dict[float, StateCertificates]


def recertify(agent: Agent, method: str, settings: CertifySettings, episode: int,
              eps_group: tuple[float, ...]) -> Recertified:
    """Roll out ``episode`` and certify its states at ``eps_group`` as ``certrl certify``
    does (same functions, settings and smoothing seed)."""
    ep = rollout(agent, 1, settings.seed, settings.max_steps, indices=[episode])[0]
    certs = certify_states(certification_net(agent), ep.x, list(eps_group), method,
                           kind=agent.action_space_kind, threat=agent.threat_model,
                           options=settings.options(settings.seed * 100003 + (ep.seed or 0)))
    scale = q_scale(agent)
    if scale is not None:  # rows report Q in true reward units
        certs = [in_reward_units(c, scale) for c in certs]
    return Recertified(ep, {float(c.eps): c for c in certs})


def tolerances(fresh: dict, settings: CertifySettings) -> dict[str, Tol]:
    """Per-field tolerances for one state / episode comparison (see the module doc)."""
    out = fresh.get("output") or []
    mag = max([abs(float(v)) for v in out] + [abs(float(fresh.get("mean_worst_value") or 0))])
    q = Tol(atol=1e-5 * (1.0 + mag), rtol=Q_RTOL)
    r = Tol(atol=1e-12, rtol=float(settings.radius.rtol))
    p = Tol(atol=1e-9, rtol=1e-9)
    return {**{k: q for k in Q_KEYS}, **{k: r for k in RADIUS_KEYS},
            **{k: p for k in PROB_KEYS}}


def state_problems(recorded: dict, rec: Recertified, settings: CertifySettings) -> list[str]:
    """Fields of a recorded state row that the re-certification does not reproduce."""
    step, eps = recorded.get("step"), float(recorded.get("eps"))
    if not isinstance(step, int) or not 0 <= step < rec.episode.steps:
        return [f"step {step!r} is not a step of the replayed episode "
                f"({rec.episode.steps} steps)"]
    fresh = rec.certs[eps].state_row(step)
    fresh.pop("time_s", None)
    fresh["episode_seed"] = rec.episode.seed
    return compare_fields(recorded, clean(fresh), tolerances(fresh, settings))


def episode_problems(recorded: dict, rec: Recertified, settings: CertifySettings) -> list[str]:
    """Fields of a recorded certify episode row that the re-run does not reproduce."""
    cert = rec.certs[float(recorded.get("eps"))]
    fresh = episode_summary(rec.episode, cert)
    fresh.update(length=fresh["steps"], truncated=rec.episode.truncated,
                 episode_seed=rec.episode.seed)
    for k in get_method(cert.method).episode_fields:
        fresh[k] = cert.extra[k]
    fresh = clean(fresh)
    tols = tolerances({"output": [np.max(np.abs(cert.output))] if cert.output.size else []},
                      settings)
    tols["return"] = EXACT
    return compare_fields(recorded, fresh, tols)
