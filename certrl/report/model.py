"""Result rows -> table model (one verification table per environment).

Rows come from ``certrl evaluate`` / ``certrl attack`` / ``certrl certify``
JSON lines (``record == "episode"``, plus certify's ``trajectory_bound``);
``certrl train`` logs (episode rows without an ``attack`` field) are never
tabulated. Table rows are agent identities or declared seed groups (see
``certrl.report.grouping``). Columns, keyed by (kind, method, norm, eps, eps
space), in the papers' order:

* Natural: the episode return without attack (evaluate rows; otherwise the
  nominal return of certify's episodes);
* <ATTACK> l_p @eps: attacked return (attack rows), e.g. PGD l_inf @0.01;
* ACR per certification method: certified fraction of the episode's steps;
* Mean radius per method: mean over the episode's states of the certified radius;
* Deviation per method (continuous actions, e.g. PPO): mean over the episode's
  states of the certified bound on max_k |a_k(x') - a_k(x)| (lower is better);
* GWC (heuristic, never a certificate) and PS (policy-smoothing certified
  expected return, probabilistic) when present.

``value_table`` builds the same model from per-seed values (the benchmarks' tables), so
every table of the project goes through one aggregation and one renderer.

Aggregation is uniform within a table row: an agent row shows mean +- std
(ddof 0) over its episodes; a group row shows the IQM (``trim_mean(., 0.25)``)
of the per-seed means with a 95% percentile bootstrap CI over seeds (seeded,
so tables are reproducible). Episodes with ``truncated: true`` (cut by
``--max-steps``) are excluded from return cells and counted; ACR cells keep
them and count them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.stats import trim_mean

from certrl.certify.methods import get_method, method_names
from certrl.records import (
    AgentKey,
    CertEpisodeRow,
    CertifyRow,
    EpisodeRow,
    GwcRow,
    Row,
    TrajectoryBoundRow,
    row_from_json,
)
from certrl.report.grouping import (
    GroupSpec,
    Identity,
    RowSpec,
    assign_rows,
    identity_of,
    merge_identity,
    row_label,
)

METHOD_ORDER = method_names()  # column order: the registry's (certrl.certify.methods)
GROUP_ORDER = {"natural": 0, "attack": 1, "acr": 2, "radius": 3, "deviation": 4, "gwc": 5,
               "ps": 6, "metric": 7}
METHOD_GROUPS = ("acr", "radius", "deviation", "gwc", "ps")  # columns named by a method
NORM_ORDER = {"inf": 0, "2": 1, "1": 2}
RETURN_GROUPS = ("natural", "attack", "gwc")  # truncated episodes excluded here
KEPT_WORDS = {"acr": "ACR", "radius": "mean radius", "deviation": "deviation", "ps": "PS",
              "metric": "values"}
N_BOOT = 2000


def method_label(name: str, latex: bool = False) -> str:
    """A certificate method's table label from the registry (plain or LaTeX); an unknown
    method (a row from another version) is labelled by its name."""
    try:
        m = get_method(name)
    except ValueError:
        return name
    return m.latex if latex else m.label


def method_kind(name: str) -> str:
    """The registry's soundness kind of a method ("?" for an unknown one)."""
    try:
        return get_method(name).kind
    except ValueError:
        return "?"


@dataclass(frozen=True)
class Column:
    """One table column: kind (natural / attack / acr / radius / deviation / gwc / ps, or
    metric for a benchmark's own value), name, eps, norm, space (the radius column has no
    eps: the radius search does not depend on it). ``title`` / ``digits`` / ``better``
    override the header, the decimals and which way is best ("higher", "lower", "none")."""

    group: str
    name: str  # attack name or method ("" for natural)
    eps: float | None
    norm: str | None = None  # "inf", "2", "1" (None for natural)
    eps_space: str | None = None
    variant: str = ""  # settings that change the numbers: "10 steps", "stochastic", a hash
    title: str = ""
    digits: int | None = None
    better: str | None = None

    def sort_key(self) -> tuple:
        m = METHOD_ORDER.index(self.name) if self.name in METHOD_ORDER else len(METHOD_ORDER)
        return (GROUP_ORDER[self.group], m, self.name, NORM_ORDER.get(self.norm or "", 9),
                self.norm or "", self.eps_space or "", -1.0 if self.eps is None else self.eps,
                self.variant)

    @property
    def base(self) -> Column:
        """The column without its variant (two variants of one base need a label)."""
        return replace(self, variant="")

    @property
    def is_fraction(self) -> bool:
        return self.group == "acr"

    @property
    def decimals(self) -> int:
        """Decimals shown: 3 for fractions, 4 for radii and deviations, 1 for returns."""
        if self.digits is not None:
            return self.digits
        return 3 if self.is_fraction else 4 if self.group in ("radius", "deviation") else 1

    @property
    def direction(self) -> int:
        """+1 if higher is better, -1 if lower (deviation bounds), 0 if no best is marked."""
        b = self.better or ("lower" if self.group == "deviation" else "higher")
        return {"higher": 1, "lower": -1}.get(b, 0)

    @property
    def is_radius(self) -> bool:
        return self.group == "radius"

    @property
    def is_return(self) -> bool:
        return self.group in RETURN_GROUPS


@dataclass
class Cell:
    """Aggregate of one (table row, column): values per seed, each a list over episodes."""

    per_seed: dict[int, list[float]]
    center: float = math.nan  # mean (agent row) or IQM (group row)
    spread: float = math.nan  # std over episodes (agent row)
    ci: tuple[float, float] | None = None  # 95% bootstrap CI over seeds (group row)
    n_episodes: int = 0
    best: bool = False
    n_truncated: int = 0  # truncated episodes: excluded (returns) or kept (ACR)
    n_group: int = 1  # seeds in the row's group

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def partial(self) -> bool:
        """A group cell with results for fewer seeds than the group has."""
        return self.n_group > 1 and self.n_seeds < self.n_group

    @property
    def empty(self) -> bool:
        return not math.isfinite(self.center)


@dataclass
class AgentRow:
    """One table row: an agent identity or a group of seeds."""

    env_id: str
    algo: str
    loss: str
    cells: dict[Column, Cell] = field(default_factory=dict)
    label: str = ""
    kind: str = "agent"  # "agent": mean +- std over episodes; "group": IQM over seeds
    source: str = "agent"  # "agent", "legacy", "run_group", "group" or "values"
    members: list[Identity] = field(default_factory=list)
    part: str = ""  # transposed tables: the eps (repr) or method of this sub-row
    natural_from_certify: bool = False  # Natural = returns of certify's rollouts

    @property
    def seeds(self) -> list[int]:
        return sorted({i.seed for i in self.members})

    @property
    def agent_ids(self) -> list[str]:
        return [i.key for i in self.members if not i.legacy]


@dataclass
class Table:
    """The verification table of one environment."""

    env_id: str
    env_version: str
    columns: list[Column]
    rows: list[AgentRow]
    kinds: dict[str, str]  # method -> certificate kind
    details: dict[str, str]  # method -> settings in words (smoothing n, alpha, sigma ...)
    title: str | None = None  # a given caption (replaces the generated one)
    part_axis: str | None = None  # "eps" or "method" when rows are split by it
    name: str = ""  # names the LaTeX label when several tables share an env (benchmarks)
    fixed_notes: list[str] | None = None  # notes kept from before a transposition

    @property
    def norms(self) -> list[str]:
        return sorted({c.norm for c in self.columns if c.norm}, key=lambda n: NORM_ORDER.get(n, 9))

    @property
    def spaces(self) -> list[str]:
        return sorted({c.eps_space for c in self.columns if c.eps_space})

    def variant_suffix(self, c: Column) -> str:
        """' [10 steps]' when the table has several variants of ``c``'s base column, else ''."""
        n = sum(1 for x in self.columns if x.base == c.base)
        return f" [{c.variant or 'default'}]" if n > 1 else ""

    def caption(self) -> str:
        """The given title, else what the table shows in words (threat model, methods,
        aggregation)."""
        if self.title is not None:
            return self.title
        parts = [f"Verification results on {self.env_id} (env version {self.env_version})"]
        if self.norms or self.spaces:
            parts.append(self._threat_words())
        from_certify = [r.natural_from_certify for r in self.rows
                        if any(c.group == "natural" for c in r.cells)]
        if any(from_certify) and any(c.group == "natural" for c in self.columns):
            parts.append("Natural = return of certify's own (unattacked) rollouts" +
                         ("" if all(from_certify) else " for agents without evaluate rows"))
        meth = self._method_words()
        if meth:
            parts.append("ACR = certified steps / steps, certified by " + ", ".join(meth))
        if any(c.group == "radius" for c in self.columns):
            parts.append("mean radius = mean over the visited states of the largest eps at "
                         "which the greedy action was verified (radius search per method)")
        if any(c.group == "deviation" for c in self.columns):
            parts.append("deviation = mean over the visited states of the certified bound on "
                         "the largest change of any action dimension (lower is better)")
        if any(c.group == "attack" for c in self.columns):
            parts.append("attacked returns per attack, norm and eps")
        if any(c.group == "attack" and c.name == "pgd-ref" for c in self.columns):
            parts.append("PGD-ref = the references' PGD (10 steps of 0.1 eps, no random "
                         "start); PGD = ours (random start, best iterate)")
        if any(c.group == "gwc" for c in self.columns):
            parts.append("GWC is a heuristic (greedy worst case), not a certificate")
        if any(c.group == "ps" for c in self.columns):
            parts.append("PS = policy-smoothing certified expected return (probabilistic)")
        parts += self._aggregation_words()
        return "; ".join(parts) + "."

    def _threat_words(self) -> str:
        norms, spaces = self.norms, self.spaces
        if len(norms) == 1:
            words = f"l_{norms[0]} perturbations"
        elif norms:
            words = "norm per column (" + ", ".join(f"l_{n}" for n in norms) + ")"
        else:
            words = "norm not recorded"  # legacy rows without a norm field
        if len(spaces) == 1:
            return f"{words}, eps measured in {spaces[0]}"
        if spaces:
            return f"{words}, eps space per column ({', '.join(spaces)})"
        return words

    def _method_words(self) -> list[str]:
        meth = []
        for m in dict.fromkeys(c.name for c in self.columns if c.group == "acr"):
            bits = f"{method_label(m)} ({self.kinds.get(m) or method_kind(m)}"
            if self.details.get(m):
                bits += f"; {self.details[m]}"
            meth.append(bits + ")")
        return meth

    def _aggregation_words(self) -> list[str]:
        kinds = {r.kind for r in self.rows}
        words = []
        if "agent" in kinds:
            words.append("an agent row (label #agent-id prefix) is one agent: mean +- std "
                         "over its episodes")
        if "group" in kinds:
            words.append("a group row (k seeds) is a seed group: IQM of the per-seed means "
                         "with 95% bootstrap CI over seeds")
        if kinds == {"agent", "group"}:
            words.append("bold marks the best per column among rows of the same kind")
        return words

    def notes(self) -> list[str]:
        """Footnotes for the marks that appear in this table."""
        if self.fixed_notes is not None:
            return list(self.fixed_notes)
        cells = [c for r in self.rows for c in r.cells.values()]
        cols = [(col, cell) for r in self.rows for col, cell in r.cells.items()]
        out = []
        if any(cell.n_truncated and col.is_return for col, cell in cols):
            n = sum(cell.n_truncated for col, cell in cols if col.is_return)
            out.append(f"† k: k episodes cut short by --max-steps excluded from the cell "
                       f"({n} in all; n/a: no complete episode)")
        kept = sorted({col.group for col, cell in cols if cell.n_truncated and not col.is_return},
                      key=GROUP_ORDER.get)
        if kept:
            what = ("their ACR covers" if kept == ["acr"] else
                    "their " + ", ".join(KEPT_WORDS.get(g, g) for g in kept) + " cover")
            out.append("‡ k: k episodes cut short by --max-steps are included; "
                       f"{what} only the steps played")
        if any(c.partial for c in cells):
            out.append("n=k/m: only k of the group's m seeds have results in this cell")
        if any(r.source == "legacy" for r in self.rows):
            out.append("legacy: the results record no agent_id (older file); such rows are "
                       "keyed by checkpoint and seed, so different weights saved at the same "
                       "path cannot be told apart")
        return out


# ----------------------------------------------------------------- rows -> values
def _columns_of(r: Row) -> list[tuple[Column, float]]:
    """The columns and values a result row contributes (none for summaries, train logs)."""
    if isinstance(r, CertifyRow):
        return _certify_columns(r)
    if not isinstance(r, EpisodeRow) or r.return_ is None:
        return []  # summaries, and certrl train's logs (no attack field)
    if r.attack in (None, "none") or not float(r.eps or 0.0):
        var = "stochastic" if r.deterministic is False else ""
        return [(Column("natural", "", None, variant=var), float(r.return_))]
    return [(Column("attack", str(r.attack), float(r.eps), _norm_name(r.norm),
                    r.eps_space or None, _attack_variant(r)), float(r.return_))]


def _certify_columns(r: CertifyRow) -> list[tuple[Column, float]]:
    """ACR (and mean radius), GWC or PS columns of a certify row (none for given-observation
    batches)."""
    norm, space = _norm_name(r.norm), r.eps_space or None
    m, var = r.method, _certify_variant(r)
    if isinstance(r, TrajectoryBoundRow):
        return [(Column("ps", m, float(r.eps), norm, space, var), float(r.certified_return))]
    if r.record != "episode":
        return []
    if isinstance(r, GwcRow):
        return [(Column("gwc", m, float(r.eps), norm, space, var), float(r.gwc_return))]
    if not isinstance(r, CertEpisodeRow):
        return []
    out = []
    if r.certified_fraction is not None:
        out.append((Column("acr", m, float(r.eps), norm, space, var),
                    float(r.certified_fraction)))
    if r.mean_radius is not None:
        out.append((Column("radius", m, None, norm, space, var), float(r.mean_radius)))
    if r.mean_max_deviation is not None:
        out.append((Column("deviation", m, float(r.eps), norm, space, var),
                    float(r.mean_max_deviation)))
    return out


def _attack_variant(r: EpisodeRow) -> str:
    """'10 steps', '50 steps, margin', '10 steps, step 0.01': what changes attack numbers."""
    bits = [f"{r.attack_steps} steps"] if r.attack_steps is not None else []
    if r.objective not in (None, "ce", "mad"):
        bits.append(str(r.objective))
    if r.step_size is not None:
        bits.append(f"step {float(r.step_size):g}")
    if r.deterministic is False:
        bits.append("stochastic")
    return ", ".join(bits)


def _certify_variant(r: CertifyRow) -> str:
    """A short hash of the certify settings that change the numbers (not seed/max_steps)."""
    if not isinstance(r.settings, dict):
        return ""
    kept = {k: v for k, v in r.settings.items() if k not in ("seed", "max_steps")}
    return "settings " + hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:6]


def _norm_name(v) -> str | None:
    """'inf' / 'linf' / inf -> 'inf'; 2 / '2' / 'l2' -> '2'; None stays None."""
    if v is None or v == "":
        return None
    s = str(v).strip().lower().replace("_", "").removeprefix("l")
    if s in ("inf", "infinity"):
        return "inf"
    try:
        f = float(s)
    except ValueError:
        return s
    return "inf" if math.isinf(f) else f"{f:g}"


def _truncated(r: Row) -> bool:
    return r.get("truncated") is True


# ----------------------------------------------------------------- statistics
def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (``trim_mean(., 0.25)``: int(0.25 n)
    values cut at each end)."""
    return float(trim_mean(np.asarray(values, dtype=np.float64), 0.25))


def _iqm_rows(M: np.ndarray) -> np.ndarray:
    """IQM of every row (same cut as ``trim_mean(., 0.25)``: int(0.25 n) per end)."""
    n = M.shape[1]
    k = int(0.25 * n)
    return np.sort(M, axis=1)[:, k:n - k].mean(axis=1)


def bootstrap_ci(values, stat=_iqm_rows, n_boot: int = N_BOOT, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``stat`` (seeded numpy resampling with replacement).

    ``stat`` maps an (n_boot, n) array of resamples to n_boot statistics (default IQM).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return (float(v[0]), float(v[0])) if v.size else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    stats = np.asarray(stat(v[idx]), dtype=np.float64)
    a = (1 - level) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


# ----------------------------------------------------------------- collection
Episodes = dict[tuple, tuple[float, bool]]  # (episode_seed, episode) -> (value, truncated)


@dataclass
class _Collected:
    """Result rows sorted by identity and column."""

    identities: dict[str, Identity] = field(default_factory=dict)
    values: dict[str, dict[Column, Episodes]] = field(default_factory=dict)
    nominal: dict[str, Episodes] = field(default_factory=dict)  # certify's natural returns
    env_version: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, dict[str, str]] = field(default_factory=dict)
    details: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, r: AgentKey) -> None:
        cols = _columns_of(r)
        nominal = (isinstance(r, CertEpisodeRow) and r.record == "episode"
                   and r.return_ is not None)
        if not cols and not nominal:
            return
        ident = identity_of(r)
        prev = self.identities.get(ident.key)
        self.identities[ident.key] = ident if prev is None else merge_identity(prev, ident)
        ep, trunc = (r.get("episode_seed"), r.get("episode")), _truncated(r)
        for column, value in cols:
            _put(self.values.setdefault(ident.key, {}).setdefault(column, {}), ep, value,
                 trunc)
        self.env_version.setdefault(ident.env_id, str(r.get("env_version", "")))
        if isinstance(r, CertifyRow):
            self._method_info(ident.env_id, str(r.method), r)
        if nominal:
            _put(self.nominal.setdefault(ident.key, {}), ep, float(r.return_), trunc)

    def _method_info(self, env: str, method: str, r: CertifyRow) -> None:
        self.kinds.setdefault(env, {})[method] = str(r.certificate_kind or method_kind(method))
        if isinstance(r, CertEpisodeRow) and method == "smoothing":
            self.details.setdefault(env, {})["smoothing"] = (
                f"Cohen et al., n={r.n}, alpha={r.alpha}, "
                f"sigma={r.sigma}, l2 radius vs eps*sqrt(d)")

    def columns_of(self, ident: Identity) -> dict[Column, Episodes]:
        """The identity's columns; Natural falls back to certify's nominal returns."""
        cols = dict(self.values.get(ident.key, {}))
        nat = Column("natural", "", None)
        if nat not in cols and ident.key in self.nominal:
            cols[nat] = self.nominal[ident.key]
        return cols


def _put(episodes: Episodes, ep: tuple, value: float, truncated: bool) -> None:
    """Record one episode; a complete run of an episode beats a truncated one of it."""
    prev = episodes.get(ep)
    if prev is None or prev[1] or not truncated:
        episodes[ep] = (value, truncated)


# ----------------------------------------------------------------- aggregation
def _cell(column: Column, per_member: dict[Identity, Episodes], n_group: int,
          kind: str) -> Cell:
    """Aggregate one column of one table row (truncation rules per column kind)."""
    per_seed, n_trunc, n_eps = {}, 0, 0
    for ident, eps in per_member.items():
        kept = [v for v, t in eps.values() if not (t and column.is_return)]
        n_trunc += sum(t for _, t in eps.values())
        n_eps += len(kept)
        if kept:
            per_seed[ident.seed] = kept
    cell = Cell(per_seed=per_seed, n_episodes=n_eps, n_truncated=n_trunc, n_group=n_group)
    if not per_seed:
        return cell
    if kind == "agent":
        v = np.asarray(next(iter(per_seed.values())), dtype=np.float64)
        cell.center, cell.spread = float(v.mean()), float(v.std())
    else:
        means = np.array([np.mean(per_seed[s]) for s in sorted(per_seed)])
        cell.center = iqm(means)
        cell.ci = bootstrap_ci(means)
    return cell


def _table_row(spec: RowSpec, data: _Collected) -> AgentRow:
    first = spec.members[0]
    row = AgentRow(first.env_id, first.algo, first.loss, label=row_label(spec),
                   kind=spec.kind, source=spec.source, members=list(spec.members))
    per_col: dict[Column, dict[Identity, Episodes]] = {}
    nat = Column("natural", "", None)
    for ident in spec.members:
        for column, eps in data.columns_of(ident).items():
            per_col.setdefault(column, {})[ident] = eps
        if nat not in data.values.get(ident.key, {}) and ident.key in data.nominal:
            row.natural_from_certify = True
    for column, per_member in per_col.items():
        row.cells[column] = _cell(column, per_member, len(spec.members), spec.kind)
    return row


def mark_best(rows: list[AgentRow], columns: list[Column]) -> None:
    """Bold the best cell per column (highest, or lowest for a deviation bound) among rows
    of the same kind and sub-row (comparable cells); columns with ``better="none"`` never."""
    for c in columns:
        if not c.direction:
            continue
        for key in dict.fromkeys((r.kind, r.part) for r in rows):
            cells = [r.cells[c] for r in rows
                     if (r.kind, r.part) == key and c in r.cells and not r.cells[c].empty]
            for x in cells:
                x.best = False
            if len(cells) < 2:
                continue
            best = max(c.direction * x.center for x in cells)
            for x in cells:
                x.best = math.isclose(c.direction * x.center, best, rel_tol=1e-12,
                                      abs_tol=1e-12)


def _collect(rows: list[Row | dict]) -> _Collected:
    """Typed rows (dicts are read with ``row_from_json``) sorted by identity and column."""
    data = _Collected()
    for r in rows:
        if isinstance(r, (dict, Row)):
            r = row_from_json(r)
            if isinstance(r, AgentKey) and r.env_id is not None:
                data.add(r)
    return data


def build_tables(rows: list[Row | dict], groups: list[GroupSpec] = (),
                 by_agent: bool = False) -> list[Table]:
    """Result rows (typed, or JSON objects) -> one verification table per env.

    ``groups``: declared seed groups; ``by_agent``: one row per agent identity even
    when agents share a ``run_group``. ValueError for an inconsistent group.
    """
    data = _collect(rows)
    owner = assign_rows(list(data.identities.values()), groups, by_agent)
    specs = list({id(s): s for s in owner.values()}.values())
    tables = []
    for env in sorted({s.members[0].env_id for s in specs}):
        agent_rows = [_table_row(s, data) for s in specs if s.members[0].env_id == env]
        agent_rows.sort(key=lambda r: (r.algo, r.loss, r.kind, r.label))
        columns = sorted({c for r in agent_rows for c in r.cells}, key=Column.sort_key)
        mark_best(agent_rows, columns)
        tables.append(Table(env, data.env_version.get(env, ""), columns, agent_rows,
                            data.kinds.get(env, {}), data.details.get(env, {})))
    return tables


# ----------------------------------------------------------------- benchmark values
SeedValues = dict[int, "float | None"]  # seed -> value (None: not applicable)


def value_table(env_id: str, columns: list[Column], rows: list[tuple[str, dict]],
                title: str, env_version: str = "") -> Table:
    """A table of seed groups from per-seed values (the benchmarks' result.json files).

    ``rows``: (label, {column: {seed: value or None}}). Each cell is the IQM of its
    seeds' values with the 95% percentile bootstrap CI over seeds (the same statistics
    as ``build_tables``); a cell where some seed has no value is n/a. Best per column
    as ``mark_best``.
    """
    out = []
    for label, values in rows:
        seeds = sorted({s for v in values.values() for s in v})
        members = [Identity(f"values:{label}:{s}", env_id, "", "", s, (label,), None, True)
                   for s in seeds]
        row = AgentRow(env_id, "", "", label=label, kind="group", source="values",
                       members=members)
        for c in columns:
            per_seed = values.get(c, {})
            if not per_seed or any(v is None for v in per_seed.values()):
                row.cells[c] = Cell(per_seed={}, n_group=0)  # n/a: not applicable
                continue
            per_member = {i: {(0, 0): (float(per_seed[i.seed]), False)}
                          for i in members if i.seed in per_seed}
            row.cells[c] = _cell(c, per_member, len(seeds), "group")
        out.append(row)
    mark_best(out, columns)
    return Table(env_id, env_version, list(columns), out, {}, {}, title=title)
