"""Render verification tables as Markdown, LaTeX (booktabs) or CSV."""

from __future__ import annotations

import csv
import io
import math
import re

from certrl.report.model import METHOD_LABEL, Cell, Column, Table

FORMATS = ("md", "latex", "csv")


def fmt_eps(eps: float) -> str:
    """0.01 -> '0.01'; 3/255 -> '3/255' (exact multiples of 1/255 read better)."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-9 and round(k) <= 32:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def header(c: Column) -> tuple[str, str]:
    """(group title, sub-header) of a column."""
    if c.group == "natural":
        return "Natural", ""
    e = fmt_eps(c.eps)
    if c.group == "attack":
        return c.name.upper(), e
    if c.group == "acr":
        return f"ACR ({METHOD_LABEL.get(c.name, c.name)})", e
    if c.group == "gwc":
        return "GWC (heuristic)", e
    return "PS cert. return", e


def fmt_cell(cell: Cell | None, column: Column, pm: str = " ± ") -> str:
    if cell is None or math.isnan(cell.center):
        return "–"
    d = 3 if column.is_fraction else 1
    if cell.ci is not None:
        return f"{cell.center:.{d}f} [{cell.ci[0]:.{d}f}, {cell.ci[1]:.{d}f}]"
    if column.group == "ps":
        return f"{cell.center:.{d}f}" if cell.n_episodes == 1 else \
            f"{cell.center:.{d}f}{pm}{cell.spread:.{d}f}"
    return f"{cell.center:.{d}f}{pm}{cell.spread:.{d}f}"


# -------------------------------------------------------------- markdown
def to_markdown(tables: list[Table]) -> str:
    out = []
    for i, t in enumerate(tables, 1):
        heads = []
        for c in t.columns:
            g, s = header(c)
            heads.append(g if not s else f"{g} @{s}")
        out.append(f"**Table {i}.** {t.caption().replace('+-', '±')}\n")
        out.append("| Agent | " + " | ".join(heads) + " |")
        out.append("|---|" + "|".join("---:" for _ in heads) + "|")
        for r in t.rows:
            cells = []
            for c in t.columns:
                cell = r.cells.get(c)
                s = fmt_cell(cell, c)
                cells.append(f"**{s}**" if cell is not None and cell.best else s)
            out.append(f"| {r.label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------- latex
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def _tex_caption(t: Table) -> str:
    s = tex_escape(t.caption())
    s = re.sub(r"\beps\b", lambda _: r"$\epsilon$", s.replace("+- ", r"$\pm$ "))
    return s.replace("l\\_inf", r"$\ell_\infty$").replace("l\\_2", r"$\ell_2$")


def to_latex(tables: list[Table]) -> str:
    out = ["% certrl verification tables; needs \\usepackage{booktabs}"]
    for t in tables:
        groups: list[tuple[str, int]] = []
        subs = []
        for c in t.columns:
            g, s = header(c)
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
            top.append(tex_escape(g) if n == 1 else
                       r"\multicolumn{" + str(n) + "}{c}{" + tex_escape(g) + "}")
            if any(subs[col - 2: col - 2 + n]):
                rules.append(r"\cmidrule(lr){" + f"{col}-{col + n - 1}" + "}")
            col += n
        out.append(" & ".join(top) + r" \\")
        if any(subs):
            out.append(" ".join(rules))
            out.append(" & ".join(["$\\epsilon$"] + [tex_escape(s) for s in subs]) + r" \\")
        out.append(r"\midrule")
        for r in t.rows:
            cells = []
            for c in t.columns:
                cell = r.cells.get(c)
                s = fmt_cell(cell, c, pm=" \\pm ").replace(" [", r"\ [").replace(", ", r",\ ")
                if cell is None or math.isnan(cell.center):
                    cells.append("--")
                    continue
                cells.append("$\\mathbf{" + s + "}$" if cell.best else f"${s}$")
            out.append(tex_escape(r.label) + " & " + " & ".join(cells) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


# ------------------------------------------------------------------- csv
CSV_FIELDS = ("env_id", "env_version", "eps_space", "norm", "agent", "algo", "loss", "column",
              "group", "name", "eps", "certificate_kind", "n_seeds", "n_episodes", "mean",
              "std", "iqm", "ci_low", "ci_high", "best", "text")


def to_csv(tables: list[Table]) -> str:
    """Long format: one line per (agent, column) with the numbers behind each cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for t in tables:
        for r in t.rows:
            for c in t.columns:
                cell = r.cells.get(c)
                if cell is None:
                    continue
                g, s = header(c)
                one = cell.ci is None
                w.writerow({
                    "env_id": t.env_id, "env_version": t.env_version, "eps_space": t.eps_space,
                    "norm": t.norm, "agent": r.label, "algo": r.algo, "loss": r.loss,
                    "column": g if not s else f"{g} @{s}", "group": c.group, "name": c.name,
                    "eps": "" if c.eps is None else repr(c.eps),
                    "certificate_kind": t.kinds.get(c.name, "") if c.group != "natural"
                    and c.group != "attack" else "",
                    "n_seeds": cell.n_seeds, "n_episodes": cell.n_episodes,
                    "mean": f"{cell.center:.6g}" if one else "",
                    "std": f"{cell.spread:.6g}" if one else "",
                    "iqm": "" if one else f"{cell.center:.6g}",
                    "ci_low": "" if one else f"{cell.ci[0]:.6g}",
                    "ci_high": "" if one else f"{cell.ci[1]:.6g}",
                    "best": int(cell.best), "text": fmt_cell(cell, c, pm=" +- "),
                })
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
