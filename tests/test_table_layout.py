"""certrl table layout: selection and order, transposition, LaTeX floats, PPO columns, and a
LaTeX table from the shipped agents that pdflatex compiles in a two-column article."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import pytest

from certrl.cli import main
from certrl.report import Layout, Style, build_tables, iqm, render, select, transpose
from tests.test_table import _balanced, _hex, synthetic_rows

HAS_SHIPPED = pytest.mark.skipif(
    not __import__("certrl.agent", fromlist=["AGENTS_DIR"]).AGENTS_DIR.joinpath(
        "cartpole-dqn-vanilla.pt").exists(), reason="shipped agents not present")
PDFLATEX = shutil.which("pdflatex")
needs_pdflatex = pytest.mark.skipif(
    PDFLATEX is None, reason="pdflatex not installed (apt-get install texlive-latex-base "
                             "texlive-latex-recommended)")


def cartpole():
    return [t for t in build_tables(synthetic_rows()) if t.env_id == "CartPole-v1"][0]


def test_select_keeps_and_orders_methods_eps_attacks_and_kinds():
    t = select([cartpole()], Layout(methods=("crown", "ibp"), eps=(0.05, 0.01)))[0]
    acr = [(c.name, c.eps) for c in t.columns if c.group == "acr"]
    assert acr == [("crown", 0.05), ("crown", 0.01), ("ibp", 0.05), ("ibp", 0.01)]
    assert [c.eps for c in t.columns if c.group == "attack"] == [0.05, 0.01]
    t = select([cartpole()], Layout(columns=("acr", "natural"), eps=(0.01,)))[0]
    assert [c.group for c in t.columns] == ["acr"] * 3 + ["natural"]
    assert "smoothing" in t.caption() and "attacked" not in t.caption()
    t = select([cartpole()], Layout(columns=("natural", "attack"), attacks=("pgd",)))[0]
    assert {c.group for c in t.columns} == {"natural", "attack"}


@pytest.mark.parametrize("layout,needle", [
    (Layout(methods=("alpha-crown",)), "--methods alpha-crown: not in the results"),
    (Layout(eps=(0.3,)), "--eps 0.3: not in the results (they have: 0.01, 0.05)"),
    (Layout(attacks=("mad",)), "--attacks mad"),
    (Layout(columns=("radius",)), "--columns radius: not in the results"),
    (Layout(columns=("bogus",)), "unknown kind"),
])
def test_select_refuses_what_the_results_lack(layout, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        select([cartpole()], layout)


def test_transpose_eps_puts_one_sub_row_per_eps_and_marks_best_per_eps():
    t = transpose([cartpole()], "eps")[0]
    assert t.part_axis == "eps" and all(c.eps is None for c in t.columns)
    assert [(r.label[:12], r.part) for r in t.rows] == [
        ("run 2b2961a4", "0.01"), ("run 2b2961a4", "0.05"),
        ("run 5296c024", "0.01"), ("run 5296c024", "0.05")]
    orig = cartpole()
    crown = [c for c in t.columns if c.group == "acr" and c.name == "crown"][0]
    for r in t.rows:  # the same numbers as the untransposed cell
        col = [c for c in orig.columns if (c.group, c.name, c.eps) ==
               ("acr", "crown", float(r.part))][0]
        src = [x for x in orig.rows if x.label == r.label][0]
        assert r.cells[crown].center == src.cells[col].center
        assert r.cells[crown].best == src.cells[col].best  # best among rows of this eps
    md = render(transpose([orig], "eps"), "md")
    assert "| Agent | eps | Natural | PGD l∞ |" in md
    assert "|  | 0.05 |" in md  # the agent is named on its first sub-row only
    assert md.count("n=k/m") == 1  # notes are the original table's, not counted twice


def test_transpose_methods_and_latex_header():
    t = transpose([cartpole()], "methods")[0]
    assert [r.part for r in t.rows[:3]] == ["ibp", "crown", "smoothing"]
    tex = render([t], "latex")
    # Natural, PGD at 2 eps, ACR at 2 eps (the method is the sub-row)
    assert r"\begin{tabular}{llccccc}" in tex and "Agent & Method & Natural" in tex
    assert " & $\\epsilon$ &  & 0.01 & 0.05" in tex and " & RS & " in tex
    assert _balanced(tex)


def test_latex_float_caption_label_resize_and_compact_cells():
    tables = build_tables(synthetic_rows())
    tex = render(tables, "latex", Style(float_env="table*", caption="My caption",
                                         label="tab:mine", resize=True))
    assert tex.count(r"\begin{table*}[t]") == 2 and tex.count(r"\end{table*}") == 2
    assert r"\label{tab:mine-cartpole-v1}" in tex and r"\label{tab:mine-ale-pong-v5}" in tex
    assert tex.count(r"\caption{My caption}") == 2
    assert tex.count(r"\resizebox{\linewidth}{!}{%") == 2 and "graphicx" in tex
    # IQM 474.3 with CI [468.4, 480.2] (one decimal less, rounded outwards), bold when best
    assert r"\textbf{474.3}\,{\scriptsize[468,481]}" in tex
    assert r"19.5\,{\scriptsize$\pm$0.5}" in tex
    bare = render(tables[:1], "latex", Style(float_env="none"))
    assert r"\begin{table" not in bare and r"\begin{tabular}" in bare
    with pytest.raises(ValueError, match="unknown float"):
        Style(float_env="figure")


def test_csv_keeps_full_precision_and_per_seed_values():
    lines = list(csv.DictReader(io.StringIO(render([cartpole()], "csv"))))
    acr = [x for x in lines if x["group"] == "acr" and x["name"] == "crown"
           and x["eps"] == "0.01" and "car" in x["agent"]][0]
    assert acr["iqm"] == repr(acr and float(acr["iqm"]))
    vals = [float(v) for v in acr["values"].split()]
    assert len(vals) == 3 and iqm(vals) == float(acr["iqm"])


def ppo_rows() -> list[dict]:
    """PPO certify episode rows as certrl certify writes them: a return, no certified
    fraction (no --deviation-tol), the certified action-deviation bound."""
    rows = []
    for name, dev in (("ppo-a", 0.02), ("ppo-b", 0.01)):
        a = {"env_id": "InvertedPendulum-v5", "env_version": "v5", "algo": "ppo",
             "loss": "vanilla", "seed": 0, "agent_id": _hex(name), "agent_label": name,
             "norm": "inf", "eps_space": "running-mean/std normalized observation",
             "source": "certify", "record": "episode", "certificate_kind": "sound"}
        for ep in range(2):
            for m in ("ibp", "crown"):
                rows.append({**a, "method": m, "eps": 0.1, "episode": ep, "episode_seed": ep,
                             "return": 1000.0 - ep, "steps": 1000, "certified_fraction": None,
                             "certified_steps": None,
                             "mean_max_deviation": dev * (2 if m == "ibp" else 1) + ep / 100,
                             "max_max_deviation": 1.0})
    return rows


def test_ppo_certify_rows_give_natural_and_deviation_columns():
    t = build_tables(ppo_rows())[0]
    assert [(c.group, c.name) for c in t.columns] == [
        ("natural", ""), ("deviation", "ibp"), ("deviation", "crown")]
    dev = t.columns[2]
    a, b = t.rows
    assert a.cells[t.columns[0]].center == 999.5  # the certify rollouts' returns
    assert a.cells[dev].center == pytest.approx(0.025) and b.cells[dev].center == 0.015
    assert b.cells[dev].best and not a.cells[dev].best  # lower is better
    md = render([t], "md")
    assert "Deviation (CROWN) l∞ @0.1" in md and "lower is better" in md
    assert "Natural = return of certify's own (unattacked) rollouts;" in md
    cut = ppo_rows()
    for r in cut:
        r["truncated"] = r["episode"] == 1
    md = render(build_tables(cut), "md")
    # the truncated episode is kept in the deviation cells, left out of Natural
    assert "| **1000.0 ± 0.0** †1 | 0.0450 ± 0.0050 ‡1 | 0.0250 ± 0.0050 ‡1 |" in md
    assert "their deviation cover only the steps played" in md


def test_table_cli_layout_flags(tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text("".join(__import__("json").dumps(r) + "\n" for r in synthetic_rows()))
    out = tmp_path / "t.tex"
    assert main(["table", str(p), "--format", "latex", "--methods", "crown", "--eps", "0.05",
                 "--attacks", "pgd", "--columns", "natural", "acr", "--float", "table*",
                 "--caption", "C", "--label", "tab:x", "--resize", "--out", str(out)]) == 0
    tex = out.read_text()
    assert "ACR (CROWN)" in tex and "ACR (IBP)" not in tex and "PGD" not in tex
    assert r"\begin{table*}" in tex and r"\label{tab:x-cartpole-v1}" in tex
    assert main(["table", str(p), "--transpose", "eps", "--columns", "acr"]) == 0
    assert "| Agent | eps | ACR (IBP) l∞ |" in capsys.readouterr().out
    bad = tmp_path / "bad.md"
    assert main(["table", str(p), "--methods", "nope", "--out", str(bad)]) == 2
    assert "--methods nope: not in the results" in capsys.readouterr().err
    assert not bad.exists()


def _compile(tmp_path, tex: str) -> subprocess.CompletedProcess:
    doc = tmp_path / "paper.tex"
    doc.write_text("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n"
                   "\\usepackage{graphicx}\n\\begin{document}\nSome text.\n" + tex
                   + "\n\\end{document}\n")
    return subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", doc.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


@needs_pdflatex
@pytest.mark.parametrize("style,axis", [(Style(), None), (Style(float_env="table*"), "eps"),
                                        (Style(resize=True), "methods")])
def test_synthetic_latex_compiles_in_a_two_column_article(tmp_path, style, axis):
    tables = build_tables(synthetic_rows() + ppo_rows())
    if axis:
        tables = transpose(tables, axis)
    r = _compile(tmp_path, render(tables, "latex", style))
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000


@needs_pdflatex
@HAS_SHIPPED
def test_shipped_agents_latex_table_compiles(tmp_path):
    """certrl certify on two shipped agents (short episodes), then certrl table --format
    latex --float table* --resize: pdflatex compiles it in a two-column article."""
    res = tmp_path / "certify.jsonl"
    for agent in ("cartpole-dqn-vanilla", "cartpole-dqn-radial"):
        assert main(["certify", agent, "--method", "ibp", "crown", "gwc-crown", "--eps",
                     "0.02", "0.05", "--episodes", "1", "--max-steps", "5", "--radius-rtol",
                     "0.5", "--radius-iters", "2", "--no-progress", "--no-state-rows",
                     "--out", str(res)]) == 0
    out = tmp_path / "table.tex"
    assert main(["table", str(res), "--format", "latex", "--float", "table*", "--resize",
                 "--label", "tab:shipped", "--out", str(out)]) == 0
    tex = out.read_text()
    assert "Mean radius (CROWN)" in tex and "GWC (CROWN, heuristic)" in tex
    assert r"$\ell_\infty$" in tex and r"\label{tab:shipped}" in tex
    r = _compile(tmp_path, tex)
    assert r.returncode == 0, r.stdout[-3000:]
