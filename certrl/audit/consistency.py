"""Checks that need no re-run: a certify unit against its own state rows.

For every certify unit of a per-state method that has state rows:

* the unit row's steps, certified steps, certified fraction, certified
  trajectory, mean / min radius equal what its state rows give
  (``certrl.certify.trajectory.episode_summary`` computes them from the same
  per-state values);
* each state row of a margin method is certified iff its lowest margin bound is
  > 0, and a certified state's radius is at least the eps it was certified at.

These run on every row (they are cheap), so an edit of one state row or one
summary is caught even when the random sample of re-certified rows misses it;
a consistent edit of both is left to the re-certification. Every state row of a
unit that fails here is re-certified (whatever the sample), so the verdicts
name the edited row.
"""

from __future__ import annotations

import math

from certrl.records import StateRow

from .rows import Located, cert_key, is_state_unit
from .verdict import MISMATCH, Tol, Verdict, agree, as_float


def state_claims(row: StateRow) -> list[str]:
    """A state row's certified flag against its own margin and radius."""
    probs = []
    m, c = as_float(row.margin_lower), row.certified
    if m is not None and isinstance(c, bool) and not math.isnan(m) and (m > 0) != c:
        probs.append(f"certified is {c} but its lowest margin bound is {m:.6g}")
    r, e = as_float(row.radius), as_float(row.eps)
    if c is True and r is not None and e is not None and r < e * (1 - 1e-12):
        probs.append(f"certified at eps {e:g} but its certified radius is {r:.6g} < eps")
    return probs


def summary_of(states: list[StateRow]) -> dict:
    """The unit-row fields that follow from its state rows."""
    n = len(states)
    cert = [s.certified for s in states]
    out: dict = {"steps": n}
    if all(isinstance(c, bool) for c in cert):
        k = sum(cert)
        out.update(certified_steps=k, certified_fraction=k / max(1, n))
        if all(isinstance(s.episode, int) for s in states):
            out["certified_trajectory"] = k == n
    radii = [as_float(s.radius) for s in states]
    if n and all(r is not None for r in radii):
        out.update(mean_radius=sum(radii) / n, min_radius=min(radii))
    return out


def unit_verdicts(located: list[Located]) -> tuple[list[Verdict], set[tuple]]:
    """MISMATCH verdicts of units and state rows that contradict each other, and the
    keys (path, agent, episode, method, settings hash, eps) of the units concerned."""
    states: dict[tuple, list[Located]] = {}
    for x in located:
        if isinstance(x.row, StateRow):
            states.setdefault((x.path, *cert_key(x.row), as_float(x.row.eps)), []).append(x)
    out, bad = [], set()
    for key, xs in states.items():
        for x in xs:
            probs = state_claims(x.row)
            if probs:
                out.append(Verdict(MISMATCH, x.where, x.describe(), probs))
                bad.add(key)
    tol = Tol(1e-9, 1e-9)
    for x in located:
        if not is_state_unit(x.row):
            continue
        key = (x.path, *cert_key(x.row), as_float(x.row.eps))
        xs = states.get(key)
        if not xs:
            continue
        want = summary_of([s.row for s in sorted(xs, key=lambda s: s.row.step or 0)])
        steps = sorted(s.row.step for s in xs if isinstance(s.row.step, int))
        probs = [] if steps == list(range(len(xs))) else [
            f"its state rows' steps are not 0..{len(xs) - 1}"]
        probs += [f"{k}: recorded {x.row.get(k)!r}, its {len(xs)} state rows give {v!r}"
                  for k, v in want.items() if not agree(x.row.get(k), v, tol)]
        if probs:
            out.append(Verdict(MISMATCH, x.where, x.describe() + " (summary vs state rows)",
                               probs))
            bad.add(key)
    return out, bad
