"""--out of attack / evaluate / certify: never destroyed, checked before work, resumable."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import certrl
from certrl.certify import rollout
from certrl.cli import main
from certrl.evaluate import evaluate
from certrl.records import check_out, check_writable, read_rows
from tests.conftest import SHIPPED, has_shipped

pytestmark = [has_shipped, pytest.mark.usefixtures("keep_threads")]

EVALUATE = ["evaluate", SHIPPED, "--episodes", "2", "--max-steps", "10"]
ATTACK = ["attack", SHIPPED, "--attack", "fgsm", "--eps", "0.05", "--episodes", "2",
          "--max-steps", "10"]
CERTIFY = ["certify", SHIPPED, "--eps", "0.01", "--method", "ibp", "--episodes", "1",
           "--max-steps", "10", "--no-radius", "--no-progress"]
COMMANDS = {"evaluate": EVALUATE, "attack": ATTACK, "certify": CERTIFY}


def _fails_cleanly(capsys, argv, needle) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------- writability
@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_is_a_folder(tmp_path, capsys, cmd):
    _fails_cleanly(capsys, [*COMMANDS[cmd], "--out", str(tmp_path)], "is a folder")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_below_a_regular_file(tmp_path, capsys, cmd):
    f = tmp_path / "plain.txt"
    f.write_text("keep me\n")
    _fails_cleanly(capsys, [*COMMANDS[cmd], "--out", str(f / "sub" / "r.jsonl")],
                   "is a file, not a folder")
    assert f.read_text() == "keep me\n" and _files(tmp_path) == ["plain.txt"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_where_no_file_can_be_made(capsys, cmd):
    _fails_cleanly(capsys, [*COMMANDS[cmd], "--out", "/proc/certrl-test/r.jsonl"],
                   "cannot write /proc/certrl-test/r.jsonl")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_out_in_an_unwritable_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _fails_cleanly(capsys, [*EVALUATE, "--out", str(ro / "r.jsonl")], "cannot write")
        assert _files(ro) == []
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_binary_out_is_named_and_kept(tmp_path, capsys, cmd):
    out = tmp_path / "image.png"
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 4
    out.write_bytes(data)
    _fails_cleanly(capsys, [*COMMANDS[cmd], "--out", str(out)], f"{out} is a binary file")
    assert out.read_bytes() == data


def test_check_writable_writes_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "r.jsonl"
    assert check_writable(target) == target
    assert _files(tmp_path) == []
    with pytest.raises(ValueError, match="is a folder"):
        check_out(tmp_path, "attack")


# ------------------------------------------------------------- other results
def test_other_kind_is_refused_then_forced(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main([*EVALUATE, "--out", str(out)]) == 0
    before = out.read_bytes()
    _fails_cleanly(capsys, [*ATTACK, "--out", str(out)], "holds evaluate results")
    _fails_cleanly(capsys, [*CERTIFY, "--out", str(out)], "holds evaluate results")
    assert out.read_bytes() == before
    assert main([*ATTACK, "--out", str(out), "--force"]) == 0
    assert {r["source"] for r in read_rows(out)} == {"attack"}


def test_a_non_results_json_file_is_refused(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    out.write_text('{"record": "episode", "return": 1.0}\n')
    _fails_cleanly(capsys, [*EVALUATE, "--out", str(out)], "holds no certrl results")
    assert out.read_text() == '{"record": "episode", "return": 1.0}\n'


@pytest.mark.parametrize("cmd,flag", [("evaluate", ["--seed", "3"]),
                                      ("attack", ["--objective", "margin"]),
                                      ("certify", ["--seed", "3"])])
def test_other_settings_are_refused(tmp_path, capsys, cmd, flag):
    out = tmp_path / "r.jsonl"
    assert main([*COMMANDS[cmd], "--out", str(out)]) == 0
    before = out.read_bytes()
    _fails_cleanly(capsys, [*COMMANDS[cmd], *flag, "--out", str(out)], "other settings")
    assert out.read_bytes() == before


# ------------------------------------------------------------- resume
@pytest.mark.parametrize("cmd", ["evaluate", "attack"])
def test_resume_runs_only_missing_episodes(tmp_path, capsys, cmd):
    out = tmp_path / "r.jsonl"
    argv = [*COMMANDS[cmd], "--out", str(out)]
    assert main(argv) == 0
    full = read_rows(out)
    assert [r["episode"] for r in full] == [0, 1]
    # interrupted after the first episode, in the middle of writing the second
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(lines[0] + b"\n" + lines[1][:40])
    with pytest.warns(UserWarning, match="unterminated"):
        assert main(argv) == 0
    again = read_rows(out)
    assert again == full  # same rows, none twice (deterministic episodes)
    # more episodes later: only the new one is run
    more = [a if a != "2" else "3" for a in argv]
    assert main(more) == 0
    rows = read_rows(out)
    assert rows[:2] == full and [r["episode"] for r in rows] == [0, 1, 2]
    assert capsys.readouterr().out.count("results:") == 3


def test_summary_is_computed_from_the_file(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main([*ATTACK, "--eps", "0.05", "0.1", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert main([*ATTACK, "--eps", "0.05", "0.1", "--out", str(out)]) == 0  # nothing to do
    assert capsys.readouterr().out == first
    assert "eps 0.05: return 10.00 +- 0.00" in first and "eps 0.1: return" in first


# ------------------------------------------------------------- errors
def test_nonfinite_return_min(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    for bad in ("nan", "inf", "-inf"):
        _fails_cleanly(capsys, ["certify", SHIPPED, "--eps", "0.01", "--method",
                                "policy-smoothing", f"--return-min={bad}", "--out", str(out)],
                       "--return-min must be a finite number")
    assert not out.exists()


def test_oserror_on_out_is_a_clean_error(tmp_path, capsys, monkeypatch):
    import certrl.commands.evaluate as ev

    out = tmp_path / "r.jsonl"

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(ev, "run_episodes", disk_full)
    _fails_cleanly(capsys, [*EVALUATE, "--out", str(out)], "No space left on device")

    def elsewhere(*a, **k):  # an OSError about another file is a bug: stays visible
        raise OSError(errno.EIO, "I/O error", "/some/other/file")

    monkeypatch.setattr(ev, "run_episodes", elsewhere)
    with pytest.raises(OSError):
        main([*EVALUATE, "--out", str(out)])


def test_cli_commands_are_a_static_table():
    from certrl import cli
    from certrl.commands import attack, certify, evaluate, table, train

    for name, mod in (("train", train), ("evaluate", evaluate), ("attack", attack),
                      ("certify", certify), ("table", table)):
        assert cli.COMMANDS[name] is mod


# ------------------------------------------------------------- truncation
def test_truncated_marks_episodes_cut_by_max_steps(tmp_path):
    agent = certrl.load(SHIPPED)
    cut = evaluate(agent, 1, max_steps=20)
    assert cut.truncated == [True] and cut.lengths == [20]
    # the env's own TimeLimit (500) ends the episode at the same step: not truncated
    at_limit = evaluate(agent, 1, max_steps=500)
    assert at_limit.lengths == [500] and at_limit.truncated == [False]
    # an episode that terminates early is not truncated either
    fall = evaluate(agent, 1, max_steps=200, attack=lambda x: torch.full_like(x, 3.0))
    assert fall.lengths[0] < 200 and fall.truncated == [False]
    eps = rollout(agent, 1, max_steps=20)[0]
    assert eps.truncated and eps.steps == 20
    assert not rollout(agent, 1)[0].truncated


@pytest.mark.parametrize("cmd", COMMANDS)
def test_episode_rows_carry_truncated(tmp_path, cmd):
    out = tmp_path / "r.jsonl"
    assert main([*COMMANDS[cmd], "--out", str(out)]) == 0
    rows = [r for r in read_rows(out) if r["record"] == "episode"]
    assert rows and all(r["truncated"] is True and r["length"] == 10 for r in rows)
