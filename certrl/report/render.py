"""Render verification tables as Markdown, LaTeX (booktabs) or CSV.

``Style`` says how a paper wants the LaTeX: the float (``table``, ``table*`` or none),
caption, label, ``\\resizebox`` to the line width, the font size and the row header.
LaTeX cells are compact: ``485.0\\,{\\scriptsize[480,490]}`` (IQM and its CI rounded
outwards to one decimal less) or ``20.5\\,{\\scriptsize$\\pm$0.5}``; Markdown keeps the
full ``mean ± std`` / ``IQM [lo, hi]`` text and CSV the full precision of every number.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass

from certrl.report.model import METHOD_ORDER, AgentRow, Cell, Column, Table, method_label

FORMATS = ("md", "latex", "csv")
FLOATS = ("table", "table*", "none")


@dataclass(frozen=True)
class Style:
    """How tables are laid out on the page (Markdown uses ``caption``, ``row_header`` and
    ``md_caption``; the rest is LaTeX)."""

    float_env: str = "table"  # "table", "table*" (both columns) or "none" (bare tabular)
    caption: str | None = None  # replaces the generated caption (LaTeX source as given)
    label: str | None = None  # \\label (suffixed with the env when there are several tables)
    resize: bool = False  # \\resizebox{\\linewidth}{!}{tabular} (needs graphicx)
    font: str = r"\small"
    placement: str = "t"
    row_header: str = "Agent"
    md_caption: bool = True  # Markdown: the "**Table i.** caption" line

    def __post_init__(self) -> None:
        if self.float_env not in FLOATS:
            raise ValueError(f"unknown float {self.float_env!r}; use one of {', '.join(FLOATS)}")


def fmt_eps(eps: float) -> str:
    """0.01 -> '0.01'; 3/255 -> '3/255' (exact multiples of 1/255 read better)."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-9 and round(k) <= 32:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


NORM_MD = {"inf": "l∞", "2": "l2", "1": "l1"}
NORM_TEX = {"inf": r"$\ell_\infty$", "2": r"$\ell_2$", "1": r"$\ell_1$"}


ATTACK_LABELS = {"pgd-ref": "PGD-ref"}  # the references' PGD (10 x 0.1 eps, no random start)


def header(c: Column) -> tuple[str, str]:
    """(group title, eps sub-header) of a column; the norm is added by each renderer."""
    e = "" if c.eps is None else fmt_eps(c.eps)
    if c.title:
        return c.title, e
    if c.group == "natural":
        return "Natural", ""
    what = f" ({method_label(c.name)})" if c.name else ""  # no name: methods are sub-rows
    if c.group == "radius":
        return f"Mean radius{what}", e
    if c.group == "deviation":
        return f"Deviation{what}", e
    if c.group == "attack":
        return ATTACK_LABELS.get(c.name, c.name.upper()), e
    if c.group == "acr":
        return f"ACR{what}", e
    if c.group == "gwc":
        label = method_label(c.name) if c.name else "GWC"
        return (label if "heuristic" in label else f"{label} (heuristic)"), e
    return "PS cert. return", e


def part_text(t: Table, r: AgentRow, latex: bool = False) -> str:
    """The sub-row label of a transposed table: the eps, or the method's label."""
    if t.part_axis == "eps":
        return fmt_eps(float(r.part))
    return method_label(r.part, latex=latex) if latex else method_label(r.part)


def _space_suffix(t: Table, c: Column) -> str:
    return f" ({c.eps_space})" if len(t.spaces) > 1 and c.eps_space else ""


def md_header(t: Table, c: Column) -> str:
    """'PGD l2 @0.05', 'ACR (CROWN) l∞ @1/255', 'Natural'."""
    g, s = header(c)
    norm = NORM_MD.get(c.norm, f"l{c.norm}") if c.norm else ""
    head = " ".join(x for x in (g, norm) if x) + _space_suffix(t, c) + t.variant_suffix(c)
    return head if not s else f"{head} @{s}"


def fmt_cell(cell: Cell | None, column: Column, pm: str = " ± ") -> str:
    """The numbers of a cell: mean ± std (agent row), IQM [CI] (group row), n/a or –."""
    if cell is None:
        return "–"
    if cell.empty:
        return "n/a"
    d = column.decimals
    if cell.ci is not None:
        return f"{cell.center:.{d}f} [{cell.ci[0]:.{d}f}, {cell.ci[1]:.{d}f}]"
    if column.group == "ps" and cell.n_episodes == 1:
        return f"{cell.center:.{d}f}"
    return f"{cell.center:.{d}f}{pm}{cell.spread:.{d}f}"


def cell_marks(cell: Cell | None, column: Column) -> list[str]:
    """Plain-text marks of a cell: '†k' (k truncated excluded), '‡k' (kept), 'n=k/m'."""
    if cell is None:
        return []
    marks = []
    if cell.n_truncated:
        marks.append(f"{'†' if column.is_return else '‡'}{cell.n_truncated}")
    if cell.partial:
        marks.append(f"n={cell.n_seeds}/{cell.n_group}")
    return marks


def cell_text(cell: Cell | None, column: Column, pm: str = " ± ") -> str:
    return " ".join([fmt_cell(cell, column, pm), *cell_marks(cell, column)])


# -------------------------------------------------------------- markdown
def _labels(t: Table, latex: bool) -> list[list[str]]:
    """The label cells of each row: [agent] or, in a transposed table, [agent, part] with
    the agent written on its first sub-row only."""
    out, prev = [], None
    for r in t.rows:
        if not t.part_axis:
            out.append([r.label])
            continue
        out.append(["" if r.label == prev else r.label, part_text(t, r, latex)])
        prev = r.label
    return out


def _part_header(t: Table, latex: bool) -> list[str]:
    if not t.part_axis:
        return []
    if t.part_axis == "eps":
        return [r"$\epsilon$" if latex else "eps"]
    return ["Method"]


def to_markdown(tables: list[Table], style: Style | None = None) -> str:
    style = style or Style()
    out = []
    for i, t in enumerate(tables, 1):
        heads = [md_header(t, c) for c in t.columns]
        lead = [style.row_header] + _part_header(t, False)
        if style.md_caption:
            caption = style.caption if style.caption is not None else t.caption()
            out.append(f"**Table {i}.** {caption.replace('+-', '±')}\n")
        out.append("| " + " | ".join(lead + heads) + " |")
        out.append("|" + "---|" * len(lead) + "|".join("---:" for _ in heads) + "|")
        for r, labels in zip(t.rows, _labels(t, False)):
            cells = []
            for c in t.columns:
                cell = r.cells.get(c)
                s = fmt_cell(cell, c)
                s = f"**{s}**" if cell is not None and cell.best else s
                cells.append(" ".join([s, *cell_marks(cell, c)]))
            out.append("| " + " | ".join(labels + cells) + " |")
        out.append("")
        if t.notes():
            out += ["Notes: " + "; ".join(t.notes()) + ".", ""]
    return "\n".join(out)


# ----------------------------------------------------------------- latex
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "†": r"$^\dagger$",
        "‡": r"$^\ddagger$", "∞": r"$\infty$"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def _tex_words(s: str) -> str:
    s = tex_escape(s)
    s = re.sub(r"\beps\b", lambda _: r"$\epsilon$", s.replace("+- ", r"$\pm$ "))
    s = s.replace("--max-steps", r"\texttt{-{}-max-steps}")
    for n, tex in NORM_TEX.items():
        s = s.replace(f"l\\_{n}", tex)
    return s


def _tex_caption(t: Table) -> str:
    """The generated caption in LaTeX; registered methods by their LaTeX label."""
    s = _tex_words(t.caption())
    for m in METHOD_ORDER:
        plain, tex = method_label(m), method_label(m, latex=True)
        if plain != tex and "$" in tex:  # e.g. alpha-CROWN -> $\alpha$-CROWN
            s = s.replace(tex_escape(plain) + " (", tex + " (")
    return s


def _tex_group(c: Column) -> str:
    """The column's group title in LaTeX (a registered method by its LaTeX label)."""
    if c.name in METHOD_ORDER and c.group in ("acr", "radius", "deviation") and not c.title:
        return header(replace_name(c))[0] + f" ({method_label(c.name, latex=True)})"
    return tex_escape(header(c)[0])


def replace_name(c: Column) -> Column:
    """The column without its method (for its title alone)."""
    return Column(c.group, "", c.eps, c.norm, c.eps_space, c.variant, c.title, c.digits,
                  c.better)


def _tex_title(t: Table, c: Column) -> str:
    norm = NORM_TEX.get(c.norm, tex_escape(f"l{c.norm}")) if c.norm else ""
    suffix = _space_suffix(t, c) + t.variant_suffix(c)
    return " ".join(x for x in (_tex_group(c), norm) if x) + tex_escape(suffix)


def _tex_marks(cell: Cell | None, column: Column) -> str:
    marks = cell_marks(cell, column)
    if not marks:
        return ""
    tex = {"†": r"\dagger", "‡": r"\ddagger"}
    sup = [tex[m[0]] + " " + m[1:] if m[0] in tex else r"\mathrm{" + m + "}" for m in marks]
    return "$^{" + r",\,".join(sup) + "}$"


def _round_out(lo: float, hi: float, d: int) -> tuple[str, str]:
    """A CI rounded outwards to ``d`` decimals (the shown interval contains the true one)."""
    k = 10.0 ** d
    lo_r = math.floor(lo * k + 1e-9 * max(1.0, abs(lo * k))) / k
    hi_r = math.ceil(hi * k - 1e-9 * max(1.0, abs(hi * k))) / k
    return f"{lo_r:.{d}f}", f"{hi_r:.{d}f}"


def tex_number(cell: Cell, column: Column) -> str:
    r"""Compact LaTeX of a cell's numbers: 485.0\,{\scriptsize[480,490]} (IQM, CI rounded
    outwards to one decimal less), 20.5\,{\scriptsize$\pm$0.5} (mean, std); bold centre
    when best."""
    d = column.decimals
    center = f"{cell.center:.{d}f}"
    center = r"\textbf{" + center + "}" if cell.best else center
    if cell.ci is not None:
        lo, hi = _round_out(cell.ci[0], cell.ci[1], max(d - 1, 0))
        return center + r"\,{\scriptsize[" + lo + "," + hi + "]}"
    if column.group == "ps" and cell.n_episodes == 1:
        return center
    return center + r"\,{\scriptsize$\pm$" + f"{cell.spread:.{d}f}" + "}"


def _tex_cell(cell: Cell | None, column: Column) -> str:
    if cell is None:
        return "--"
    s = "n/a" if cell.empty else tex_number(cell, column)
    return s + _tex_marks(cell, column)


def _tex_label(t: Table, style: Style, several: bool) -> str:
    """tab:verification-<env> by default; the given label, suffixed with -<env> (or the
    table's name) when there are several tables."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in (t.name or t.env_id).lower())
    if style.label is None:
        return "tab:verification-" + slug
    return f"{style.label}-{slug}" if several else style.label


def _tex_head(t: Table) -> list[str]:
    """The two header lines (group titles with cmidrules, then eps) of a table."""
    groups: list[tuple[str, int]] = []
    subs = []
    for c in t.columns:
        g = _tex_title(t, c)
        if groups and groups[-1][0] == g:
            groups[-1] = (g, groups[-1][1] + 1)
        else:
            groups.append((g, 1))
        subs.append(header(c)[1])
    n_lead = 1 + bool(t.part_axis)
    top, rules, col = [], [], n_lead + 1
    for g, n in groups:
        top.append(g if n == 1 else r"\multicolumn{" + str(n) + "}{c}{" + g + "}")
        if any(subs[col - n_lead - 1: col - n_lead - 1 + n]):
            rules.append(r"\cmidrule(lr){" + f"{col}-{col + n - 1}" + "}")
        col += n
    return [top, rules, subs]


def _tex_tabular(t: Table, style: Style) -> list[str]:
    top, rules, subs = _tex_head(t)
    lead = [tex_escape(style.row_header)] + _part_header(t, True)
    out = [r"\begin{tabular}{" + "l" * len(lead) + "c" * len(t.columns) + "}", r"\toprule",
           " & ".join(lead + top) + r" \\"]
    if any(subs):
        eps_lead = [""] * (len(lead) - 1) + ["$\\epsilon$"]
        out += [" ".join(rules), " & ".join(eps_lead + [tex_escape(s) for s in subs]) + r" \\"]
    out.append(r"\midrule")
    for r, labels in zip(t.rows, _labels(t, True)):
        cells = [_tex_cell(r.cells.get(c), c) for c in t.columns]
        lab = [tex_escape(labels[0])] + labels[1:]
        out.append(" & ".join(lab + cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if style.resize:
        out = [r"\resizebox{\linewidth}{!}{%"] + out + ["}"]
    return out


def to_latex(tables: list[Table], style: Style | None = None) -> str:
    """Each table as a booktabs tabular in a ``table`` / ``table*`` float with caption and
    label (or bare, ``float_env="none"``); notes below the tabular."""
    style = style or Style()
    pkgs = "booktabs" + (", graphicx" if style.resize else "")
    out = [f"% certrl verification tables; needs \\usepackage{{{pkgs}}}"]
    for t in tables:
        caption = style.caption if style.caption is not None else _tex_caption(t)
        body = _tex_tabular(t, style)
        if t.notes():
            body.append(r"\par\smallskip{\footnotesize " + "; ".join(
                _tex_words(n) for n in t.notes()) + ".}")
        if style.float_env == "none":
            out += body + [""]
            continue
        out += [f"\\begin{{{style.float_env}}}[{style.placement}]", r"\centering", style.font,
                r"\caption{" + caption + "}",
                r"\label{" + _tex_label(t, style, len(tables) > 1) + "}"]
        out += body + [f"\\end{{{style.float_env}}}", ""]
    return "\n".join(out)


# ------------------------------------------------------------------- csv
CSV_FIELDS = ("env_id", "env_version", "agent", "row_kind", "agent_ids", "seeds", "algo",
              "loss", "column", "group", "name", "norm", "eps_space", "eps", "variant",
              "certificate_kind", "n_seeds", "n_group", "n_episodes", "n_truncated", "mean",
              "std", "iqm", "ci_low", "ci_high", "values", "best", "text")


def _num(x: float) -> str:
    """Full precision (the shortest text that reads back as the same float)."""
    return "" if not math.isfinite(x) else repr(float(x))


def _csv_row(t: Table, r: AgentRow, c: Column, cell: Cell) -> dict:
    one = r.kind == "agent"
    certified = c.group not in ("natural", "attack")
    return {
        "env_id": t.env_id, "env_version": t.env_version, "agent": r.label,
        "row_kind": r.kind, "agent_ids": " ".join(r.agent_ids),
        "seeds": " ".join(map(str, r.seeds)), "algo": r.algo, "loss": r.loss,
        "column": md_header(t, c), "group": c.group, "name": c.name, "norm": c.norm or "",
        "eps_space": c.eps_space or "", "eps": "" if c.eps is None else repr(c.eps),
        "variant": c.variant,
        "certificate_kind": t.kinds.get(c.name, "") if certified else "",
        "n_seeds": cell.n_seeds, "n_group": len(r.members), "n_episodes": cell.n_episodes,
        "n_truncated": cell.n_truncated,
        "mean": _num(cell.center) if one else "", "std": _num(cell.spread) if one else "",
        "iqm": "" if one else _num(cell.center),
        "ci_low": "" if one or cell.ci is None else _num(cell.ci[0]),
        "ci_high": "" if one or cell.ci is None else _num(cell.ci[1]),
        "values": " ".join(_num(float(sum(v) / len(v))) for _, v in sorted(
            cell.per_seed.items())) if not one else "",
        "best": int(cell.best), "text": cell_text(cell, c, pm=" +- "),
    }


def to_csv(tables: list[Table]) -> str:
    """Long format: one line per (table row, column) with the numbers behind each cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for t in tables:
        for r in t.rows:
            for c in t.columns:
                if c in r.cells:
                    w.writerow(_csv_row(t, r, c, r.cells[c]))
    return buf.getvalue()


def render(tables: list[Table], fmt: str, style: Style | None = None) -> str:
    """Render in ``fmt``: 'md', 'latex' or 'csv' (``style``: Markdown / LaTeX layout)."""
    if fmt == "md":
        return to_markdown(tables, style)
    if fmt == "latex":
        return to_latex(tables, style)
    if fmt == "csv":
        return to_csv(tables)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
