"""Result rows with their place (file and line), and how audit groups them.

``load_located`` reads each results file through the project's one reader
(``certrl.records.read_rows``) and pairs every row with its 1-based line number,
so a verdict can name ``file:line``. ``certify_groups`` rebuilds which radii were
certified together in one call (the certified radius depends on that group: the
radius search starts at the group's largest eps, and every certified grid eps
counts), from the order of the unit rows in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Deliberate parallel (duplicates lists it): the audit reads every row type, so it imports
# the same names as tests/test_records_reader.py.
from certrl.certify.methods import METHODS
from certrl.records import (
    CertEpisodeRow,
    EpisodeRow,
    GwcRow,
    Row,
    StateRow,
    TrajectoryBoundRow,
    read_rows,
    row_from_json,
)


@dataclass
class Located:
    """One typed result row and where it is (``path``, 1-based ``line``)."""

    path: Path
    line: int
    row: Row

    @property
    def where(self) -> str:
        """``path:line``."""
        return f"{self.path}:{self.line}"

    def describe(self) -> str:
        """A short name of the row: source, record, method / attack, eps, episode, step."""
        r = self.row
        what = r.get("method") or r.get("attack") or ""
        bits = [r.get("source") or "?", r.get("record") or "?", what,
                f"eps={r.get('eps')}", f"ep={r.get('episode')}"]
        if isinstance(r, StateRow):
            bits.append(f"step={r.step}")
        return " ".join(b for b in bits if b)


def line_numbers(path: Path) -> list[int]:
    """Line numbers of the non-blank, newline-terminated lines of ``path`` (the lines
    ``read_rows`` turns into rows, in order)."""
    lines = path.read_bytes().split(b"\n")[:-1]
    return [i for i, raw in enumerate(lines, 1) if raw.strip()]


def load_located(paths: list[str | os.PathLike]) -> list[Located]:
    """Every row of ``paths`` as ``Located`` (ValueError / FileNotFoundError for a file that
    is missing or not a results file, before any work)."""
    out: list[Located] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such results file")
        rows = read_rows(p)
        nums = line_numbers(p)
        if len(nums) < len(rows):  # cannot happen with read_rows' rules; be safe
            nums = list(range(1, len(rows) + 1))
        out += [Located(p, n, row_from_json(d)) for n, d in zip(nums, rows)]
    return out


def is_state_unit(r: Row) -> bool:
    """A certify episode / batch row of a per-state method (it finishes a unit)."""
    return isinstance(r, CertEpisodeRow) and METHODS.get(r.method) is not None \
        and METHODS[r.method].level == "state"


def row_kind(r: Row) -> str:
    """A short kind name used in counts: 'evaluate episode', 'certify state', ..."""
    if isinstance(r, EpisodeRow):
        return f"{r.source or 'evaluate'} episode"
    for cls, name in ((StateRow, "state"), (GwcRow, "gwc episode"),
                      (TrajectoryBoundRow, "trajectory_bound")):
        if isinstance(r, cls):
            return f"certify {name}"
    if isinstance(r, CertEpisodeRow):
        return f"certify {r.record}"
    return f"{r.get('source') or 'other'} {r.get('record') or 'row'}"


def cert_key(r: Row) -> tuple:
    """(agent_id, episode, method, settings_hash) of a certify state / unit row."""
    return (r.get("agent_id"), r.get("episode"), r.get("method"), r.get("settings_hash"))


def certify_groups(located: list[Located]) -> dict[tuple, tuple[float, ...]]:
    """For each certify unit of a state method, keyed ``(path, *cert_key, eps)``: the radii
    certified in the same call, in order.

    ``certrl certify`` certifies all missing radii of one (episode, method) in one call
    and commits their units one after the other, so a group is a maximal run of
    consecutive unit rows with the same ``cert_key`` in one file (state rows in
    between are ignored; any other unit row ends the run).
    """
    groups: dict[tuple, tuple[float, ...]] = {}
    run: list[Located] = []

    def close() -> None:
        eps = tuple(float(x.row.eps) for x in run)
        for x in run:
            groups[(x.path, *cert_key(x.row), float(x.row.eps))] = eps

    for x in located:
        if isinstance(x.row, StateRow):
            continue
        if run and (not is_state_unit(x.row) or x.path != run[-1].path
                    or cert_key(x.row) != cert_key(run[-1].row)):
            close()
            run = []
        if is_state_unit(x.row) and x.row.eps is not None:
            run.append(x)
    if run:
        close()
    return groups
