"""Result rows -> table model (one verification table per environment).

Rows come from ``certrl evaluate`` / ``certrl attack`` / ``certrl certify``
JSON lines (``record == "episode"``, plus certify's ``trajectory_bound``).
Table rows are agents (env, algorithm, loss); columns, in the papers' order:

* Natural: the episode return without attack (evaluate rows; otherwise the
  nominal return of certify's episodes);
* <ATTACK>@eps: attacked return (attack rows), e.g. PGD@0.01;
* ACR@eps per certification method: certified fraction of the episode's steps;
* GWC@eps (heuristic, never a certificate) and PS@eps (policy-smoothing
  certified expected return, probabilistic) when present.

Each cell aggregates per-episode values: with one training seed, mean +- std
(ddof 0) over episodes; with several seeds, the IQM (interquartile mean,
``scipy.stats.trim_mean(., 0.25)``) of the per-seed means and a 95% percentile
bootstrap CI over seeds (seeded numpy resampling, so tables are reproducible).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import trim_mean

METHOD_ORDER = ("ibp", "crown-ibp", "crown", "alpha-crown", "lipschitz", "exact", "smoothing")
METHOD_LABEL = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN",
                "alpha-crown": "alpha-CROWN", "lipschitz": "Lipschitz", "exact": "MILP",
                "smoothing": "smoothing", "gwc": "GWC", "policy-smoothing": "PS"}
GROUP_ORDER = {"natural": 0, "attack": 1, "acr": 2, "gwc": 3, "ps": 4}
N_BOOT = 2000


@dataclass(frozen=True)
class Column:
    """One table column: its group (natural / attack / acr / gwc / ps), name and eps."""

    group: str
    name: str  # attack name or method ("" for natural)
    eps: float | None

    def sort_key(self) -> tuple:
        m = METHOD_ORDER.index(self.name) if self.name in METHOD_ORDER else 99
        return (GROUP_ORDER[self.group], m, self.name, -1.0 if self.eps is None else self.eps)

    @property
    def is_fraction(self) -> bool:
        return self.group == "acr"


@dataclass
class Cell:
    """Aggregate of one (agent, column): values per seed, each a list over episodes."""

    per_seed: dict[int, list[float]]
    center: float = math.nan  # mean (one seed) or IQM (several)
    spread: float = math.nan  # std over episodes (one seed)
    ci: tuple[float, float] | None = None  # 95% bootstrap CI over seeds
    n_episodes: int = 0
    best: bool = False

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)


@dataclass
class AgentRow:
    env_id: str
    algo: str
    loss: str
    cells: dict[Column, Cell] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.algo.upper()} ({self.loss})"

    @property
    def seeds(self) -> list[int]:
        s = set()
        for c in self.cells.values():
            s |= set(c.per_seed)
        return sorted(s)


@dataclass
class Table:
    """The verification table of one environment."""

    env_id: str
    env_version: str
    eps_space: str
    norm: str
    columns: list[Column]
    rows: list[AgentRow]
    kinds: dict[str, str]  # method -> certificate kind
    details: dict[str, str]  # method -> settings in words (smoothing n, alpha, sigma ...)

    def caption(self) -> str:
        methods = [c.name for c in self.columns if c.group == "acr"]
        meth = []
        for m in dict.fromkeys(methods):
            bits = f"{METHOD_LABEL.get(m, m)} ({self.kinds.get(m, '?')}"
            if self.details.get(m):
                bits += f"; {self.details[m]}"
            meth.append(bits + ")")
        seeds = max((len(r.seeds) for r in self.rows), default=1)
        agg = ("IQM over seeds with 95% bootstrap CI" if seeds > 1
               else "mean +- std over episodes")
        parts = [f"Verification results on {self.env_id} (env version {self.env_version})",
                 f"l_{self.norm} perturbations, eps measured in {self.eps_space}"]
        if meth:
            parts.append("ACR = certified steps / steps, certified by " + ", ".join(meth))
        if any(c.group == "attack" for c in self.columns):
            parts.append("attacked returns per attack and eps")
        if any(c.group == "gwc" for c in self.columns):
            parts.append("GWC is a heuristic (greedy worst case), not a certificate")
        if any(c.group == "ps" for c in self.columns):
            parts.append("PS = policy-smoothing certified expected return (probabilistic)")
        parts.append(agg)
        return "; ".join(parts) + "."


def _column_of(r: dict) -> tuple[Column, float] | None:
    """The column and value a result row contributes, or None."""
    rec = r.get("record")
    if r.get("source") == "certify":
        m = r.get("method")
        if rec == "trajectory_bound":
            return Column("ps", m, float(r["eps"])), float(r["certified_return"])
        if rec != "episode":
            return None
        if m == "gwc":
            return Column("gwc", m, float(r["eps"])), float(r["gwc_return"])
        if r.get("certified_fraction") is None:
            return None
        return Column("acr", m, float(r["eps"])), float(r["certified_fraction"])
    if rec != "episode" or "return" not in r:
        return None
    attack = r.get("attack")
    if attack in (None, "none") or not float(r.get("eps") or 0.0):
        return Column("natural", "", None), float(r["return"])
    return Column("attack", str(attack), float(r["eps"])), float(r["return"])


def _iqm(v: np.ndarray) -> float:
    return float(trim_mean(v, 0.25))


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


def build_tables(rows: list[dict]) -> list[Table]:
    """Group result rows by env and agent (env, algo, loss) into verification tables."""
    # (env, algo, loss) -> column -> seed -> episode key -> value (dedup, last wins)
    data: dict[tuple, dict[Column, dict[int, dict]]] = {}
    natural_certify: dict[tuple, dict[int, dict]] = {}
    meta: dict[str, dict] = {}
    kinds: dict[str, dict[str, str]] = {}
    details: dict[str, dict[str, str]] = {}
    for r in rows:
        if not isinstance(r, dict) or "env_id" not in r:
            continue
        col = _column_of(r)
        if col is None:
            continue
        column, value = col
        env = r["env_id"]
        key = (env, str(r.get("algo", "?")), str(r.get("loss", "?")))
        seed = int(r.get("seed", 0))
        ep = (r.get("episode_seed"), r.get("episode"))
        m = meta.setdefault(env, {"env_version": r.get("env_version", ""),
                                  "eps_space": set(), "norm": set()})
        if r.get("eps_space"):
            m["eps_space"].add(str(r["eps_space"]))
        if r.get("norm"):
            m["norm"].add(str(r["norm"]))
        data.setdefault(key, {}).setdefault(column, {}).setdefault(seed, {})[ep] = value
        if column.group in ("acr", "gwc", "ps"):
            kinds.setdefault(env, {})[column.name] = str(r.get("certificate_kind", "?"))
            if column.name == "smoothing":
                details.setdefault(env, {})["smoothing"] = (
                    f"Cohen et al., n={r.get('n')}, alpha={r.get('alpha')}, "
                    f"sigma={r.get('sigma')}, l2 radius vs eps*sqrt(d)")
        if column.group == "acr" and r.get("return") is not None:
            natural_certify.setdefault(key, {}).setdefault(seed, {})[ep] = float(r["return"])
    tables = []
    for env in sorted({k[0] for k in data}):
        keys = sorted(k for k in data if k[0] == env)
        agent_rows = []
        for key in keys:
            cols = data[key]
            nat = Column("natural", "", None)
            if nat not in cols and key in natural_certify:
                cols[nat] = natural_certify[key]
            row = AgentRow(*key)
            for column, per_seed in cols.items():
                row.cells[column] = _aggregate({s: list(v.values()) for s, v in per_seed.items()})
            agent_rows.append(row)
        columns = sorted({c for r in agent_rows for c in r.cells}, key=Column.sort_key)
        for c in columns:
            vals = [r.cells[c].center for r in agent_rows if c in r.cells]
            if len(vals) >= 2 and np.isfinite(vals).any():
                best = np.nanmax(vals)
                for r in agent_rows:
                    if c in r.cells and math.isclose(r.cells[c].center, best, rel_tol=1e-12,
                                                     abs_tol=1e-12):
                        r.cells[c].best = True
        m = meta[env]
        tables.append(Table(env, m["env_version"], " / ".join(sorted(m["eps_space"])) or "?",
                            " / ".join(sorted(m["norm"])) or "?", columns, agent_rows,
                            kinds.get(env, {}), details.get(env, {})))
    return tables


def _aggregate(per_seed: dict[int, list[float]]) -> Cell:
    cell = Cell(per_seed=per_seed, n_episodes=sum(len(v) for v in per_seed.values()))
    if len(per_seed) == 1:
        v = np.asarray(next(iter(per_seed.values())), dtype=np.float64)
        cell.center, cell.spread = float(v.mean()), float(v.std())
    else:
        means = np.array([np.mean(per_seed[s]) for s in sorted(per_seed)])
        cell.center = _iqm(means)
        cell.ci = bootstrap_ci(means)
    return cell
