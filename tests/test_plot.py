"""certrl plot: every figure kind from real certify / attack / evaluate rows, image content,
byte determinism, one series per agent and threat model, and bad input (exit 2, no file)."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from certrl.cli import main
from certrl.records import read_rows
from certrl.report import build_tables, load_rows
from certrl.report.figures import (
    KINDS,
    OKABE_ITO,
    certified_fraction_panels,
    iqm_panels,
)
from tests.conftest import has_shipped

pytestmark = [pytest.mark.usefixtures("keep_threads"), has_shipped]

AGENT = "cartpole-dqn-vanilla"


def cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list:
    """Real rows of the shipped vanilla agent: certify (IBP, CROWN; state rows with radii),
    attack (PGD at eps where episodes end before 500 steps) and evaluate."""
    d = tmp_path_factory.mktemp("plot")
    assert cli("certify", AGENT, "--eps", "0.005", "0.01", "--method", "ibp", "crown",
               "--episodes", 2, "--max-steps", 30, "--out", d / "c.jsonl", "--no-progress",
               "--threads", 1) == 0
    assert cli("attack", AGENT, "--eps", "0.1", "0.2", "--episodes", 2,
               "--out", d / "a.jsonl", "--threads", 1) == 0
    assert cli("evaluate", AGENT, "--episodes", 2, "--out", d / "e.jsonl",
               "--threads", 1) == 0
    return [d / "c.jsonl", d / "a.jsonl", d / "e.jsonl"]


@pytest.fixture(scope="module")
def seed_group(tmp_path_factory) -> list:
    """Two briefly trained DQN seeds (one run_group), certified and attacked: a real group."""
    d = tmp_path_factory.mktemp("group")
    files = []
    for seed in (0, 1):
        t = d / f"seed{seed}"
        assert cli("train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", 300, "--seed",
                   seed, "--out", t, "--no-progress", "--threads", 1) == 0
        assert cli("certify", t, "--eps", "0.01", "0.02", "--method", "ibp", "--episodes", 2,
                   "--out", t / "c.jsonl", "--no-progress", "--threads", 1) == 0
        assert cli("attack", t, "--eps", "0.01", "0.02", "--episodes", 2,
                   "--out", t / "a.jsonl", "--threads", 1) == 0
        files += [t / "c.jsonl", t / "a.jsonl"]
    return files


def hex_rgb(h: str) -> np.ndarray:
    return np.array([int(h[i:i + 2], 16) for i in (1, 3, 5)])


def pdf_text(data: bytes) -> str:
    """The ASCII text drawn in a matplotlib PDF (TrueType fonts: 2-byte codes in TJ
    strings; ligatures such as 'fi' and non-ASCII glyphs come out as other codes)."""
    out = []
    for s in re.findall(rb"stream\r?\n(.*?)endstream", data, re.S):
        try:
            body = zlib.decompress(s)
        except zlib.error:
            continue
        for arr in re.findall(rb"\[((?:\\.|[^\\\]])*)\]\s*TJ", body, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", arr, re.S)
            text = re.sub(rb"\\(.)", rb"\1", b"".join(parts)).replace(b"\x00", b"")
            out.append(text.decode("latin-1"))
    return " ".join(out)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_png_is_nontrivial(kind, results, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / f"{kind}.png"
    assert cli("plot", *results, "--kind", kind, "--out", out) == 0
    assert f"figure: {out}" in capsys.readouterr().out
    img = matplotlib.image.imread(out)[..., :3]
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 0.05
    colours = np.unique((img * 255).round().astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100
    # the first series colour is drawn (curves / points, not just empty axes)
    assert (np.abs(colours.astype(int) - hex_rgb(OKABE_ITO[0])).sum(axis=1) <= 3).any()


def test_pdf_is_vector_with_labels_and_units(results, tmp_path):
    out = tmp_path / "cf.pdf"
    assert cli("plot", *results, "--kind", "certified-fraction", "--out", out) == 0
    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 5000
    assert b"/Subtype /Image" not in data  # lines and text, no raster
    text = pdf_text(data)
    for words in ("fraction of states (radius >= eps)", "perturbation radius eps",
                  "raw observation units", "IBP (sound)", "CROWN (sound)", AGENT):
        assert words in text, words


@pytest.mark.parametrize("ext", ["png", "pdf"])
def test_same_rows_same_bytes(results, tmp_path, ext):
    for kind in ("certified-fraction", "iqm"):
        a, b = tmp_path / f"a-{kind}.{ext}", tmp_path / f"b-{kind}.{ext}"
        assert cli("plot", *results, "--kind", kind, "--out", a) == 0
        assert cli("plot", *reversed(results), "--kind", kind, "--out", b) == 0
        assert a.read_bytes() == b.read_bytes()


def test_fraction_curve_is_the_radius_distribution(results):
    """The curve is the share of states with radius >= eps, and at the certified eps it
    agrees with the rows' certified flags (a state certified at eps has radius >= eps)."""
    rows = load_rows(results)
    (panel,) = certified_fraction_panels(rows)
    assert {s.method for s in panel.series} == {"ibp", "crown"}
    states = [r for r in rows if r.get("record") == "state"]
    for s in panel.series:
        mine = [r for r in states if r["method"] == s.method]
        radii = {(r["episode"], r["step"]): r["radius"] for r in mine}
        for e, flag in zip(*s.marks):
            at = [r["certified"] for r in mine if r["eps"] == e]
            assert flag == pytest.approx(np.mean(at))
            j = int(np.argmin(np.abs(s.x - e)))
            expect = np.mean([v >= s.x[j] for v in radii.values()])
            assert s.y[j] == pytest.approx(expect)
        assert np.all(np.diff(s.y[1:]) <= 0)  # non-increasing in eps


def test_agents_and_threat_models_are_never_merged(results, tmp_path):
    """A second agent (CAR) and an l2 attack each get their own series."""
    car = tmp_path / "car.jsonl"
    l2 = tmp_path / "l2.jsonl"
    assert cli("certify", "cartpole-dqn-car", "--eps", "0.005", "--method", "crown",
               "--episodes", 1, "--max-steps", 20, "--out", car, "--no-progress") == 0
    assert cli("attack", AGENT, "--norm", "2", "--eps", "0.2", "--episodes", 1,
               "--out", l2) == 0
    rows = load_rows([*results, car, l2])
    (panel,) = certified_fraction_panels(rows)
    labels = [s.label for s in panel.series]
    assert len(labels) == 3 and len(set(labels)) == 3
    assert sum("cartpole-dqn-car" in x for x in labels) == 1
    assert all("ℓ∞" in x for x in labels)
    out = tmp_path / "attack.png"
    assert cli("plot", *results, l2, "--kind", "attack", "--out", out) == 0
    from certrl.report.figures import curve_panels

    (ap,) = curve_panels(build_tables(rows), "attack")
    attack = [s.label for s in ap.series if not s.dotted]
    assert sum("ℓ₂" in x for x in attack) == 1
    assert sum("ℓ∞" in x for x in attack) == 1


def test_seed_group_shows_iqm_with_bootstrap_ci(seed_group, tmp_path):
    rows = load_rows(seed_group)
    tables = build_tables(rows)
    (row,) = tables[0].rows
    assert row.kind == "group" and len(row.seeds) == 2
    panels = iqm_panels(tables, None)
    assert panels and all(s.lo is not None for p in panels for s in p.series)
    for p in panels:  # the interval is the table cell's CI (one IQM / bootstrap code)
        col = next(c for c in tables[0].columns if p.title.replace("\n", " ").startswith(
            f"CartPole-v1: {_title(c)}"))
        assert (p.series[0].lo[0], p.series[0].hi[0]) == row.cells[col].ci
    for kind in KINDS:
        assert cli("plot", *seed_group, "--kind", kind, "--out", tmp_path / f"{kind}.pdf") == 0


def _title(c):
    from certrl.report.figures import column_title

    return column_title(c)


def test_bad_input_exit_2_and_no_file(results, tmp_path, capsys):
    cert, attack = results[0], results[1]
    out = tmp_path / "fig.png"
    assert cli("plot", cert, "--kind", "radar", "--out", out) == 2
    assert cli("plot", cert, "--kind", "acr", "--out", tmp_path / "fig.svg") == 2
    assert "unknown figure extension .svg" in capsys.readouterr().err
    assert cli("plot", cert, "--kind", "attack", "--out", out) == 2  # no attack rows
    assert "no results to plot as attack" in capsys.readouterr().err
    assert cli("plot", attack, "--kind", "certified-fraction", "--out", out) == 2
    assert "no certify state rows" in capsys.readouterr().err
    assert cli("plot", cert, "--kind", "iqm", "--eps", "0.3", "--out", out) == 2
    assert "no column at eps 0.3" in capsys.readouterr().err
    assert cli("plot", tmp_path / "missing.jsonl", "--kind", "acr", "--out", out) == 2
    assert list(tmp_path.iterdir()) == []  # no figure, no temp file
    out.write_bytes(b"keep")
    assert cli("plot", cert, "--kind", "acr", "--out", out) == 2  # exists: needs --force
    assert out.read_bytes() == b"keep"
    assert cli("plot", cert, "--kind", "acr", "--out", out, "--force") == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_rows_are_read_not_guessed(results, tmp_path):
    """Heuristic (GWC) state rows are no certificates: alone they give no figure."""
    gwc = tmp_path / "gwc.jsonl"
    assert cli("certify", AGENT, "--eps", "0.01", "--method", "gwc-ibp", "--episodes", 1,
               "--max-steps", 10, "--out", gwc, "--no-progress") == 0
    assert all(r.get("certificate_kind") == "heuristic" for r in read_rows(gwc))
    assert cli("plot", gwc, "--kind", "certified-fraction", "--out", tmp_path / "g.png") == 2
    assert not (tmp_path / "g.png").exists()
