"""Missing episodes: rows that may have been removed from a results table.

Every command runs episodes 0..N-1 of a request, so the episode rows of one
request (agent, source, settings, eps, attack or method; over all files given)
should be indices 0..k-1 with no hole. A hole means rows were removed (e.g. a
bad episode dropped from a table) or a run was interrupted while several
processes shared the file. Audit cannot tell which, so a hole is reported as a
GAP line, and fails the audit only with ``--strict``. A removed *last* episode
(or a shorter ``--episodes``) leaves no hole and cannot be seen.
"""

from __future__ import annotations

from certrl.records import EpisodeRow, GwcRow

from .rows import Located, is_state_unit

GAP = "GAP"


def request_key(x: Located) -> tuple | None:
    """The request an episode-level row belongs to (None for other rows)."""
    r = x.row
    if not isinstance(r.get("episode"), int) or isinstance(r.get("episode"), bool):
        return None
    if isinstance(r, EpisodeRow):
        return (r.agent_id, r.source, r.settings_hash, r.eps, r.attack, r.norm)
    if isinstance(r, GwcRow) or is_state_unit(r):
        return (r.agent_id, "certify", r.settings_hash, r.eps, r.method, r.norm)
    return None


def _ranges(ix: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, v in enumerate(ix):
        if start is None:
            start = v
        if i + 1 == len(ix) or ix[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def episode_gaps(located: list[Located]) -> list[str]:
    """One line per request whose episode indices have holes."""
    seen: dict[tuple, set[int]] = {}
    for x in located:
        key = request_key(x)
        if key is not None:
            seen.setdefault(key, set()).add(int(x.row.episode))
    lines = []
    for (aid, source, _, eps, what, norm), episodes in seen.items():
        missing = sorted(set(range(max(episodes) + 1)) - episodes)
        if missing:
            lines.append(f"{GAP:<8} agent #{str(aid)[:8]} {source} {what} eps={eps} "
                         f"norm={norm}: episodes {_ranges(sorted(episodes))} present, "
                         f"{_ranges(missing)} missing (rows removed, or an unfinished run)")
    return lines
