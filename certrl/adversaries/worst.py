"""``certrl attack --attack worst``: several attacks, and per episode seed the worst return.

Every component attack writes its own episode rows (resumable as any attack); then one
``worst`` row per (eps, episode) records the lowest return over the components, which
attack gave it (``worst_attack``), every component's return (``worst_of``) and the
learned attackers' ids (``attacker_ids``). The episode i of every component starts from
the same env seed, so the minimum is taken per seed, as the references' "worst attack"
column (SA-PPO: the lowest mean over attacks; here per episode, which is at least as low).
"""

from __future__ import annotations

import argparse
import os

from certrl.adversaries.factory import VALUE_ATTACKS
from certrl.agent import Agent
from certrl.attacks import ATTACKS
from certrl.evaluate import EpisodeRun, episode_log, run_rows
from certrl.identity import agent_identity
from certrl.records import EpisodeRow, agent_fields

# SA-PPO's PPO protocol (random, critic, MAD, RS, RS+MAD); discrete agents: the gradient
# attacks of the DQN references (PGD, their PGD) with random, critic, RS, RS+MAD
WORST_DEFAULT = {"continuous": ("random", "critic", "mad", "rs", "rs+mad"),
                 "discrete": ("pgd", "pgd-ref", "random", "critic", "rs", "rs+mad")}
COMPONENTS = ATTACKS + VALUE_ATTACKS


def parse_worst_of(text: str) -> tuple[str, ...]:
    """argparse type of --worst-of: distinct attack names, comma-separated."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    bad = [n for n in names if n not in COMPONENTS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--worst-of: give distinct attacks from {', '.join(COMPONENTS)}; got {text!r}")
    return names


def worst_of(rows_of: dict[str, list[EpisodeRow]]) -> dict[tuple[float, int], dict]:
    """Per (eps, episode) present in every component: the worst component and its row."""
    by: dict[tuple[float, int], dict[str, EpisodeRow]] = {}
    for name, rows in rows_of.items():
        for r in rows:
            by.setdefault((float(r.eps), int(r.episode)), {})[name] = r
    out = {}
    for key, comp in by.items():
        if len(comp) != len(rows_of):
            continue
        name = min(comp, key=lambda n: (comp[n].return_, list(rows_of).index(n)))
        out[key] = {"name": name, "row": comp[name], "returns": {n: r.return_ for n, r in
                                                                 comp.items()},
                    "attacker_ids": {n: r.extra["attacker_id"] for n, r in comp.items()
                                     if "attacker_id" in r.extra}}
    return out


def write_worst_rows(agent: Agent, label: str, out: str | os.PathLike, run: EpisodeRun,
                     rows_of: dict[str, list[EpisodeRow]], fields) -> list[EpisodeRow]:
    """Append the missing ``worst`` rows of ``run`` (attack "worst") to ``out``; every
    worst row of ``run`` now in ``out``. ``fields(eps)``: the row fields of a radius."""
    aid = agent_identity(agent)
    log = episode_log(out, run, aid)
    base = {**agent_fields(agent, label), "source": run.source, "settings": run.settings(),
            "settings_hash": run.settings_hash(), "eval_seed": run.seed,
            "deterministic": run.deterministic}
    for (eps, i), w in sorted(worst_of(rows_of).items()):
        key = run.unit_key(aid, eps, i)
        if key in log.refresh():
            continue
        r = w["row"]
        f = fields(eps)
        f["extra"] = {**f.get("extra", {}), "worst_attack": w["name"],
                      "worst_of": w["returns"], "attacker_ids": w["attacker_ids"]}
        row = EpisodeRow(**{**base, **f}, record="episode", unit=key, episode=i,
                         episode_seed=r.episode_seed, return_=r.return_, length=r.length,
                         truncated=r.truncated, action_changes=r.action_changes)
        log.commit(key, [row])
    return run_rows(out, run, aid)
