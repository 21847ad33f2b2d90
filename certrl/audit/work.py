"""Re-certification work shared by the sampled certify rows (one re-run per unit group).

The certified radius of a state depends on the radii certified with it in one
call (``certrl.rows.certify_groups``). Audit re-runs the group the file order
gives; when *only* radius fields then differ, it tries once more with the
row's eps alone (a unit certified by a separate, resumed call) and says so in
the verdict. Margins, flags and bounds do not depend on the group.
"""

from __future__ import annotations

from collections.abc import Callable

from .recertify import (
    RADIUS_KEYS,
    Recertified,
    episode_problems,
    recertify,
    settings_from_row,
    state_problems,
)
from .rows import Located
from .verdict import short

RADIUS_ONLY = {*RADIUS_KEYS, "radius_capped"}


class Recertifier:
    """Re-certifies unit groups on demand (each group once) and compares rows."""

    def __init__(self, agents: dict, units: dict[tuple, Located],
                 groups: dict[tuple, tuple[float, ...]], key: Callable[[Located], tuple]):
        self.agents, self.units, self.groups, self.key = agents, units, groups, key
        self.cache: dict[tuple, Recertified] = {}

    def job(self, unit: Located, eps_group: tuple[float, ...]) -> Recertified:
        """The re-certification of ``unit``'s episode at ``eps_group`` (computed once)."""
        r = unit.row
        k = (r.agent_id, r.episode, r.method, r.settings_hash, eps_group)
        if k not in self.cache:
            settings = settings_from_row(r.method, r.settings)
            self.cache[k] = recertify(self.agents[r.agent_id].agent, r.method, settings,
                                      int(r.episode), eps_group)
        return self.cache[k]

    def candidates(self, unit: Located) -> list[tuple[float, ...]]:
        """Radius groups to try: the file's group of the unit, then its eps alone."""
        eps = (float(unit.row.eps),)
        return list(dict.fromkeys([self.groups.get(self.key(unit), eps), eps]))

    def check(self, x: Located, unit: Located, compare) -> list[str] | str:
        """Problems of ``x`` against the re-run of its unit, or an OK note."""
        settings = settings_from_row(unit.row.method, unit.row.settings)
        first: list[str] | None = None
        for i, group in enumerate(self.candidates(unit)):
            probs = compare(x.row.to_json(), self.job(unit, group), settings)
            if not probs:
                note = "" if i == 0 else (f"; radius reproduced with eps {group[0]:g} alone "
                                          "(certified in a separate call)")
                return f"reproduced ({_note(x)}){note}"
            first = first if first is not None else probs
            if not all(p.split(":")[0] in RADIUS_ONLY for p in probs):
                break
        return first

    def state(self, x: Located) -> list[str] | str:
        """Compare a state row with the re-certification of its unit."""
        return self.check(x, self.units[self.key(x)], state_problems)

    def episode(self, x: Located) -> list[str] | str:
        """Compare a certify episode row with the re-certification of its unit."""
        return self.check(x, x, episode_problems)


def _note(x: Located) -> str:
    r = x.row
    if r.get("record") == "state":
        bits = [f"certified {r.get('certified')}"]
        for k in ("margin_lower", "radius", "max_deviation"):
            if r.get(k) is not None:
                bits.append(f"{k} {short(r.get(k))}")
        return ", ".join(bits)
    if r.get("certified_steps") is None and r.get("mean_max_deviation") is not None:
        return (f"return {r.get('return')}, mean max deviation "
                f"{short(r.get('mean_max_deviation'))} over {r.get('steps')} steps")
    return (f"return {r.get('return')}, certified steps {r.get('certified_steps')}/"
            f"{r.get('steps')}")
