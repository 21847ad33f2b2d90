"""What a table shows and on which axis: select and order columns, split rows by eps or method.

``select`` keeps the columns of the asked kinds, certificate methods, attacks and eps, in
the asked order (unasked dimensions keep the registry's / papers' order). ``transpose``
moves eps (or the method) from the columns to the rows: each table row becomes one
sub-row per eps (per method), the columns lose that dimension, and columns without it
(Natural, the mean radius for eps) are repeated on every sub-row. Best per column is
marked among the sub-rows of the same eps (method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from certrl.report.model import GROUP_ORDER, METHOD_GROUPS, AgentRow, Column, Table, mark_best

AXES = ("eps", "methods")
KINDS = tuple(GROUP_ORDER)  # natural, attack, acr, radius, deviation, gwc, ps, metric


@dataclass(frozen=True)
class Layout:
    """Which columns (kinds, methods, attacks, eps; empty = all) and the row axis."""

    columns: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ()
    eps: tuple[float, ...] = ()
    transpose: str | None = None  # None, "eps" or "methods"


def _index(seq: tuple, value, close: bool = False) -> int:
    for i, v in enumerate(seq):
        if (close and math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12)) or v == value:
            return i
    return -1


def _keep(c: Column, lay: Layout) -> bool:
    if lay.columns and c.group not in lay.columns:
        return False
    if lay.methods and c.group in METHOD_GROUPS and c.name not in lay.methods:
        return False
    if lay.attacks and c.group == "attack" and c.name not in lay.attacks:
        return False
    return not (lay.eps and c.eps is not None and _index(lay.eps, c.eps, True) < 0)


def _order(c: Column, lay: Layout) -> tuple:
    kind = _index(lay.columns, c.group) if lay.columns else GROUP_ORDER[c.group]
    name = (_index(lay.methods, c.name) if c.group in METHOD_GROUPS else
            _index(lay.attacks, c.name) if c.group == "attack" else 0)
    eps = _index(lay.eps, c.eps, True) if lay.eps and c.eps is not None else 0
    return (kind, name, eps, c.sort_key())


def _check_asked(tables: list[Table], lay: Layout) -> None:
    """ValueError naming an asked method / attack / eps / kind that no column has."""
    cols = [c for t in tables for c in t.columns]
    bad = [k for k in lay.columns if k not in KINDS]
    if bad:
        raise ValueError(f"--columns {', '.join(bad)}: unknown kind; use {', '.join(KINDS)}")
    have = {
        "--methods": (lay.methods, {c.name for c in cols if c.group in METHOD_GROUPS}),
        "--attacks": (lay.attacks, {c.name for c in cols if c.group == "attack"}),
        "--columns": (lay.columns, {c.group for c in cols}),
    }
    for flag, (asked, there) in have.items():
        missing = [a for a in asked if a not in there]
        if missing:
            raise ValueError(f"{flag} {', '.join(missing)}: not in the results (they have: "
                             f"{', '.join(sorted(there)) or 'none'})")
    eps_there = sorted({c.eps for c in cols if c.eps is not None})
    missing = [e for e in lay.eps if _index(tuple(eps_there), e, True) < 0]
    if missing:
        raise ValueError(f"--eps {', '.join(f'{e:g}' for e in missing)}: not in the results "
                         f"(they have: {', '.join(f'{e:g}' for e in eps_there) or 'none'})")


def select(tables: list[Table], lay: Layout) -> list[Table]:
    """The tables with only the asked columns, in the asked order; tables left without a
    column are dropped. ValueError if something asked is in no table, or nothing is left."""
    _check_asked(tables, lay)
    out = []
    for t in tables:
        cols = sorted((c for c in t.columns if _keep(c, lay)), key=lambda c: _order(c, lay))
        if cols:
            out.append(replace(t, columns=cols))
    if not out:
        raise ValueError("no column left after --columns / --methods / --attacks / --eps")
    return out


def _split_key(c: Column, axis: str):
    """The sub-row a column goes to (None: repeated on every sub-row) and the column
    without that dimension."""
    if axis == "eps":
        return (None, c) if c.eps is None else (repr(c.eps), replace(c, eps=None))
    if c.group not in METHOD_GROUPS:
        return None, c
    return c.name, replace(c, name="")


def transpose(tables: list[Table], axis: str) -> list[Table]:
    """Move eps (``axis="eps"``) or the method (``"methods"``) from columns to sub-rows."""
    if axis not in AXES:
        raise ValueError(f"--transpose {axis!r}: use one of {', '.join(AXES)}")
    return [_transpose_one(t, axis) for t in tables]


def _transpose_one(t: Table, axis: str) -> Table:
    keyed = [(c, *_split_key(c, axis)) for c in t.columns]
    parts = list(dict.fromkeys(k for _, k, _ in keyed if k is not None))
    columns = list(dict.fromkeys(new for _, _, new in keyed))
    rows = []
    for r in t.rows:
        for part in parts or [""]:
            cells = {new: replace(r.cells[c], best=False) for c, k, new in keyed
                     if c in r.cells and (k is None or k == part)}
            if any(k == part for c, k, _ in keyed if c in r.cells) or not parts:
                rows.append(AgentRow(r.env_id, r.algo, r.loss, cells, r.label, r.kind,
                                     r.source, r.members, part))
    mark_best(rows, columns)
    return replace(t, columns=columns, rows=rows, title=t.caption(), fixed_notes=t.notes(),
                   part_axis="eps" if axis == "eps" else "method")
