"""The demo command (quick budget) and the demo agent list."""

from __future__ import annotations

import pytest

from certrl.agent import shipped_agents
from certrl.cli import main
from certrl.commands.demo import DEMO_AGENTS, default_agents
from certrl.records import read_rows
from tests.conftest import has_shipped

pytestmark = pytest.mark.usefixtures("keep_threads")


def test_default_agents_are_the_shipped_demo_agents():
    assert set(default_agents()) == set(DEMO_AGENTS) & set(shipped_agents())


@has_shipped
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| Agent | Natural | PGD" in text and "ACR (CROWN)" in text and "@0.005" in text
    assert "ACR (smoothing)" in text and "probabilistic" in text
    for name in ("certify.jsonl", "attack.jsonl", "table.md", "table.tex", "table.csv",
                 "certified-fraction.png"):
        assert (out / name).exists()
    assert f"figure: {out / 'certified-fraction.png'}" in text
    rows = read_rows(out / "certify.jsonl")
    assert {r["method"] for r in rows} == {"ibp", "crown", "smoothing"}
    results = [str(p) for p in sorted(out.glob("*.jsonl"))]
    for kind in ("certified-fraction", "acr", "iqm"):  # quick attacks are cut at 60 steps
        assert main(["plot", *results, "--kind", kind, "--out", str(out / f"{kind}.pdf")]) == 0
    # re-running resumes: nothing recomputed, same certify rows
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert len(read_rows(out / "certify.jsonl")) == len(rows)


def test_demo_bad_agent_no_output(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--agents", "no-such-agent", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["demo", "--methods", "magic", "--out", str(out)]) == 2
    assert not out.exists()
