"""certrl audit: honest results pass; each kind of tampering with one row is caught.

The results are made by the CLI on a copy of the shipped CartPole agent (short
episodes); each tampering test copies them, edits one row and expects exit 1
with a MISMATCH verdict naming that row (or the agent).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from certrl.agent import AGENTS_DIR
from certrl.cli import main

from .conftest import SHIPPED, has_shipped

pytestmark = has_shipped

COMMON = ["--episodes", "2", "--max-steps", "12"]


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """Results of a copy of the shipped agent: certify (crown, GWC, smoothing, policy
    smoothing), attack, evaluate."""
    d = tmp_path_factory.mktemp("audit")
    ckpt = d / "agent.pt"
    shutil.copy(AGENTS_DIR / f"{SHIPPED}.pt", ckpt)
    runs = [["certify", str(ckpt), "--eps", "0.005", "0.02", "--method", "crown", "gwc-ibp",
             "--out", str(d / "certify.jsonl"), "--no-progress"],
            ["certify", str(ckpt), "--eps", "0.01", "--method", "policy-smoothing",
             "--ps-episodes", "4", "--out", str(d / "ps.jsonl"), "--no-progress"],
            ["certify", str(ckpt), "--eps", "0.01", "--method", "smoothing", "--n", "100",
             "--n0", "20", "--out", str(d / "smooth.jsonl"), "--no-progress"],
            ["attack", str(ckpt), "--eps", "0.05", "--steps", "3",
             "--out", str(d / "attack.jsonl")],
            ["evaluate", str(ckpt), "--out", str(d / "evaluate.jsonl")]]
    for argv in runs:
        assert main([*argv, *COMMON, "--threads", "1"]) == 0
    return d


def copy_results(honest: Path, dest: Path) -> Path:
    """The honest results and checkpoint copied to ``dest``, the rows' labels naming the
    copied checkpoint (as if the commands had been run there)."""
    shutil.copy(honest / "agent.pt", dest / "agent.pt")
    for p in honest.glob("*.jsonl"):
        rows = rows_of(p)
        for r in rows:
            r["agent_label"] = r["checkpoint"] = str(dest / "agent.pt")
        write_rows(dest / p.name, rows)
    return dest


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def audit(capsys, *argv) -> tuple[int, str]:
    rc = main(["audit", *map(str, argv), "--no-progress", "--threads", "1"])
    return rc, capsys.readouterr().out


def tamper(path: Path, pick, edit) -> int:
    """Edit the first row where ``pick(row)``; returns its 1-based line number."""
    rows = rows_of(path)
    i = next(i for i, r in enumerate(rows) if pick(r))
    edit(rows[i])
    write_rows(path, rows)
    return i + 1


def mismatch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("MISMATCH")]


def certified_state(r: dict) -> bool:
    return r.get("record") == "state" and r.get("certified") is True


# ----------------------------------------------------------------- honest
def test_honest_results_pass(honest, capsys, one_thread):
    files = sorted(honest.glob("*.jsonl"))
    rc, out = audit(capsys, *files, "--all")
    assert rc == 0, out
    assert not mismatch_lines(out)
    assert "audit: PASS" in out.splitlines()[-1]
    assert "OK       agent #" in out
    for kind in ("certify state crown", "certify episode crown", "certify state smoothing",
                 "certify episode smoothing", "certify episode gwc-ibp",
                 "certify trajectory_bound policy-smoothing", "attack episode pgd",
                 "evaluate episode"):
        assert any(line.startswith("OK") and kind in line for line in out.splitlines()), kind
    # every row of the results was checked, and every one was re-run (--all)
    total = sum(len(rows_of(p)) for p in files)
    assert f"{total} rows, {total} field-checked, {total} re-run, 0 mismatches" in out


def test_sample_is_seeded_and_sized(honest, capsys, one_thread):
    f = honest / "certify.jsonl"
    rc, out = audit(capsys, f, "--sample", "3", "--seed", "5")
    rc2, out2 = audit(capsys, f, "--sample", "3", "--seed", "5")
    assert rc == rc2 == 0
    replayed = [line for line in out.splitlines() if "reproduced" in line]
    assert len(replayed) == 6  # 3 state rows + 3 episode rows
    assert out == out2


# -------------------------------------------------------------- tampering
def test_flipped_certified_state_is_caught(honest, tmp_path, capsys, one_thread):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "certify.jsonl", certified_state, lambda r: r.update(certified=False))
    rc, out = audit(capsys, d / "certify.jsonl", "--sample", "0")
    assert rc == 1
    assert any(f"certify.jsonl:{line} " in m for m in mismatch_lines(out)), out


def test_consistent_flip_is_caught_by_recertification(honest, tmp_path, capsys, one_thread):
    """A careful edit (flag, margin and the episode's counts together) passes the cheap
    checks; re-certifying the row catches it."""
    d = copy_results(honest, tmp_path)
    f = d / "certify.jsonl"
    rows = rows_of(f)
    i = next(i for i, r in enumerate(rows) if certified_state(r))
    s = rows[i]
    s.update(certified=False, margin_lower=-s["margin_lower"],
             margin_lower_all=[-m if m != "inf" else m for m in s["margin_lower_all"]])
    unit = next(r for r in rows[i:] if r["record"] == "episode")
    unit.update(certified_steps=unit["certified_steps"] - 1,
                certified_fraction=(unit["certified_steps"] - 1) / unit["steps"])
    write_rows(f, rows)
    rc, out = audit(capsys, f, "--sample", "0")
    assert rc == 0, "the cheap checks alone cannot see a consistent edit"
    rc, out = audit(capsys, f, "--all")
    assert rc == 1
    bad = [m for m in mismatch_lines(out) if f"certify.jsonl:{i + 1} " in m]
    assert bad and "certified: recorded False, re-run True" in bad[0], out


def test_edited_margin_is_caught(honest, tmp_path, capsys, one_thread):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "certify.jsonl", certified_state,
                  lambda r: r.update(margin_lower=r["margin_lower"] * 1.5))
    rc, out = audit(capsys, d / "certify.jsonl", "--all")
    assert rc == 1
    bad = [m for m in mismatch_lines(out) if f"certify.jsonl:{line} " in m]
    assert bad and "margin_lower: recorded" in bad[0], out


def test_edited_radius_is_caught(honest, tmp_path, capsys, one_thread):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "certify.jsonl", certified_state,
                  lambda r: r.update(radius=r["radius"] * 1.2))
    # not sampled (--sample 0): the episode's mean radius no longer matches its state
    # rows, so every state row of that unit is re-certified and the edited one is named
    rc, out = audit(capsys, d / "certify.jsonl", "--sample", "0")
    assert rc == 1
    bad = [m for m in mismatch_lines(out) if f"certify.jsonl:{line} " in m]
    assert bad and "radius: recorded" in bad[0], out


def test_edited_smoothing_state_is_caught(honest, tmp_path, capsys, one_thread):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "smooth.jsonl", lambda r: r.get("record") == "state",
                  lambda r: r.update(pA_lower=min(1.0, r["pA_lower"] + 0.01)))
    rc, out = audit(capsys, d / "smooth.jsonl", "--all")
    assert rc == 1
    assert any(f"smooth.jsonl:{line} " in m and "pA_lower" in m for m in mismatch_lines(out))


@pytest.mark.parametrize("name,key,method", [
    ("attack.jsonl", "return", None), ("evaluate.jsonl", "return", None),
    ("certify.jsonl", "return", "crown"), ("certify.jsonl", "gwc_return", "gwc-ibp"),
    ("ps.jsonl", "certified_return", "policy-smoothing")])
def test_edited_return_is_caught(honest, tmp_path, capsys, one_thread, name, key, method):
    d = copy_results(honest, tmp_path)
    line = tamper(d / name, lambda r: r.get(key) is not None and r.get("method") == method,
                  lambda r: r.update({key: r[key] - 1.0}))
    rc, out = audit(capsys, d / name, "--all")
    assert rc == 1
    bad = [m for m in mismatch_lines(out) if f"{name}:{line} " in m]
    assert bad and f"{key}: recorded" in bad[0], out


def test_swapped_weights_are_caught(honest, tmp_path, capsys, one_thread):
    """Other weights at the same path: the identity hash no longer matches."""
    d = copy_results(honest, tmp_path)
    shutil.copy(AGENTS_DIR / "cartpole-dqn-sa.pt", d / "agent.pt")
    aid = rows_of(d / "attack.jsonl")[0]["agent_id"]
    rc, out = audit(capsys, d / "attack.jsonl", d / "certify.jsonl")
    assert rc == 1
    assert any(m.startswith(f"MISMATCH agent #{aid[:8]}") and "weights" in m
               for m in mismatch_lines(out)), out
    assert "rows of mismatched agents not checked" in out.splitlines()[-1]


@pytest.mark.parametrize("edit", [
    lambda r: r["threat_model"].update(eps=0.1),
    lambda r: r["threat_model"].update(scale=[1.0, 1.0, 1.0, 1.0]),
    lambda r: r.update(norm="2"),
    lambda r: r.update(eps_space="[0,1]-scaled pixels"),
])
def test_edited_threat_model_is_caught(honest, tmp_path, capsys, one_thread, edit):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "attack.jsonl", lambda r: r.get("record") == "episode", edit)
    rc, out = audit(capsys, d / "attack.jsonl", "--sample", "0")
    assert rc == 1
    assert any(f"attack.jsonl:{line} " in m for m in mismatch_lines(out)), out


def test_edited_certify_threat_model_is_caught(honest, tmp_path, capsys, one_thread):
    d = copy_results(honest, tmp_path)
    line = tamper(d / "certify.jsonl", lambda r: r.get("record") == "episode",
                  lambda r: r["threat_model"].update(norm="2"))
    rc, out = audit(capsys, d / "certify.jsonl", "--sample", "0")
    assert rc == 1
    assert any(f"certify.jsonl:{line} " in m and "threat_model" in m
               for m in mismatch_lines(out)), out


# ------------------------------------------------------- finding checkpoints
def test_agent_found_under_the_recorded_eps_scale(tmp_path, capsys, one_thread):
    """Results made with --eps-scale ref hash the scaled threat model: audit finds the
    agent under the scale the rows record, and checks that scale."""
    f = tmp_path / "attack.jsonl"
    assert main(["attack", SHIPPED, "--eps", "0.1", "--steps", "2", "--eps-scale", "ref",
                 "--out", str(f), *COMMON, "--threads", "1"]) == 0
    capsys.readouterr()
    rc, out = audit(capsys, f, "--all")
    assert rc == 0, out
    assert "checkpoint hashes to the recorded agent_id under --eps-scale" in out
    rows = rows_of(f)
    rows[0]["threat_model"]["scale"] = [1.0, 1.0, 1.0, 1.0]
    write_rows(f, rows)
    rc, out = audit(capsys, f, "--sample", "0")
    assert rc == 1
    assert any("attack.jsonl:1 " in m and "threat_model" in m for m in mismatch_lines(out))


def test_moved_checkpoint_needs_agent_override(honest, tmp_path, capsys, one_thread):
    moved = tmp_path / "moved.pt"
    shutil.copy(honest / "agent.pt", moved)
    f = tmp_path / "attack.jsonl"
    rows = rows_of(honest / "attack.jsonl")
    for r in rows:
        r["agent_label"] = r["checkpoint"] = str(tmp_path / "gone.pt")
    write_rows(f, rows)
    rc = main(["audit", str(f), "--no-progress"])
    assert rc == 2
    assert "--agent" in capsys.readouterr().err
    rc, out = audit(capsys, f, "--agent", f"{rows[0]['agent_id'][:10]}={moved}")
    assert rc == 0, out


@pytest.mark.parametrize("argv", [
    ["missing.jsonl"],
    ["{attack}", "--agent", "nohex"],
    ["{attack}", "--agent", "abcdef0=x.pt"],
    ["{attack}", "--sample", "-1"],
])
def test_usage_errors_exit_2(honest, capsys, argv):
    argv = [a.format(attack=honest / "attack.jsonl") for a in argv]
    assert main(["audit", *argv, "--no-progress"]) == 2
    assert "certrl audit: error:" in capsys.readouterr().err


def test_given_observations_are_reported_not_replayable(tmp_path, capsys, one_thread):
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((3, 4), dtype=np.float32))
    out_f = tmp_path / "obs.jsonl"
    assert main(["certify", SHIPPED, "--obs", str(obs), "--eps", "0.01", "--method", "ibp",
                 "--out", str(out_f), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    rc, out = audit(capsys, out_f, "--all")
    assert rc == 0
    assert "NOT REPLAYABLE 3 rows  certify state: observations given with --obs" in out
    assert "certify batch: observations given with --obs" in out
    assert "4 not replayable" in out.splitlines()[-1]


def test_removed_episode_is_reported_as_a_gap(honest, tmp_path, capsys, one_thread):
    """Dropping episode 0 of the attack leaves a hole: a GAP line, a failure with --strict."""
    d = copy_results(honest, tmp_path)
    f = d / "attack.jsonl"
    write_rows(f, [r for r in rows_of(f) if r["episode"] != 0])
    rc, out = audit(capsys, f, "--sample", "0")
    assert rc == 0
    gaps = [line for line in out.splitlines() if line.startswith("GAP")]
    assert len(gaps) == 1 and "attack pgd eps=0.05" in gaps[0] and "0 missing" in gaps[0]
    assert "1 requests with missing episodes" in out.splitlines()[-1]
    rc, out = audit(capsys, f, "--sample", "0", "--strict")
    assert rc == 1 and "audit: FAIL" in out


def test_strict_fails_on_rows_that_cannot_be_rerun(tmp_path, capsys, one_thread):
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((2, 4), dtype=np.float32))
    out_f = tmp_path / "obs.jsonl"
    assert main(["certify", SHIPPED, "--obs", str(obs), "--eps", "0.01", "--method", "ibp",
                 "--out", str(out_f), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert audit(capsys, out_f)[0] == 0
    assert audit(capsys, out_f, "--strict")[0] == 1


def test_evaluate_rows_under_custom_scale_are_matched(tmp_path, capsys, one_thread):
    """Evaluate rows carry no threat_model: the scale is read back from eps_space."""
    f = tmp_path / "evaluate.jsonl"
    assert main(["evaluate", SHIPPED, "--eps-scale", "0.5,0.25,1,2", "--out", str(f),
                 *COMMON, "--threads", "1"]) == 0
    capsys.readouterr()
    rc, out = audit(capsys, f, "--all")
    assert rc == 0, out
    assert "under --eps-scale (0.5, 0.25, 1.0, 2.0)" in out
