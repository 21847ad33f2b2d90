"""Agent identity: a sha256 of weights, preprocessing, action space and threat model."""

from __future__ import annotations

import re

import pytest

import certrl
from certrl.agent import AGENTS_DIR, shipped_agents
from certrl.cli import main
from certrl.identity import agent_identity, compute_identity
from certrl.io import load_checkpoint, save_checkpoint
from certrl.records import agent_fields, read_rows
from tests.conftest import SHIPPED, has_shipped

pytestmark = [has_shipped, pytest.mark.usefixtures("keep_threads")]


def _variant(tmp_path, name: str, change) -> str:
    """A copy of the shipped agent's checkpoint with ``change(data)`` applied."""
    data = load_checkpoint(AGENTS_DIR / f"{SHIPPED}.pt")
    change(data)
    p = tmp_path / name
    save_checkpoint(data, p)
    return str(p)


def test_identity_is_sha256_and_stable_across_loads(tmp_path):
    a, b = certrl.load(SHIPPED), certrl.load(SHIPPED)
    assert re.fullmatch(r"[0-9a-f]{64}", agent_identity(a))
    assert agent_identity(a) == agent_identity(b)
    copy = _variant(tmp_path, "copy.pt", lambda d: None)
    assert agent_identity(certrl.load(copy)) == agent_identity(a)  # the path is no part of it


def _bump_weight(d):
    d["nets"]["q"]["state_dict"]["head.bias"] = d["nets"]["q"]["state_dict"]["head.bias"] + 1e-6


def _threat(d):
    d["threat_model"] = {**d["threat_model"], "eps": 0.1}


def _preprocessing(d):
    d["preprocessing"] = {**d["preprocessing"], "clip": 5.0}


@pytest.mark.parametrize("change", [_bump_weight, _threat, _preprocessing])
def test_identity_changes_with_what_decides_actions(tmp_path, change):
    base = agent_identity(certrl.load(SHIPPED))
    other = certrl.load(_variant(tmp_path, "v.pt", change))
    assert compute_identity(other) != base


def test_every_shipped_agent_has_its_own_identity():
    ids = {agent_identity(certrl.load(n)) for n in shipped_agents()}
    assert len(ids) == len(shipped_agents())


def test_row_fields_identity_label_and_run_group():
    agent = certrl.load(SHIPPED)
    f = agent_fields(agent, SHIPPED)
    assert f["agent_id"] == agent_identity(agent) and f["agent_label"] == SHIPPED
    assert f["run_group"] == agent.metadata["run_group"]  # recorded when it was trained
    agent.metadata.pop("run_group")
    assert agent_fields(agent, SHIPPED)["run_group"] is None
    agent.metadata["run_group"] = "abc"
    assert agent_fields(agent, SHIPPED)["run_group"] == "abc"


def _q_keys(path):
    return [r for r in read_rows(path) if r.get("record") == "episode"]


def test_certify_new_weights_at_same_path_are_not_already_in(tmp_path, capsys):
    """Issue 9 item 3: results were keyed by the checkpoint path string."""
    ckpt = tmp_path / "agent.pt"
    _variant(tmp_path, "agent.pt", lambda d: None)
    out = tmp_path / "c.jsonl"
    args = ["certify", str(ckpt), "--eps", "0.01", "--method", "ibp", "--episodes", "1",
            "--max-steps", "5", "--no-radius", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    _variant(tmp_path, "agent.pt", _bump_weight)  # new weights, same path
    assert main(args) == 0
    assert "1 units certified, 0 already in" in capsys.readouterr().out
    rows = _q_keys(out)
    assert len(rows) == 2 and rows[0]["agent_id"] != rows[1]["agent_id"]
    assert all(r["agent_label"] == str(ckpt) for r in rows)
