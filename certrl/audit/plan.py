"""Which rows audit can re-run, which it cannot (and why), and the random sample.

Re-runnable: certify ``state`` rows and certify ``episode`` rows of per-state
methods (re-certified, ``recertify``), evaluate / attack ``episode`` rows, GWC
rows and policy-smoothing ``trajectory_bound`` rows (``replay``). Not
re-runnable, each with its reason: rows of ``--obs`` batches (the observations
are not stored in the results), rows without an ``agent_id`` (written before
identities existed), state rows whose unit row (holding the settings) is
missing, and rows of no result type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from certrl.records import (
    CertEpisodeRow,
    EpisodeRow,
    GwcRow,
    StateRow,
    TrajectoryBoundRow,
)

from .rows import Located, cert_key, is_state_unit, row_kind
from .verdict import as_float

OBS = "observations given with --obs are not stored in the results"


@dataclass
class Plan:
    """Re-runnable rows by kind, and the counts of rows that are not, by reason."""

    states: list[Located] = field(default_factory=list)
    episodes: list[Located] = field(default_factory=list)
    units: dict[tuple, Located] = field(default_factory=dict)  # certify units by state key
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, x: Located, why: str) -> None:
        """Count ``x`` as not re-runnable for reason ``why``."""
        key = f"{row_kind(x.row)}: {why}"
        self.skipped[key] = self.skipped.get(key, 0) + 1


def state_key(x: Located) -> tuple:
    """The unit a certify row belongs to: (path, agent, episode, method, settings, eps)."""
    return (x.path, *cert_key(x.row), as_float(x.row.eps))


def make_plan(located: list[Located], known: set[str]) -> Plan:
    """Sort the rows of agents in ``known`` (agents whose checkpoint matched) into
    re-runnable ones and skipped ones; rows of other agents are left out here."""
    plan = Plan()
    plan.units = {state_key(x): x for x in located if is_state_unit(x.row)}
    for x in located:
        r, aid = x.row, x.row.get("agent_id")
        if not isinstance(r, (EpisodeRow, StateRow, CertEpisodeRow, GwcRow,
                              TrajectoryBoundRow)):
            plan.skip(x, "not a result row")
        elif not isinstance(aid, str):
            plan.skip(x, "no agent_id (written before agent identities)")
        elif aid not in known:
            continue
        elif r.get("episode") == "obs" or r.get("record") == "batch":
            plan.skip(x, OBS)
        elif isinstance(r, StateRow):
            if state_key(x) in plan.units:
                plan.states.append(x)
            else:
                plan.skip(x, "its unit row (with the settings) is missing")
        elif isinstance(r, (EpisodeRow, GwcRow, TrajectoryBoundRow)) or is_state_unit(r):
            plan.episodes.append(x)
        else:
            plan.skip(x, f"method {r.get('method')!r} is unknown to this version")
    return plan


def sample(rows: list[Located], n: int | None, rng: np.random.Generator) -> list[Located]:
    """``n`` rows drawn without replacement (all when ``n`` is None or >= len), in file
    order."""
    if n is None or n >= len(rows):
        return list(rows)
    idx = np.sort(rng.choice(len(rows), size=n, replace=False))
    return [rows[i] for i in idx]
