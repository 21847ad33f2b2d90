"""Training telemetry (metrics.csv, TensorBoard), the learning_starts warning and the
evaluate progress bar."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import certrl
from certrl.cli import main
from certrl.commands import train as train_cmd
from certrl.telemetry import BASE_COLUMNS, MetricsLogger, evaluate_for_log

ROOT = Path(certrl.__file__).resolve().parents[1]  # the certrl under test (PYTHONPATH)
# CartPole DQN with the SA hinge, short: updates from step 100, one per 4 steps
TRAIN = ["train", "--env", "CartPole-v1", "--algo", "dqn", "--loss", "sa", "--train-eps",
         "0.01", "--seed", "3", "--threads", "1", "--no-progress", "--log-every", "50",
         "--set", "learning_starts=100", "--set", "train_freq=4", "--set", "gradient_steps=1"]
# columns that depend only on training (not on time or on the telemetry evaluation)
TRAINING_COLUMNS = ("train/episodes", "train/return", "train/exploration_rate", "train/eps",
                    "update/td_loss", "update/sa_hinge", "update/loss")


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


HAVE_TB = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """400 steps with an evaluation (ACR at eps 0.01) every 200 steps, and TensorBoard
    when the package is installed."""
    out = tmp_path_factory.mktemp("tel") / "full"
    tb = ["--tensorboard", str(out / "tb")] if HAVE_TB else []
    n = torch.get_num_threads()
    assert main([*TRAIN, "--steps", "400", "--out", str(out), *tb, "--log-eval-every", "200",
                 "--log-eval-episodes", "1"]) == 0
    torch.set_num_threads(n)
    return out


def test_metrics_csv_has_losses_and_robust_terms(full_run):
    header, rows = read_csv(full_run / "metrics.csv")
    assert header[:len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    for col in ("update/td_loss", "update/sa_hinge", "update/loss", "eval/return", "eval/acr"):
        assert col in header
    assert [int(r["step"]) for r in rows] == list(range(50, 401, 50))
    for r in rows:
        has_update = int(r["step"]) > 100  # first gradient step at step 104
        assert bool(r["update/td_loss"]) == has_update
        assert bool(r["update/sa_hinge"]) == has_update
        assert float(r["time/steps_per_s"]) > 0
    last = rows[-1]
    assert float(last["train/eps"]) == pytest.approx(0.01)  # ramp done at 60% of the run
    assert 0.0 < float(last["train/exploration_rate"]) < 1.0
    evals = [r for r in rows if r["eval/return"]]
    assert [int(r["step"]) for r in evals] == [200, 400]
    for r in evals:
        assert float(r["eval/return"]) >= 1.0
        assert 0.0 <= float(r["eval/acr"]) <= 1.0


def test_tensorboard_events_hold_the_scalars(full_run):
    ea_mod = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                 reason="--tensorboard needs the tensorboard package "
                                        "(extra: tensorboard)")
    acc = ea_mod.EventAccumulator(str(full_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("update/td_loss", "update/sa_hinge", "update/loss", "train/eps",
                "train/exploration_rate", "time/steps_per_s", "eval/return", "eval/acr"):
        assert tag in tags
    _, rows = read_csv(full_run / "metrics.csv")
    want = {int(r["step"]): float(r["update/td_loss"]) for r in rows if r["update/td_loss"]}
    got = {e.step: e.value for e in acc.Scalars("update/td_loss")}
    assert got.keys() == want.keys()
    for s, v in want.items():
        assert math.isclose(got[s], v, rel_tol=1e-6)  # float32 in the event file


class Killed(BaseException):
    """Raised in place of the kill hook's SIGKILL (the in-process version)."""


def _check_resumed(out: Path, full_run: Path) -> None:
    """Rows up to the checkpoint (~step 200) plus a row as a run killed later would have
    logged, then --resume: each step once, the kept rows unchanged, and the training
    columns equal the uninterrupted run's (which also ran evaluations: they do not
    change training)."""
    header, rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [50, 100, 150, 200]
    with open(out / "metrics.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerow({"step": 350, "train/eps": 123.0})
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--threads", "1",
                 "--log-every", "50"]) == 0
    _, resumed = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in resumed] == list(range(50, 401, 50))
    assert resumed[:len(rows)] == rows
    _, full = read_csv(full_run / "metrics.csv")
    for a, b in zip(resumed, full):
        for col in TRAINING_COLUMNS:
            assert a[col] == b[col], (a["step"], col)


def test_resume_appends_without_duplicates(full_run, tmp_path, monkeypatch):
    """The kill hook (after the first checkpoint) raising instead of SIGKILL."""
    def kill(pid, sig):
        raise Killed

    monkeypatch.setattr(train_cmd.os, "kill", kill)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        main([*TRAIN, "--steps", "400", "--checkpoint-every", "200",
              "--kill-after-checkpoint", "1", "--out", str(out)])
    monkeypatch.undo()
    _check_resumed(out, full_run)


@pytest.mark.slow
def test_resume_after_sigkill_appends_without_duplicates(full_run, tmp_path):
    """The same with a real SIGKILL of a separate process."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "certrl.cli", *TRAIN, "--steps", "400",
                           "--checkpoint-every", "200", "--kill-after-checkpoint", "1",
                           "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-500:]
    _check_resumed(out, full_run)


def test_learning_starts_warning(tmp_path, capsys):
    assert main([*TRAIN, "--steps", "80", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "learning_starts (100) >= total steps (80)" in err
    _, rows = read_csv(tmp_path / "a" / "metrics.csv")
    assert all(not r.get("update/td_loss") for r in rows)  # indeed no gradient step
    # updates at multiples of train_freq (4) past 100: none in 102 steps, one in 104
    assert main([*TRAIN, "--steps", "102", "--out", str(tmp_path / "b")]) == 0
    assert "the first update would be at step 104" in capsys.readouterr().err
    assert main([*TRAIN, "--steps", "104", "--out", str(tmp_path / "c")]) == 0
    assert "warning" not in capsys.readouterr().err
    _, rows = read_csv(tmp_path / "c" / "metrics.csv")
    assert rows[-1]["update/td_loss"]  # the final row (step 104) has the one update


def test_metrics_logger_widens_header_and_truncates_on_resume(tmp_path):
    path = tmp_path / "m.csv"
    log = MetricsLogger(path)
    log.log(1, {"train/eps": 0.0})
    log.log(2, {"train/eps": 0.5, "update/x": 1.5})
    log.log(3, {"train/eps": 1.0, "update/x": None})
    header, rows = read_csv(path)
    assert header == [*BASE_COLUMNS, "update/x"]
    assert [(r["step"], r["update/x"]) for r in rows] == [("1", ""), ("2", "1.5"), ("3", "")]
    log = MetricsLogger(path, resume_step=2)
    log.log(3, {"update/y": 7})
    header, rows = read_csv(path)
    assert header == [*BASE_COLUMNS, "update/x", "update/y"]
    assert [(r["step"], r["update/y"]) for r in rows] == [("1", ""), ("2", ""), ("3", "7")]
    MetricsLogger(path)  # a new run starts the file afresh
    assert read_csv(path) == (list(BASE_COLUMNS), [])


def test_evaluate_for_log_acr(frozen_cartpole):
    """The trained vanilla agent: return 500 on the evaluation episode; ACR near 1 at a
    tiny eps (below 1 only where the clean margin is within the bounds' float32 rounding
    slack), falling with eps, 0 far beyond CartPole's state scale, None at eps 0."""
    tiny = evaluate_for_log(frozen_cartpole, 1, 1e-7)
    assert tiny["eval/return"] == 500.0 and tiny["eval/acr"] > 0.95
    mid = evaluate_for_log(frozen_cartpole, 1, 0.01)["eval/acr"]
    assert tiny["eval/acr"] >= mid
    assert evaluate_for_log(frozen_cartpole, 1, 100.0)["eval/acr"] == 0.0
    assert evaluate_for_log(frozen_cartpole, 1, 0.0)["eval/acr"] is None


def test_evaluate_progress_bar(tmp_path, capsys):
    args = ["evaluate", "cartpole-dqn-vanilla", "--episodes", "2", "--max-steps", "20"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "evaluate:" in err and "/2 [" in err  # tqdm: n/total [elapsed<ETA
    assert main([*args, "--out", str(tmp_path / "b.jsonl"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "evaluate:" not in err and "%|" not in err


def test_tensorboard_missing_is_a_clean_error(tmp_path, capsys, monkeypatch):
    """Without the tensorboard package: a one-line error and no run folder."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "80", "--out", str(out), "--tensorboard",
                 str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs the tensorboard package" in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "tb").exists()
