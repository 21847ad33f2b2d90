"""The shipped noise-trained agent (cartpole-dqn-noise): its sigma, listing and certify."""

import json

import pytest

import certrl
from certrl.agent import AGENTS_DIR, shipped_agents
from certrl.cli import main
from certrl.smoothed import agent_smoothing_sigma

NAME = "cartpole-dqn-noise"
pytestmark = pytest.mark.skipif(NAME not in shipped_agents(), reason="not shipped")


def _side() -> dict:
    return json.loads((AGENTS_DIR / f"{NAME}.json").read_text())


def test_sidecar_records_sigma_command_seed_and_both_selection_rules():
    side, agent = _side(), certrl.load(NAME)
    assert side["smoothing_sigma"] == agent_smoothing_sigma(agent) > 0
    assert agent.loss_name == "noise" and side["loss"] == "noise"
    assert side["command"].startswith("certrl train ") and f"--seed {side['seed']}" in \
        side["command"] and f"--sigma {side['smoothing_sigma']:g}" in side["command"]
    assert side["checkpoint_selection"] == agent.metadata["selection"]
    assert "target score T" in side["selection"]
    assert side["targets"]["meets_done_when"] == (side["targets"]["T"] >= 1)


def test_agents_lists_it(capsys, tmp_path):
    assert main(["agents", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert NAME in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["smoothing_sigma"] for r in rows if r["name"] == NAME] == [_side()[
        "smoothing_sigma"]]


def test_certify_smoothing_uses_its_sigma(tmp_path):
    out = tmp_path / "c.jsonl"
    assert main(["certify", NAME, "--method", "smoothing", "--eps", "0.01", "--episodes", "1",
                 "--max-steps", "2", "--n0", "10", "--n", "20", "--no-progress",
                 "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["settings"]["smoothing"]["sigma"] for r in rows if r.get("settings")} == {
        _side()["smoothing_sigma"]}
