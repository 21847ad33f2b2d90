"""Render verification tables as Markdown, LaTeX (booktabs) or CSV."""

from __future__ import annotations

import csv
import io
import math
import re

from certrl.report.model import METHOD_ORDER, AgentRow, Cell, Column, Table, method_label

FORMATS = ("md", "latex", "csv")


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
    if c.group == "natural":
        return "Natural", ""
    if c.group == "radius":
        return f"Mean radius ({method_label(c.name)})", ""
    e = fmt_eps(c.eps)
    if c.group == "attack":
        return ATTACK_LABELS.get(c.name, c.name.upper()), e
    if c.group == "acr":
        return f"ACR ({method_label(c.name)})", e
    if c.group == "gwc":
        label = method_label(c.name)
        return (label if "heuristic" in label else f"{label} (heuristic)"), e
    return "PS cert. return", e


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
    d = 3 if column.is_fraction else 4 if column.is_radius else 1
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
def to_markdown(tables: list[Table]) -> str:
    out = []
    for i, t in enumerate(tables, 1):
        heads = [md_header(t, c) for c in t.columns]
        out.append(f"**Table {i}.** {t.caption().replace('+-', '±')}\n")
        out.append("| Agent | " + " | ".join(heads) + " |")
        out.append("|---|" + "|".join("---:" for _ in heads) + "|")
        for r in t.rows:
            cells = []
            for c in t.columns:
                cell = r.cells.get(c)
                s = fmt_cell(cell, c)
                s = f"**{s}**" if cell is not None and cell.best else s
                cells.append(" ".join([s, *cell_marks(cell, c)]))
            out.append(f"| {r.label} | " + " | ".join(cells) + " |")
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
    return _tex_words(t.caption())


def _tex_group(c: Column) -> str:
    """The column's group title in LaTeX (a registered method by its LaTeX label)."""
    if c.group == "acr" and c.name in METHOD_ORDER:
        return f"ACR ({method_label(c.name, latex=True)})"
    if c.group == "radius" and c.name in METHOD_ORDER:
        return f"Mean radius ({method_label(c.name, latex=True)})"
    return tex_escape(header(c)[0])


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
    return "^{" + r",\,".join(sup) + "}"


def _tex_cell(cell: Cell | None, column: Column) -> str:
    if cell is None:
        return "--"
    s = fmt_cell(cell, column, pm=" \\pm ").replace(" [", r"\ [").replace(", ", r",\ ")
    if cell.empty:
        s = r"\mathrm{n/a}"
    elif cell.best:
        s = "\\mathbf{" + s + "}"
    return f"${s}{_tex_marks(cell, column)}$"


def to_latex(tables: list[Table]) -> str:
    out = ["% certrl verification tables; needs \\usepackage{booktabs}"]
    for t in tables:
        groups: list[tuple[str, int]] = []
        subs = []
        for c in t.columns:
            g, s = _tex_title(t, c), header(c)[1]
            if groups and groups[-1][0] == g:
                groups[-1] = (g, groups[-1][1] + 1)
            else:
                groups.append((g, 1))
            subs.append(s)
        label = "tab:verification-" + "".join(ch if ch.isalnum() else "-"
                                              for ch in t.env_id.lower())
        out += [r"\begin{table}[t]", r"\centering", r"\small",
                r"\caption{" + _tex_caption(t) + "}", r"\label{" + label + "}",
                r"\begin{tabular}{l" + "c" * len(t.columns) + "}", r"\toprule"]
        top, rules, col = ["Agent"], [], 2
        for g, n in groups:
            top.append(g if n == 1 else r"\multicolumn{" + str(n) + "}{c}{" + g + "}")
            if any(subs[col - 2: col - 2 + n]):
                rules.append(r"\cmidrule(lr){" + f"{col}-{col + n - 1}" + "}")
            col += n
        out.append(" & ".join(top) + r" \\")
        if any(subs):
            out.append(" ".join(rules))
            out.append(" & ".join(["$\\epsilon$"] + [tex_escape(s) for s in subs]) + r" \\")
        out.append(r"\midrule")
        for r in t.rows:
            cells = [_tex_cell(r.cells.get(c), c) for c in t.columns]
            out.append(tex_escape(r.label) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if t.notes():
            out.append(r"\par\smallskip{\footnotesize " + "; ".join(_tex_words(n)
                                                                  for n in t.notes()) + ".}")
        out += [r"\end{table}", ""]
    return "\n".join(out)


# ------------------------------------------------------------------- csv
CSV_FIELDS = ("env_id", "env_version", "agent", "row_kind", "agent_ids", "seeds", "algo",
              "loss", "column", "group", "name", "norm", "eps_space", "eps", "variant",
              "certificate_kind", "n_seeds", "n_group", "n_episodes", "n_truncated", "mean",
              "std", "iqm", "ci_low", "ci_high", "best", "text")


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"


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


def render(tables: list[Table], fmt: str) -> str:
    """Render in ``fmt``: 'md', 'latex' or 'csv'."""
    if fmt == "md":
        return to_markdown(tables)
    if fmt == "latex":
        return to_latex(tables)
    if fmt == "csv":
        return to_csv(tables)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
