"""``audit``: re-verify results files end to end and collect verdicts.

Order of work: read every row (``rows``); find and check every agent's
checkpoint (``agents``); check every row's descriptive fields, unit keys and
settings hashes, and every certify unit against its state rows (cheap, all
rows); then re-run a random sample of state rows and a random sample of
episode-level rows (``recertify``, ``replay``). A verdict line is emitted per
re-run row, per agent and per row that fails a cheap check.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from certrl.records import CertEpisodeRow, EpisodeRow, GwcRow, StateRow, UnitRow

from .agents import AgentEntry, collect_agents, field_problems, match_overrides, resolve
from .consistency import unit_verdicts
from .gaps import episode_gaps
from .plan import make_plan, sample, state_key
from .recertify import NotReplayable, unit_problems
from .replay import replay_episode, replay_gwc, replay_trajectory_bound, run_problems
from .rows import certify_groups, load_located
from .verdict import MISMATCH, OK, SKIP, Verdict
from .work import Recertifier


@dataclass
class AuditOptions:
    """``sample``: rows re-run per kind (state rows; episode-level rows), None = all;
    ``seed``: the sample's seed; ``agents``: ``--agent ID=PATH`` overrides; ``strict``:
    rows that cannot be re-run and missing episodes fail the audit too; ``device``: where
    the agents re-run (``certrl.device.resolve_device``; None: the CPU)."""

    sample: int | None = 20
    seed: int = 0
    agents: list[str] = field(default_factory=list)
    progress: bool = True
    strict: bool = False  # rows not re-runnable and episode gaps fail the audit too
    device: str | None = None


@dataclass
class AuditReport:
    """Every verdict, the agents, and the counts of the one-line summary."""

    verdicts: list[Verdict] = field(default_factory=list)
    agents: dict[str, AgentEntry] = field(default_factory=dict)
    rows: int = 0
    field_checked: int = 0
    replayed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    orphan_rows: int = 0  # rows of agents whose checkpoint does not match
    suspect_units: set[tuple] = field(default_factory=set)  # units failing a cheap check
    gaps: int = 0  # requests with missing episodes
    strict: bool = False

    @property
    def mismatches(self) -> int:
        """Number of MISMATCH verdicts."""
        return sum(v.status == MISMATCH for v in self.verdicts)

    @property
    def passed(self) -> bool:
        """True iff no verdict is a MISMATCH (``strict``: and nothing skipped, no gap)."""
        lenient = self.mismatches == 0
        return lenient and not (self.strict and (self.gaps or sum(self.skipped.values())))

    def summary(self) -> str:
        """The one-line summary (PASS / FAIL and the counts)."""
        bad_agents = sum(e.agent is None for e in self.agents.values())
        skipped = sum(self.skipped.values())
        n = len(self.agents)
        text = (f"audit: {'PASS' if self.passed else 'FAIL'}: {n} agent{'s' * (n != 1)} "
                f"({bad_agents} with another checkpoint), {self.rows} rows, "
                f"{self.field_checked} field-checked, {self.replayed} re-run, "
                f"{self.mismatches} mismatches, {skipped} not replayable")
        if self.gaps:
            text += f", {self.gaps} requests with missing episodes"
        if self.orphan_rows:
            text += f", {self.orphan_rows} rows of mismatched agents not checked"
        return text


def check_agents(located, options: AuditOptions, report: AuditReport, emit) -> None:
    """Load and identify every agent (FileNotFoundError before any re-run if one
    cannot be loaded at all); an agent verdict each."""
    agents = collect_agents(located)
    overrides = match_overrides(agents, options.agents)
    for aid, entry in agents.items():
        resolve(entry, overrides.get(aid))
        if entry.agent is not None:
            entry.agent.to(options.device)  # after its identity was checked
    for aid, entry in agents.items():
        who = f"agent #{aid[:8]}"
        if entry.agent is None:
            v = Verdict(MISMATCH, who, ", ".join(entry.labels), [entry.problem])
        else:
            scale = "" if entry.eps_scale == "agent" else f" under --eps-scale {entry.eps_scale}"
            v = Verdict(OK, who, entry.path, [f"checkpoint hashes to the recorded "
                                              f"agent_id{scale}"])
        report.verdicts.append(v)
        emit(v.line())
    report.agents = agents


def cheap_checks(located, report: AuditReport, emit) -> None:
    """Fields, unit keys and settings hashes of every row; units against state rows."""
    for x in located:
        entry = report.agents.get(x.row.get("agent_id"))
        if entry is None:
            continue
        if entry.agent is None:
            report.orphan_rows += 1
            continue
        report.field_checked += 1
        probs = field_problems(x.row, entry.agent)
        try:
            if isinstance(x.row, EpisodeRow):
                probs += run_problems(x.row, entry.aid)
            elif isinstance(x.row, (CertEpisodeRow, GwcRow)) and isinstance(x.row, UnitRow) \
                    and x.row.unit is not None and x.row.episode != "all":
                probs += unit_problems(x.row, entry.aid)
        except NotReplayable as e:
            probs.append(str(e))
        if probs:
            report.verdicts.append(Verdict(MISMATCH, x.where, x.describe(), probs))
            emit(report.verdicts[-1].line())
    bad, report.suspect_units = unit_verdicts(located)
    for v in bad:
        report.verdicts.append(v)
        emit(v.line())


def replay_one(x, agent, recert: Recertifier) -> list[str] | str:
    """Re-run one row: the problems found, or an OK note (a str)."""
    r = x.row
    if isinstance(r, StateRow):
        return recert.state(x)
    if isinstance(r, EpisodeRow):
        probs = replay_episode(agent, r)
    elif isinstance(r, GwcRow):
        probs = replay_gwc(agent, r)
    elif isinstance(r, CertEpisodeRow):
        return recert.episode(x)
    else:
        probs = replay_trajectory_bound(agent, r)
    return probs or f"reproduced ({_value_note(r)})"


def _value_note(r) -> str:
    for k in ("return", "gwc_return", "certified_return"):
        if r.get(k) is not None:
            return f"{k} {r.get(k)}"
    return "all fields"


def run_replays(todo, report: AuditReport, recert: Recertifier, progress: bool, emit) -> None:
    """Re-run the sampled rows, one verdict each."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), disable=not progress, unit="row", desc="audit",
               file=sys.stderr, dynamic_ncols=True)
    try:
        for x in todo:
            agent = report.agents[x.row.agent_id].agent
            try:
                res = replay_one(x, agent, recert)
                v = Verdict(OK, x.where, x.describe(), [res]) if isinstance(res, str) \
                    else Verdict(MISMATCH, x.where, x.describe(), res)
            except NotReplayable as e:
                v = Verdict(SKIP, x.where, x.describe(), [str(e)])
            except (ValueError, RuntimeError) as e:
                v = Verdict(MISMATCH, x.where, x.describe(), [f"the re-run failed: {e}"])
            report.replayed += v.status != SKIP
            report.verdicts.append(v)
            emit(v.line())
            bar.update(1)
    finally:
        bar.close()


def audit(paths: list, options: AuditOptions | None = None,
          emit: Callable[[str], None] = print) -> AuditReport:
    """Re-verify the results files ``paths``; verdict lines go to ``emit``.

    ValueError / FileNotFoundError (a usage error) for unreadable files, files
    without result rows, bad ``--agent`` values or a checkpoint that cannot be
    loaded, all before any re-run."""
    options = options or AuditOptions()
    if options.sample is not None and options.sample < 0:
        raise ValueError(f"--sample must be >= 0; got {options.sample}")
    located = load_located(paths)
    report = AuditReport(rows=len(located), strict=options.strict)
    if not any(isinstance(x.row.get("agent_id"), str) for x in located):
        raise ValueError("no result rows with an agent_id in " + ", ".join(map(str, paths)))
    check_agents(located, options, report, emit)
    cheap_checks(located, report, emit)
    gaps = episode_gaps(located)
    for line in gaps:
        emit(line)
    report.gaps = len(gaps)
    known = {a for a, e in report.agents.items() if e.agent is not None}
    plan = make_plan(located, known)
    report.skipped = plan.skipped
    for why, n in sorted(plan.skipped.items()):
        emit(f"{SKIP:<8} {n} rows  {why}")
    rng = np.random.default_rng(options.seed)
    states = sample(plan.states, options.sample, rng)
    chosen = {id(x) for x in states}
    states += [x for x in plan.states  # every state of a unit that failed a cheap check
               if state_key(x) in report.suspect_units and id(x) not in chosen]
    todo = sorted(states, key=lambda x: (str(x.path), x.line)) \
        + sample(plan.episodes, options.sample, rng)
    recert = Recertifier(report.agents, plan.units, certify_groups(located), state_key)
    run_replays(todo, report, recert, options.progress, emit)
    return report
