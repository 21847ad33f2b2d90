"""Paper figures from result rows (matplotlib, Agg canvas; PNG or vector PDF).

Kinds (``KINDS``):

* ``certified-fraction``: for each series, F(r) = fraction of the visited states whose
  certified radius (certify ``state`` rows, field ``radius``) is >= r, for r from 0 to
  the largest recorded eps (at r = 0: radius > 0), as randomized-smoothing papers plot
  certified accuracy vs radius; markers: the fraction of states with ``certified: true``
  at each recorded eps (the grid the command was run with);
* ``acr``: ACR (certified steps / steps, the tables' ACR columns) vs eps;
* ``attack``: return under each attack vs eps (the tables' attack columns), the natural
  return as a thin black level;
* ``iqm``: one panel per table column at one eps (rliable style): a seed group shows the
  IQM of its per-seed means with the 95% percentile-bootstrap CI over seeds, an agent
  its mean over episodes (no CI).

Series never mix agents or threat models: one series per (table row, method or attack,
norm, eps space, settings variant), where a table row is an agent identity or a seed
group exactly as ``certrl.report.grouping`` forms it for ``certrl table``. A group's
curve is the IQM over its seeds (``scipy.stats.trim_mean(., 0.25)``, the tables'
estimator) with the tables' bootstrap CI (``certrl.report.model.bootstrap_ci``) as a band.
Output bytes are deterministic for the same rows (no dates, no software version).
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import trim_mean

from certrl.records import StateRow, row_from_json, write_atomic
from certrl.report.grouping import (
    GroupSpec,
    RowSpec,
    assign_rows,
    identity_of,
    merge_identity,
    row_label,
)
from certrl.report.model import (
    METHOD_ORDER,
    AgentRow,
    Column,
    Table,
    bootstrap_ci,
    build_tables,
    method_kind,
    method_label,
)

KINDS = ("certified-fraction", "acr", "attack", "iqm")
FIG_FORMATS = ("png", "pdf")
# Okabe & Ito (2008) colour-blind-safe palette (black last: used for natural returns)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
             "#000000")
ROW_COLOURS = tuple(c for c in OKABE_ITO if c != "#F0E442")  # yellow is faint as a point
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
NORM_TEXT = {"inf": "ℓ∞", "2": "ℓ₂", "1": "ℓ₁"}  # plain text: searchable in the PDF
ATTACK_NAMES = {"pgd": "PGD", "pgd-ref": "PGD-ref", "fgsm": "FGSM", "mad": "MAD",
                "random": "random"}
GRID = 401  # radius grid points of a certified-fraction curve
RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.grid": True,
      "grid.alpha": 0.3, "svg.hashsalt": "certrl", "path.simplify": False}


@dataclass
class Series:
    """One curve: a table row x method (colour) x threat model, with an optional band."""

    label: str
    method: str  # colour key
    row: str  # line style key (the table row)
    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    marks: tuple[np.ndarray, np.ndarray] | None = None  # points drawn without a line
    dotted: bool = False  # a reference level (natural return), drawn as a thin black line


@dataclass
class Panel:
    """One axes: its title, axis labels (with units) and series."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    yticklabels: list[str] | None = None  # iqm panels: the table rows


# ----------------------------------------------------------------- labels
def norm_text(norm: str | None) -> str:
    """'inf' -> ℓ∞, '2' -> ℓ₂; the norm is part of every series label."""
    return NORM_TEXT.get(norm or "", f"ℓ{norm}" if norm else "norm ?")


def method_text(name: str) -> str:
    """A certificate method as labelled in tables, with its kind: 'CROWN (sound)'."""
    return f"{method_label(name).replace('alpha-', 'α-')} ({method_kind(name)})"


def eps_label(norms: set, spaces: set) -> str:
    """x-axis label: eps with its norm and space when all series share them."""
    norm = norm_text(next(iter(norms))) if len(norms) == 1 else "norm per series"
    space = next(iter(spaces)) if len(spaces) == 1 and None not in spaces else \
        "space per series"
    return textwrap.fill(f"perturbation radius eps ({norm} ball, in {space} units)", 80)


def series_label(row: str, what: str, norm: str | None, space: str | None, variant: str,
                 show_space: bool, show_variant: bool) -> str:
    """'<agent label #id (DQN, loss)>: CROWN (sound), ℓ∞' (+ space / variant if needed)."""
    text = f"{row}: {what}, {norm_text(norm)}"
    if show_space and space:
        text += f", {space}"
    if show_variant and variant:
        text += f" [{variant}]"
    return text


def method_rank(name: str) -> tuple:
    """Registry order of methods (then attacks by name), so colours are stable."""
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


# ----------------------------------------------------------------- certified fraction
@dataclass
class StateSet:
    """The states of one (agent, method, norm, space, settings) as certify rows give them."""

    radius: dict[tuple, float] = field(default_factory=dict)  # state -> certified radius
    certified: dict[float, dict[tuple, bool]] = field(default_factory=dict)  # eps -> ...


def collect_states(rows: list) -> tuple[dict, dict[tuple, StateSet]]:
    """(identity key -> Identity, (identity key, method, norm, space, settings_hash) ->
    StateSet) from certify ``state`` rows of sound or probabilistic methods."""
    idents, sets = {}, {}
    for raw in rows:
        r = row_from_json(raw)
        if not isinstance(r, StateRow) or r.env_id is None or r.method is None:
            continue
        if r.certificate_kind == "heuristic" or (r.radius is None and r.certified is None):
            continue
        ident = identity_of(r)
        prev = idents.get(ident.key)
        idents[ident.key] = ident if prev is None else merge_identity(prev, ident)
        key = (ident.key, r.method, str(r.norm) if r.norm is not None else None,
               r.eps_space or None, r.settings_hash or "")
        s = sets.setdefault(key, StateSet())
        state = (r.episode_seed, str(r.episode), r.step)
        if r.radius is not None and math.isfinite(float(r.radius)):
            s.radius[state] = float(r.radius)
        if r.certified is not None and r.eps is not None:
            s.certified.setdefault(float(r.eps), {})[state] = bool(r.certified)
    return idents, sets


def fraction_curve(radii: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F(r) = mean(radius >= r) for r > 0 and mean(radius > 0) at r = 0."""
    f = (radii[None, :] >= grid[:, None]).mean(axis=1)
    f[grid <= 0] = float((radii > 0).mean())
    return f


def aggregate(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(seeds, points) -> the center per point (the value itself for one seed, else the
    IQM over seeds) and the tables' 95% bootstrap CI over seeds (None for one seed)."""
    if per_seed.shape[0] == 1:
        return per_seed[0], None, None
    center = trim_mean(per_seed, 0.25, axis=0)
    ci = np.array([bootstrap_ci(per_seed[:, j]) for j in range(per_seed.shape[1])])
    return center, ci[:, 0], ci[:, 1]


def center_of(values: list[float]) -> float:
    """One value as is; several (seeds): their IQM (the tables' ``trim_mean(., 0.25)``)."""
    return float(values[0]) if len(values) == 1 else float(trim_mean(values, 0.25))


def fraction_series(spec: RowSpec, members: dict, grid: np.ndarray, label: str,
                    method: str) -> Series | None:
    """One certified-fraction series of a table row: members = identity key -> StateSet."""
    curves = [fraction_curve(np.array(list(s.radius.values())), grid)
              for s in members.values() if s.radius]
    eps_grid = sorted({e for s in members.values() for e in s.certified})
    if not curves and not eps_grid:
        return None
    if len(spec.members) > 1 and len(members) < len(spec.members):
        label += f" (n={len(members)}/{len(spec.members)} seeds)"
    marks = [center_of([float(np.mean(list(s.certified[e].values())))
                        for s in members.values() if e in s.certified]) for e in eps_grid]
    y, lo, hi = aggregate(np.array(curves)) if curves else (np.full(len(grid), np.nan),
                                                            None, None)
    return Series(label, method, row_label(spec), grid, y, lo, hi,
                  (np.array(eps_grid), np.array(marks)))


def certified_fraction_panels(rows: list, groups=(), by_agent: bool = False,
                              eps_max: float | None = None) -> list[Panel]:
    """One panel per env: certified fraction of visited states vs eps, per series."""
    idents, sets = collect_states(rows)
    if not sets:
        raise ValueError("no certify state rows with a certified radius or flag (sound or "
                         "probabilistic method) in the results: run certrl certify "
                         "without --no-state-rows")
    owner = assign_rows(list(idents.values()), list(groups), by_agent)
    by_series: dict[tuple, dict] = {}
    for (key, method, norm, space, sh), s in sorted(sets.items(), key=_set_order):
        spec = owner[key]
        by_series.setdefault((id(spec), method, norm, space, sh), {})[key] = s
    panels = []
    for env in sorted({i.env_id for i in idents.values()}):
        keys = [k for k in by_series if _spec(owner, by_series[k]).members[0].env_id == env]
        top = eps_max or max((e for k in keys for s in by_series[k].values()
                              for e in s.certified), default=0.0)
        if not top > 0:
            top = max(r for k in keys for s in by_series[k].values() for r in s.radius.values())
        grid = np.linspace(0.0, float(top), GRID)
        panel = Panel(f"{env}: certified fraction of visited states",
                      eps_label({k[2] for k in keys}, {k[3] for k in keys}),
                      "certified fraction of states (radius >= eps)", ylim=(-0.02, 1.02))
        spaces, hashes = len({k[3] for k in keys}) > 1, _varies(keys, 4)
        for k in keys:
            spec = _spec(owner, by_series[k])
            label = series_label(row_label(spec), method_text(k[1]), k[2], k[3],
                                 f"settings {k[4][:6]}", spaces, hashes)
            s = fraction_series(spec, by_series[k], grid, label, k[1])
            if s is not None:
                panel.series.append(s)
        panel.series.sort(key=lambda s: (s.row, method_rank(s.method)))  # as the tables
        panels.append(panel)
    return panels


def _set_order(item) -> tuple:
    (key, method, norm, space, sh), _ = item
    return (key, method_rank(method), str(norm), str(space), sh)


def _spec(owner: dict, members: dict) -> RowSpec:
    return owner[next(iter(members))]


def _varies(keys: list[tuple], i: int) -> bool:
    """Whether some series differ only in field i (then labels must show it)."""
    rest = [k[:i] + k[i + 1:] for k in keys]
    return len(set(rest)) < len(set(keys))


# ----------------------------------------------------------------- table columns vs eps
def curve_panels(tables: list[Table], group: str) -> list[Panel]:
    """One panel per env: the table's ``group`` columns (acr or attack) vs eps, one series
    per (table row, method or attack, norm, eps space, variant)."""
    panels = []
    for t in tables:
        keys = sorted({(c.name, c.norm, c.eps_space, c.variant) for c in t.columns
                       if c.group == group}, key=lambda k: (method_rank(k[0]), *map(str, k)))
        if not keys:
            continue
        acr = group == "acr"
        panel = Panel(f"{t.env_id}: " + ("ACR (certified steps / steps) vs eps" if acr
                                         else "episode return under attack vs eps"),
                      eps_label({k[1] for k in keys}, {k[2] for k in keys}),
                      "ACR (fraction of certified steps)" if acr
                      else "episode return (reward units)",
                      ylim=(-0.02, 1.02) if acr else None)
        spaces, variants = len({k[2] for k in keys}) > 1, _varies(keys, 3)
        for row in t.rows:
            for k in keys:
                s = column_series(row, t, group, k, spaces, variants)
                if s is not None:
                    panel.series.append(s)
            if not acr:
                panel.series += natural_series(row)
        if any(not s.dotted for s in panel.series):
            panels.append(panel)
    return panels


def column_series(row: AgentRow, t: Table, group: str, key: tuple, spaces: bool,
                  variants: bool) -> Series | None:
    """The row's cells of the columns (group, name, norm, space, variant) sorted by eps;
    empty cells (n/a: no complete episode) are left out."""
    name, norm, space, variant = key
    cols = sorted((c for c in t.columns if c.group == group and c.eps is not None
                   and (c.name, c.norm, c.eps_space, c.variant) == key), key=lambda c: c.eps)
    cells = [(c.eps, row.cells[c]) for c in cols if c in row.cells and not row.cells[c].empty]
    if not cells:
        return None
    what = method_text(name) if group == "acr" else ATTACK_NAMES.get(name, name.upper())
    x = np.array([e for e, _ in cells])
    y = np.array([c.center for _, c in cells])
    lo = hi = None
    if row.kind == "group":
        lo = np.array([c.ci[0] if c.ci else c.center for _, c in cells])
        hi = np.array([c.ci[1] if c.ci else c.center for _, c in cells])
    label = series_label(row.label, what, norm, space, variant, spaces, variants)
    return Series(label, name, row.label, x, y, lo, hi)


def natural_series(row: AgentRow) -> list[Series]:
    """The row's natural return (greedy actions) as a dotted level, when it has one."""
    cell = row.cells.get(Column("natural", "", None))
    if cell is None or cell.empty:
        return []
    return [Series(f"{row.label}: natural return (no attack)", "~natural", row.label,
                   np.array([]), np.array([cell.center]), dotted=True)]


# ----------------------------------------------------------------- iqm panels
def iqm_eps(tables: list[Table], eps: float | None) -> float:
    """The eps of the iqm figure: ``eps`` if some column has it; by default the largest
    eps that every eps-dependent column family (attack, method, norm, ...) has, else the
    largest eps of any column."""
    families: dict[tuple, set] = {}
    for c in (c for t in tables for c in t.columns if c.eps is not None):
        families.setdefault((c.group, c.name, c.norm, c.eps_space, c.variant), set()).add(c.eps)
    have = sorted(set().union(*families.values())) if families else []
    if not have:
        raise ValueError("no attack / ACR / GWC / PS columns in the results")
    if eps is None:
        common = set.intersection(*families.values())
        return max(common) if common else have[-1]
    if not any(math.isclose(eps, e, rel_tol=1e-9) for e in have):
        raise ValueError(f"no column at eps {eps:g}; the results have eps "
                         + ", ".join(f"{e:g}" for e in have))
    return eps


def iqm_panels(tables: list[Table], eps: float | None) -> list[Panel]:
    """One panel per (env, column at ``eps`` or without eps): per table row its center
    (group: IQM over seeds, 95% bootstrap CI; agent: mean over episodes) as a point."""
    e = iqm_eps(tables, eps)
    panels = []
    for t in tables:
        for c in t.columns:
            if c.eps is not None and not math.isclose(c.eps, e, rel_tol=1e-9):
                continue
            rows = [r for r in t.rows if c in r.cells and not r.cells[c].empty]
            if not rows:
                continue
            title = f"{t.env_id}: {column_title(c)}{t.variant_suffix(c)}"
            panel = Panel(textwrap.fill(title, 40, break_on_hyphens=False), value_label(c),
                          "", yticklabels=[textwrap.fill(r.label, 34) for r in t.rows])
            for r in rows:
                cell, i = r.cells[c], t.rows.index(r)
                lo, hi = (np.array([cell.ci[0]]), np.array([cell.ci[1]])) \
                    if r.kind == "group" and cell.ci else (None, None)
                panel.series.append(Series(r.label, str(i), r.label, np.array([cell.center]),
                                           np.array([float(i)]), lo, hi))
            panels.append(panel)
    return panels


def column_title(c: Column) -> str:
    """'PGD ℓ∞ @0.05', 'ACR CROWN (sound) ℓ∞ @0.05', 'Natural', 'Mean radius IBP'."""
    if c.group == "natural":
        return "Natural return"
    names = {"attack": ATTACK_NAMES.get(c.name, c.name.upper()),
             "acr": f"ACR {method_text(c.name)}",
             "radius": f"Mean radius {method_text(c.name)}",
             "deviation": f"Action deviation bound {method_text(c.name)}",
             "gwc": method_label(c.name) if "heuristic" in method_label(c.name)
             else f"{method_label(c.name)} (heuristic)", "ps": "PS certified return"}
    what = c.title or names.get(c.group, c.name)
    at = f" @{c.eps:g}" if c.eps is not None else ""
    return f"{what} {norm_text(c.norm)}{at}"


def value_label(c: Column) -> str:
    """x-axis label of an iqm panel, with units."""
    if c.is_fraction:
        return "certified steps / steps"
    if c.is_radius:
        return f"radius (eps units, {c.eps_space or 'network input'})"
    if c.group == "deviation":
        return "max |action change| bound (action units)"
    if c.group == "metric":
        return c.title or c.name
    return "episode return (reward units)"


# ----------------------------------------------------------------- drawing
def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def styles(panels: list[Panel]) -> tuple[dict, dict]:
    """Colour per method / attack (registry order, Okabe-Ito; natural: black) and
    (line style, marker) per table row, fixed across the figure's panels."""
    methods = sorted({s.method for p in panels for s in p.series if s.method != "~natural"},
                     key=method_rank)
    colours = {m: OKABE_ITO[i % (len(OKABE_ITO) - 1)] for i, m in enumerate(methods)}
    colours["~natural"] = OKABE_ITO[-1]
    rows = sorted({s.row for p in panels for s in p.series})  # same style in every figure
    lines = {r: (LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)])
             for i, r in enumerate(rows)}
    return colours, lines


def draw_curves(panels: list[Panel]):
    """Curve panels (certified-fraction, acr, attack) stacked vertically, each with its
    legend below it."""
    colours, lines = styles(panels)
    n_leg = max(len(p.series) for p in panels)
    fig = new_figure(7.0, len(panels) * (3.2 + 0.17 * n_leg))
    for k, p in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        for s in p.series:
            draw_series(ax, s, colours[s.method], *lines[s.row])
        if any(s.marks is not None for s in p.series):
            ax.plot([], [], "k", marker="o", linestyle="none", markerfacecolor="none",
                    label="markers: certified flags at the eps the results were run with")
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel)
        if p.ylim:
            ax.set_ylim(*p.ylim)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False)
    fig.set_layout_engine("constrained")
    return fig


def draw_series(ax, s: Series, colour: str, linestyle: str, marker: str) -> None:
    """One series: its line, its CI band (seed groups), its marks, or a dotted level."""
    if s.dotted:  # a level in black, in the row's line style
        ax.axhline(s.y[0], color=colour, linestyle=linestyle, linewidth=0.9, alpha=0.8,
                   label=s.label)
        return
    dense = len(s.x) > 50
    ax.plot(s.x, s.y, color=colour, linestyle=linestyle, marker=None if dense else marker,
            markersize=4, linewidth=1.5, label=s.label)
    if s.lo is not None and s.hi is not None:
        ax.fill_between(s.x, s.lo, s.hi, color=colour, alpha=0.18, linewidth=0)
    if s.marks is not None and len(s.marks[0]):
        ax.plot(s.marks[0], s.marks[1], color=colour, marker=marker, linestyle="none",
                markerfacecolor="none", markersize=6)


def draw_intervals(panels: list[Panel]):
    """iqm panels on a grid, 3 per line: a point per table row with its CI (seed groups:
    filled, CI bar; single agents: hollow, no CI); row labels on the left panels."""
    from matplotlib.ticker import MaxNLocator

    ncol = min(3, len(panels))
    nline = math.ceil(len(panels) / ncol)
    nrows = max(len(p.yticklabels or []) for p in panels)
    shared = len({tuple(p.yticklabels or []) for p in panels}) == 1
    fig = new_figure(2.2 + 2.4 * ncol, nline * (0.9 + 0.42 * nrows) + 0.4)
    for k, p in enumerate(panels):
        ax = fig.add_subplot(nline, ncol, k + 1)
        for s in p.series:
            c = ROW_COLOURS[int(s.y[0]) % len(ROW_COLOURS)]
            if s.lo is not None:
                ax.errorbar(s.x, s.y, xerr=[s.x - s.lo, s.hi - s.x], fmt="o", color=c,
                            capsize=3, markersize=5)
            else:
                ax.plot(s.x, s.y, "o", color=c, markerfacecolor="none", markersize=5)
        labels = p.yticklabels or []
        show = k % ncol == 0 or not shared
        ax.set_yticks(range(len(labels)), labels if show else [""] * len(labels), fontsize=7)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(p.title, fontsize=8)
        ax.set_xlabel(p.xlabel, fontsize=8)
    fig.supxlabel("filled with bar: seed group, IQM of per-seed means, 95% bootstrap CI over "
                  "seeds; hollow: one agent, mean over episodes (no CI)", fontsize=7)
    fig.set_layout_engine("constrained")
    return fig


# ----------------------------------------------------------------- entry points
def figure_format(path: str | os.PathLike) -> str:
    """'png' or 'pdf' from the file name; ValueError for any other extension."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FIG_FORMATS:
        raise ValueError(f"{path}: unknown figure extension {('.' + ext) if ext else '(none)'}"
                         f"; use one of {', '.join('.' + f for f in FIG_FORMATS)}")
    return ext


def make_figure(rows: list, kind: str, groups: list[GroupSpec] = (), by_agent: bool = False,
                eps: float | None = None, eps_max: float | None = None):
    """The figure of ``kind`` (``KINDS``) from result rows (JSON objects or typed rows);
    ValueError for an unknown kind or when the rows have nothing to plot for it.

    ``groups`` / ``by_agent``: table rows as in ``certrl table``; ``eps``: the eps of an
    iqm figure (default: the largest); ``eps_max``: right end of a certified-fraction
    curve (default: the largest eps certified)."""
    import matplotlib

    if kind not in KINDS:
        raise ValueError(f"unknown figure kind {kind!r}; choose one of {', '.join(KINDS)}")
    with matplotlib.rc_context(RC):
        if kind == "certified-fraction":
            return draw_curves(certified_fraction_panels(rows, groups, by_agent, eps_max))
        tables = build_tables(rows, groups=groups, by_agent=by_agent)
        if kind == "iqm":
            panels = iqm_panels(tables, eps) if tables else []
        else:
            panels = curve_panels(tables, kind)
        if not panels:
            raise ValueError(f"no results to plot as {kind}: "
                             + {"acr": "needs certify episode rows of a sound or "
                                       "probabilistic method",
                                "attack": "needs certrl attack rows with complete (not "
                                          "--max-steps truncated) episodes",
                                "iqm": "needs episode results"}[kind])
        return draw_intervals(panels) if kind == "iqm" else draw_curves(panels)


def figure_bytes(fig, fmt: str, dpi: int = 150) -> bytes:
    """The figure encoded as ``fmt`` (png / pdf; ``dpi`` sets the PNG resolution) with no
    date or software metadata, so the same rows give the same bytes."""
    import matplotlib

    if fmt not in FIG_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; use one of {', '.join(FIG_FORMATS)}")
    meta = {"CreationDate": None, "Producer": None, "Creator": None} if fmt == "pdf" \
        else {"Software": None}
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format=fmt, metadata=meta, dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(rows: list, kind: str, out: str | os.PathLike, dpi: int = 150,
                **options) -> Path:
    """Render ``kind`` from ``rows`` (``make_figure`` options) and write it to ``out``
    (format from its extension) atomically; nothing is written on any error."""
    fmt = figure_format(out)
    data = figure_bytes(make_figure(rows, kind, **options), fmt, dpi)
    return write_atomic(out, data)
