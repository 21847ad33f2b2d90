"""Verification tables: golden files, LaTeX structure, aggregation, the table CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from certrl.cli import main
from certrl.report import bootstrap_ci, build_tables, load_rows, render

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CERTRL_UPDATE_GOLDEN") == "1"


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synthetic_rows() -> list[dict]:
    """A fixed small set of evaluate / attack / certify rows.

    Two envs: Pong has one agent (one truncated episode); CartPole has two run groups
    of 3 seeds each (smoothing results for 2 of the 3 car seeds only).
    """
    rows = []
    base_cp = {"env_id": "CartPole-v1", "env_version": "v1", "norm": "inf",
               "eps_space": "raw observation"}
    for loss, seeds, shift in (("vanilla", (0, 1, 2), 0.0), ("car", (0, 1, 2), 0.2)):
        for seed in seeds:
            a = {**base_cp, "algo": "dqn", "loss": loss, "seed": seed,
                 "agent_id": _hex(f"{loss}{seed}"), "agent_label": f"runs/{loss}-s{seed}",
                 "run_group": _hex(loss)[:16]}
            for ep in range(3):
                ret = 500.0 - 10 * ep - 5 * seed
                rows.append({**a, "record": "episode", "attack": "none", "eps": 0.0,
                             "episode": ep, "episode_seed": ep, "return": ret})
                for eps in (0.01, 0.05):
                    rows.append({**a, "record": "episode", "attack": "pgd", "eps": eps,
                                 "episode": ep, "episode_seed": ep,
                                 "return": ret * (1 - eps * (10 - 40 * shift)) - seed})
                    for m, kind in (("ibp", "sound"), ("crown", "sound"),
                                    ("smoothing", "probabilistic")):
                        if m == "smoothing" and (loss, seed) == ("car", 2):
                            continue
                        frac = min(1.0, 0.9 - 8 * eps + shift + 0.01 * ep - 0.02 * seed
                                   - (0.3 if m == "ibp" else 0.0))
                        r = {**a, "record": "episode", "source": "certify", "method": m,
                             "eps": eps, "episode": ep, "episode_seed": ep,
                             "certificate_kind": kind, "return": ret, "steps": 100,
                             "certified_steps": round(100 * max(frac, 0.0)),
                             "certified_fraction": round(100 * max(frac, 0.0)) / 100}
                        if m == "smoothing":
                            r.update(n=1000, alpha=0.001, sigma=0.1)
                        rows.append(r)
    at = {"env_id": "ALE/Pong-v5", "env_version": "v5", "norm": "inf",
          "eps_space": "[0,1]-scaled pixels", "algo": "dqn", "loss": "sa-dqn", "seed": 0,
          "agent_id": _hex("pong"), "agent_label": "pong-dqn-sa", "run_group": None}
    for ep in range(3):
        cut = {"truncated": ep == 2}
        rows.append({**at, "record": "episode", "attack": "none", "eps": 0.0, "episode": ep,
                     "episode_seed": ep, "return": 0.0 if ep == 2 else 21.0 - ep, **cut})
        if ep == 2:
            rows.append({**at, "record": "episode", "source": "certify", "method": "crown",
                         "eps": 1 / 255, "episode": ep, "episode_seed": ep, **cut,
                         "certificate_kind": "sound", "return": 0.0, "steps": 50,
                         "certified_steps": 25, "certified_fraction": 0.5})
            continue
        rows.append({**at, "record": "episode", "attack": "pgd", "eps": 1 / 255, "episode": ep,
                     "episode_seed": ep, "return": 19.0 + ep})
        rows.append({**at, "record": "episode", "source": "certify", "method": "crown",
                     "eps": 1 / 255, "episode": ep, "episode_seed": ep,
                     "certificate_kind": "sound", "return": 21.0 - ep, "steps": 50,
                     "certified_steps": 40 + ep, "certified_fraction": (40 + ep) / 50})
    rows.append({**at, "record": "summary", "mean": 20.5})  # summaries are ignored
    return rows


@pytest.fixture
def synthetic_jsonl(tmp_path) -> Path:
    p = tmp_path / "synthetic.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows()))
    return p


@pytest.mark.parametrize("fmt,ext", [("md", "md"), ("latex", "tex"), ("csv", "csv")])
def test_golden(synthetic_jsonl, fmt, ext):
    text = render(build_tables(load_rows([synthetic_jsonl])), fmt)
    gold = GOLDEN / f"table.{ext}"
    if UPDATE or not gold.exists():
        gold.parent.mkdir(exist_ok=True)
        gold.write_text(text)
    assert text == gold.read_text()


def test_table_model_aggregation():
    tables = build_tables(synthetic_rows())
    assert [t.env_id for t in tables] == ["ALE/Pong-v5", "CartPole-v1"]
    pong, cp = tables
    assert "3/255" not in render([pong], "md") and "1/255" in render([pong], "md")
    assert "[0,1]-scaled pixels" in pong.caption() and "v5" in pong.caption()
    # one agent: mean +- std over its complete episodes (the truncated one is excluded)
    row = pong.rows[0]
    nat = [c for c in pong.columns if c.group == "natural"][0]
    assert row.kind == "agent" and row.label.startswith("pong-dqn-sa #")
    assert row.cells[nat].center == pytest.approx(20.5) and row.cells[nat].spread == 0.5
    assert row.cells[nat].n_truncated == 1 and row.cells[nat].n_episodes == 2
    # a run group of three seeds: IQM over seed means and a bootstrap CI around it
    assert [r.kind for r in cp.rows] == ["group", "group"]
    assert "DQN, car; 3 seeds" in cp.rows[0].label
    assert "DQN, vanilla; 3 seeds" in cp.rows[1].label
    assert [r.seeds for r in cp.rows] == [[0, 1, 2], [0, 1, 2]]
    cell = cp.rows[1].cells[nat]
    means = [490 - 5 * s for s in (0, 1, 2)]
    assert cell.n_seeds == 3 and cell.center == pytest.approx(np.mean(means))
    assert cell.ci[0] <= cell.center <= cell.ci[1]
    acr = [c for c in cp.columns if c.group == "acr" and c.name == "crown" and c.eps == 0.01][0]
    assert cp.rows[0].cells[acr].best and not cp.rows[1].cells[acr].best
    # column order: Natural | PGD | ACR (IBP, CROWN, smoothing)
    groups = [(c.group, c.name) for c in cp.columns]
    assert groups[0] == ("natural", "") and groups[1][0] == "attack"
    assert [g for g in groups if g[0] == "acr"][0] == ("acr", "ibp")


def test_bootstrap_ci_is_seeded_and_brackets():
    v = [1.0, 2.0, 3.0, 10.0]
    assert bootstrap_ci(v) == bootstrap_ci(v)
    lo, hi = bootstrap_ci(v)
    assert 1.0 <= lo <= hi <= 10.0


def _balanced(s: str) -> bool:
    depth = 0
    for i, ch in enumerate(s):
        if ch == "{" and (i == 0 or s[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or s[i - 1] != "\\"):
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def test_latex_structure(tmp_path):
    tex = render(build_tables(synthetic_rows()), "latex")
    assert _balanced(tex)
    for t in tex.split(r"\begin{table}")[1:]:
        assert t.index(r"\toprule") < t.index(r"\midrule") < t.index(r"\bottomrule")
        assert t.count(r"\begin{tabular}") == 1 and r"\end{table}" in t and r"\caption{" in t
        body = t[t.index(r"\midrule"):t.index(r"\bottomrule")]
        ncol = t[t.index(r"\begin{tabular}{") + 16:].split("}")[0]
        for line in body.strip().splitlines()[1:]:
            assert line.count("&") == len(ncol) - 1
            assert line.count("$") % 2 == 0
    assert r"\textbf{" in tex and "_" not in tex.replace(r"\_", "").replace(r"\ell_", "")
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                       + tex + "\n\\end{document}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                           cwd=tmp_path, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stdout[-2000:]


def test_table_cli(synthetic_jsonl, tmp_path, capsys):
    assert main(["table", str(synthetic_jsonl)]) == 0
    assert "| Agent | Natural |" in capsys.readouterr().out
    out = tmp_path / "t.tex"
    assert main(["table", str(synthetic_jsonl), "--format", "latex", "--out", str(out)]) == 0
    assert out.read_text().startswith("% certrl")
    assert main(["table", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["table", str(bad)]) == 2
    assert "not a JSON line" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["table", str(empty), "--out", str(tmp_path / "x.md")]) == 2
    assert not (tmp_path / "x.md").exists()


def test_method_labels_kinds_and_order_come_from_the_registry(monkeypatch):
    from certrl.certify import methods

    a = {"env_id": "CartPole-v1", "env_version": "v1", "algo": "dqn", "loss": "vanilla",
         "seed": 0, "agent_id": _hex("a"), "agent_label": "a", "norm": "inf",
         "eps_space": "raw observation"}
    rows = [{**a, "record": "episode", "source": "certify", "method": m, "eps": 0.01,
             "episode": 0, "episode_seed": 0, "return": 1.0, "steps": 10,
             "certified_fraction": 0.5} for m in ("smoothing", "alpha-crown", "novel")]
    md, tex = render(build_tables(rows), "md"), render(build_tables(rows), "latex")
    assert md.index("ACR (alpha-CROWN)") < md.index("ACR (smoothing)") < md.index("ACR (novel)")
    assert r"ACR ($\alpha$-CROWN)" in tex and "ACR (RS)" in tex
    # no certificate_kind in the rows: the registry's kind; unknown methods: "?"
    assert "smoothing (probabilistic" in md and "alpha-CROWN (sound" in md and "novel (?" in md
    monkeypatch.setattr(methods.METHODS["alpha-crown"], "label", "aCROWN")
    assert "ACR (aCROWN)" in render(build_tables(rows), "md")
