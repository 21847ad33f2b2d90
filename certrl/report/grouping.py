"""Which result rows form one table row: agent identities, run groups, declared groups.

A table row is one agent identity (``agent_id``: hash of weights, preprocessing,
action space and threat model) or a group of seeds that the results say belong
together: the same non-null ``run_group`` (written by ``certrl train``) or a
group declared with ``--group LABEL=MEMBER,...``. Rows of older files without
``agent_id`` are *legacy*: each (env, checkpoint, algo, loss, seed) is its own
table row, never merged by ``run_group``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from certrl.records import AgentKey

MIN_PREFIX = 6  # shortest agent_id prefix a --group member may use
SHORT_ID = 8  # hex chars of agent_id shown in row labels


@dataclass(frozen=True)
class Identity:
    """One agent as result rows describe it."""

    key: str  # agent_id, or "legacy:..." for rows without one
    env_id: str
    algo: str
    loss: str
    seed: int
    labels: tuple[str, ...] = ()  # agent_label / checkpoint spellings seen, sorted
    run_group: str | None = None
    legacy: bool = False

    @property
    def label(self) -> str:
        return self.labels[0] if self.labels else self.key[:SHORT_ID]

    @property
    def short(self) -> str:
        return "" if self.legacy else self.key[:SHORT_ID]

    def describe(self) -> str:
        return f"{self.short or 'legacy'} ({self.label}, seed {self.seed})"


@dataclass(frozen=True)
class GroupSpec:
    """A declared seed group: ``LABEL=MEMBER,MEMBER,...`` (id prefixes or agent labels)."""

    label: str
    members: tuple[str, ...]


@dataclass
class RowSpec:
    """The identities one table row aggregates and how it is labelled."""

    label: str
    source: str  # "agent", "legacy", "run_group" or "group"
    members: list[Identity] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """'group' (IQM over seeds) with several identities, else 'agent' (mean +- std)."""
        return "group" if len(self.members) > 1 else "agent"


def parse_group(text: str) -> GroupSpec:
    """``LABEL=A,B,...`` -> GroupSpec; ValueError naming what is wrong."""
    label, sep, rest = text.partition("=")
    label = label.strip()
    members = tuple(m.strip() for m in rest.split(",") if m.strip())
    if not sep or not label or not members:
        raise ValueError(f"--group {text!r}: expected LABEL=ID_OR_LABEL,ID_OR_LABEL,...")
    return GroupSpec(label, members)


def identity_of(r: AgentKey) -> Identity:
    """The identity a result row names (legacy when it carries no ``agent_id``)."""
    env, algo, loss = str(r.env_id), str(r.algo or "?"), str(r.loss or "?")
    seed = _seed(r.seed)
    if r.agent_id:
        label = r.agent_label or r.checkpoint
        return Identity(str(r.agent_id).lower(), env, algo, loss, seed,
                        (str(label),) if label else (), r.run_group or None)
    ck = str(r.checkpoint or "unnamed")
    return Identity(f"legacy:{env}|{ck}|{algo}|{loss}|seed{seed}", env, algo, loss, seed,
                    (ck,), None, True)


def merge_identity(a: Identity, b: Identity) -> Identity:
    """The same agent seen twice: keep every label (sorted) and a known run group."""
    labels = tuple(sorted(set(a.labels) | set(b.labels)))
    return Identity(a.key, a.env_id, a.algo, a.loss, a.seed, labels,
                    a.run_group or b.run_group, a.legacy)


def _seed(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def match_member(member: str, identities: list[Identity]) -> list[Identity]:
    """Identities a --group member names: an exact agent label, else an agent_id prefix."""
    by_label = [i for i in identities if member in i.labels]
    if by_label:
        return by_label
    m = member.lower()
    if len(m) >= MIN_PREFIX and re.fullmatch(r"[0-9a-f]+", m):
        hits = [i for i in identities if not i.legacy and i.key.startswith(m)]
        if len(hits) > 1:
            raise ValueError(f"--group member {member!r} is an ambiguous id prefix: "
                             + ", ".join(i.describe() for i in hits))
        return hits
    return []


def assign_rows(identities: list[Identity], groups: list[GroupSpec] = (),
                by_agent: bool = False) -> dict[str, RowSpec]:
    """identity key -> the RowSpec it belongs to (declared group, run group, or itself)."""
    owner: dict[str, RowSpec] = {}
    for g in _unique_labels(groups):
        row = RowSpec(g.label, "group")
        for member in g.members:
            hits = match_member(member, identities)
            if not hits:
                raise ValueError(f"--group {g.label}: no agent in the results matches "
                                 f"{member!r} (use an agent label or >= {MIN_PREFIX} hex "
                                 "chars of its agent_id)")
            for ident in hits:
                _claim(owner, ident, row)
    runs: dict[tuple, RowSpec] = {}
    for ident in identities:
        if ident.key in owner:
            continue
        if ident.run_group and not by_agent:
            key = (ident.env_id, ident.run_group)
            runs.setdefault(key, RowSpec(f"run {ident.run_group[:SHORT_ID]}", "run_group"))
            owner[ident.key] = runs[key]
            runs[key].members.append(ident)
        else:
            owner[ident.key] = RowSpec(ident.label, "legacy" if ident.legacy else "agent",
                                       [ident])
    for row in {id(r): r for r in owner.values()}.values():
        row.members.sort(key=lambda i: (i.seed, i.key))
        check_row(row)
    return owner


def _unique_labels(groups) -> list[GroupSpec]:
    seen = set()
    for g in groups:
        if g.label in seen:
            raise ValueError(f"--group {g.label!r} is declared twice")
        seen.add(g.label)
    return list(groups)


def _claim(owner: dict[str, RowSpec], ident: Identity, row: RowSpec) -> None:
    prev = owner.get(ident.key)
    if prev is row:
        return
    if prev is not None:
        raise ValueError(f"agent {ident.describe()} is in two groups: "
                         f"{prev.label!r} and {row.label!r}")
    owner[ident.key] = row
    row.members.append(ident)


def check_row(row: RowSpec) -> None:
    """A group must be one env/algo/loss with one identity per seed; ValueError otherwise."""
    name = f"group {row.label!r}" if row.source == "group" else f"{row.label}"
    kinds = {(i.env_id, i.algo, i.loss) for i in row.members}
    if len(kinds) > 1:
        raise ValueError(f"{name} mixes agents of different env/algo/loss: "
                         + ", ".join(f"{e} {a}/{lo}" for e, a, lo in sorted(kinds)))
    by_seed: dict[int, Identity] = {}
    for ident in row.members:
        other = by_seed.setdefault(ident.seed, ident)
        if other is not ident:
            hint = ("declare the seeds you mean with --group" if row.source == "group"
                    else "use --by-agent for one row per agent, or --group")
            raise ValueError(f"{name} holds two different agents with seed {ident.seed}: "
                             f"{other.describe()} and {ident.describe()}; they are not two "
                             f"seeds of one run ({hint})")


def row_label(row: RowSpec) -> str:
    """Agent label + short id, or the group label; algo and loss always visible."""
    first = row.members[0]
    what = f"{first.algo.upper()}, {first.loss}"
    if row.kind == "group":
        return f"{row.label} ({what}; {len(row.members)} seeds)"
    if row.source == "legacy":
        return f"{first.label} ({what}; seed {first.seed}; legacy)"
    if row.source in ("agent", "run_group"):
        return f"{first.label} #{first.short} ({what})"
    return f"{row.label}: {first.label} #{first.short} ({what})"
