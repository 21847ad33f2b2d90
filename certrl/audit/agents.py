"""Find the checkpoint behind each ``agent_id`` of a results table and check it.

Each row names its agent by ``agent_id`` (the sha256 identity of weights,
preprocessing, observation statistics, action space, env and threat model:
``certrl.identity``) and by ``agent_label`` (the path or shipped name given to
the command). Audit loads the label (or the path given with ``--agent
ID=PATH``) and recomputes the identity; since the threat model is part of it,
the agent is also tried under the per-dimension eps scales the rows record
(``--eps-scale`` of the original commands: exactly in a ``threat_model``, to 3
significant digits in ``eps_space``). A checkpoint whose identity matches
under none of them is not the one the results were made with.

``field_problems`` then checks that every row's descriptive fields (env, algo,
loss, seed, run group, norm, eps space, threat model, certificate kind, config)
are the ones of that agent: editing the threat model of a row is caught here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from certrl.agent import Agent, load
from certrl.certify.methods import METHODS
from certrl.evaluate import apply_eps_scale
from certrl.identity import agent_identity
from certrl.io import CheckpointError
from certrl.records import (
    CertifyRow,
    EpisodeRow,
    Row,
    StateRow,
    UnitRow,
    agent_fields,
    clean,
)
from certrl.threat import ThreatModel

from .rows import Located

AGENT_FIELDS = ("env_id", "env_version", "algo", "loss", "seed", "run_group", "eps_space")


@dataclass
class AgentEntry:
    """One agent of the results: its id, the labels the rows give, the loaded agent
    (None when no checkpoint matches) and how it was found."""

    aid: str
    labels: list[str] = field(default_factory=list)
    scales: list[tuple | None] = field(default_factory=list)
    agent: Agent | None = None
    path: str | None = None
    eps_scale: object = "agent"
    problem: str | None = None  # why no checkpoint matches


def parse_override(text: str) -> tuple[str, str]:
    """``ID=PATH`` of ``--agent`` (ID: >= 6 hex characters of an agent_id, or a label)."""
    key, sep, path = str(text).partition("=")
    if not sep or not key.strip() or not path.strip():
        raise ValueError(f"--agent expects ID=PATH (ID: an agent_id prefix of >= 6 hex "
                         f"characters or an agent label); got {text!r}")
    return key.strip(), path.strip()


def collect_agents(located: list[Located]) -> dict[str, AgentEntry]:
    """Agents named by the rows (``agent_id``), with their labels and recorded scales."""
    agents: dict[str, AgentEntry] = {}
    for x in located:
        aid = x.row.get("agent_id")
        if not isinstance(aid, str):
            continue
        e = agents.setdefault(aid, AgentEntry(aid))
        label = x.row.get("agent_label") or x.row.get("checkpoint")
        if isinstance(label, str) and label not in e.labels:
            e.labels.append(label)
        tm = x.row.get("threat_model")
        found = [tuple(tm["scale"]) if isinstance(tm.get("scale"), list) else None] \
            if isinstance(tm, dict) else []
        found += scale_in_words(x.row.get("eps_space"))
        for s in found:
            if s not in e.scales:
                e.scales.append(s)
    return agents


def scale_in_words(text) -> list[tuple[float, ...]]:
    """The scale written in an ``eps_space`` ("..., eps scaled per input dimension by
    (0.5, 1, ...)"; up to 8 entries at 3 significant digits), or [] if it has none."""
    m = re.search(r"eps scaled per input dimension by \(([^()]*)\)$", str(text or ""))
    try:
        return [tuple(float(v) for v in m.group(1).split(","))] if m else []
    except ValueError:  # "(12 entries in [...], sha1 ...)": not recoverable
        return []


def match_overrides(agents: dict[str, AgentEntry], overrides: list[str]) -> dict[str, str]:
    """agent_id -> PATH from ``--agent`` values; ValueError for one that names no agent
    of the results, or several."""
    out: dict[str, str] = {}
    for text in overrides:
        key, path = parse_override(text)
        hits = [a for a, e in agents.items() if key in e.labels
                or (len(key) >= 6 and a.startswith(key.lower()))]
        if len(hits) != 1:
            what = "no agent" if not hits else f"{len(hits)} agents"
            raise ValueError(f"--agent {text}: {key!r} matches {what} of the results "
                             f"(give >= 6 hex characters of an agent_id, or its label)")
        out[hits[0]] = path
    return out


def scale_specs(entry: AgentEntry) -> list:
    """``--eps-scale`` values to try: as saved, each scale the rows record, none, ref."""
    specs: list = ["agent"]
    specs += [("none" if s is None else s) for s in entry.scales]
    return [*dict.fromkeys([*specs, "none", "ref"])]


def _load_as(path: str, spec) -> Agent | None:
    """The checkpoint at ``path`` under eps scale ``spec`` (None if that scale does not fit)."""
    agent = load(path)
    try:
        return apply_eps_scale(agent, spec)
    except ValueError:
        return None


def resolve(entry: AgentEntry, override: str | None) -> AgentEntry:
    """Load the agent of ``entry`` and check its identity (fills agent / problem).

    FileNotFoundError when no label (nor the override) can be loaded at all."""
    paths = [override] if override else list(entry.labels)
    why, found = [], []
    for path in paths:
        try:
            saved = agent_identity(load(path))
        except (CheckpointError, FileNotFoundError, OSError, ValueError) as e:
            why.append(f"{path}: {e}")
            continue
        for spec in scale_specs(entry):
            agent = _load_as(path, spec)
            if agent is not None and agent_identity(agent) == entry.aid:
                entry.agent, entry.path, entry.eps_scale = agent, path, spec
                return entry
        found.append(f"{path} hashes to {saved[:16]}")
    if not found:
        raise FileNotFoundError(
            f"agent #{entry.aid[:8]}: no checkpoint to check ({'; '.join(why) or 'no label'}); "
            f"pass --agent {entry.aid[:8]}=PATH")
    entry.problem = (f"weights / threat model differ: {', '.join(found)} (as saved, and "
                     f"under every eps scale the rows record), but the rows say "
                     f"{entry.aid[:16]}")
    return entry


def _norm_json(v):
    return json.loads(json.dumps(clean(v), sort_keys=True))


def expected_threat_model(row: Row, tm: ThreatModel) -> dict | None:
    """The ``threat_model`` a row of this agent must carry (None: the row has none)."""
    if isinstance(row, EpisodeRow):
        if row.source != "attack":
            return None
        d = tm.to_dict()
        d["norm"] = row.norm
        return ThreatModel.from_dict(d).with_eps(row.eps).to_dict()
    if isinstance(row, CertifyRow):
        return tm.to_dict()
    return None


def field_problems(row: Row, agent: Agent) -> list[str]:
    """Descriptive fields of ``row`` that do not belong to ``agent`` (empty if all do)."""
    want = agent_fields(agent, row.get("agent_label"))
    probs = [f"{k}: recorded {row.get(k)!r}, agent has {want[k]!r}"
             for k in AGENT_FIELDS if row.get(k) != want[k]]
    tm = agent.threat_model
    norm = want["norm"]
    if isinstance(row, EpisodeRow) and row.source == "attack":
        norm = row.norm  # an attack may run under another norm (--norm)
        if (row.settings or {}).get("norm") != row.norm:
            probs.append(f"norm {row.norm!r} differs from its settings' "
                         f"{(row.settings or {}).get('norm')!r}")
    elif row.get("norm") != norm:
        probs.append(f"norm: recorded {row.get('norm')!r}, agent's threat model has {norm!r}")
    try:
        exp = expected_threat_model(row, tm)
    except (ValueError, TypeError) as e:
        probs.append(f"threat model cannot be rebuilt from the row ({e})")
        exp = None
    if exp is not None and _norm_json(row.get("threat_model")) != _norm_json(exp):
        probs.append(f"threat_model: recorded {row.get('threat_model')}, agent's is {exp}")
    probs += _claim_problems(row, agent)
    return probs


def _claim_problems(row: Row, agent: Agent) -> list[str]:
    """Certificate kind of certify rows; evaluate rows unattacked; config of unit rows."""
    probs = []
    method = METHODS.get(row.get("method"))
    if isinstance(row, (StateRow, CertifyRow)) and method is not None \
            and row.get("certificate_kind") != method.kind:
        probs.append(f"certificate_kind: recorded {row.get('certificate_kind')!r}, "
                     f"{method.name} gives {method.kind!r}")
    if isinstance(row, EpisodeRow) and row.source == "evaluate" and (
            row.attack not in (None, "none") or row.eps not in (None, 0, 0.0)):
        probs.append(f"an evaluate row with attack {row.attack!r} at eps {row.eps}")
    if isinstance(row, UnitRow) and row.config is not None \
            and _norm_json(row.config) != _norm_json(agent.config):
        probs.append("config differs from the checkpoint's training config")
    return probs
