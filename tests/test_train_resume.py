"""certrl train: --resume after a real SIGKILL is bit-identical to the uninterrupted run;
run_group; one-line errors that leave nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import certrl
from certrl.cli import main
from certrl.io import load_checkpoint

ROOT = Path(certrl.__file__).resolve().parents[1]  # the certrl under test (PYTHONPATH)

CASES = {
    "dqn-cartpole": ["--env", "CartPole-v1", "--algo", "dqn", "--steps", "2000",
                     "--checkpoint-every", "250", "--set", "learning_starts=500",
                     "--set", "train_freq=64", "--set", "gradient_steps=16"],
    "ppo-cartpole": ["--env", "CartPole-v1", "--algo", "ppo", "--steps", "4096",
                     "--checkpoint-every", "512"],
    "ppo-invertedpendulum": ["--env", "InvertedPendulum-v5", "--algo", "ppo", "--steps", "3072",
                             "--checkpoint-every", "256", "--set", "num_steps=64",
                             "--set", "num_minibatches=4", "--set", "update_epochs=2"],
}
COMMON = ["--seed", "1", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run of each case (trained in-process once per module)."""
    runs: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in runs:
            n = torch.get_num_threads()
            out = tmp_path_factory.mktemp(case) / "full"
            assert main(["train", *CASES[case], *COMMON, "--out", str(out)]) == 0
            torch.set_num_threads(n)
            runs[case] = out
        return runs[case]
    return get


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "certrl.cli", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after_first_checkpoint(args: list[str], out: Path, timeout: float = 60) -> int:
    """Start a run, SIGKILL it as soon as its first latest.pt exists; the step it had."""
    proc = _spawn([*args, "--out", str(out)])
    latest = out / "checkpoints" / "latest.pt"
    t0 = time.time()
    try:
        while not latest.exists():
            if proc.poll() is not None:
                pytest.fail(f"run ended (rc {proc.returncode}) before its first checkpoint: "
                            f"{proc.stderr.read()[-500:]}")
            if time.time() - t0 > timeout:
                pytest.fail("no checkpoint within the timeout")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "agent.pt").exists()
    return int(load_checkpoint(latest)["train_state"]["global_step"])


def _weights(run: Path) -> dict:
    data = load_checkpoint(run / "agent.pt")
    out = {f"{k}.{n}": t for k, e in data["nets"].items() for n, t in e["state_dict"].items()}
    if data["obs_rms"] is not None:
        out["obs_rms.mean"] = torch.tensor(data["obs_rms"]["mean"], dtype=torch.float64)
        out["obs_rms.var"] = torch.tensor(data["obs_rms"]["var"], dtype=torch.float64)
        out["obs_rms.count"] = torch.tensor(data["obs_rms"]["count"], dtype=torch.float64)
    return out


def _episodes(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    return [(r["step"], r["return"], r["length"]) for r in rows if r["record"] == "episode"]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run: {differ}"
    assert _episodes(a) == _episodes(b)
    summary = json.loads((b / "train.jsonl").read_text().splitlines()[-1])
    assert summary["resume"] == {"exact": True, "caveats": []}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_sigkill_is_bit_identical(case, tmp_path, uninterrupted):
    args = [*CASES[case], *COMMON]
    full, killed = uninterrupted(case), tmp_path / "killed"
    total = int(args[args.index("--steps") + 1])
    step = _kill_after_first_checkpoint(args, killed)
    assert 0 < step < total
    assert main(["train", "--out", str(killed), "--resume", "--threads", "1",
                 "--no-progress"]) == 0
    _assert_same_run(full, killed)
    if case.startswith("ppo-inverted"):
        assert _weights(full)["obs_rms.count"] > 0  # normalization stats were compared too


def test_resume_twice_through_the_kill_hook(tmp_path, uninterrupted):
    """Killed after its 2nd checkpoint, resumed, killed again, resumed: still identical."""
    args = [*CASES["dqn-cartpole"], *COMMON]
    full, run = uninterrupted("dqn-cartpole"), tmp_path / "run"
    steps = []
    for extra in (args + ["--kill-after-checkpoint", "2"],
                  ["--resume", "--threads", "1", "--no-progress", "--kill-after-checkpoint", "1"]):
        proc = _spawn([*extra, "--out", str(run)])
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, err[-500:]
        steps.append(load_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]
                     ["global_step"])
    assert 0 < steps[0] < steps[1] < 2000
    assert main(["train", "--out", str(run), "--resume", "--threads", "1",
                 "--no-progress"]) == 0
    _assert_same_run(full, run)
    cmd = json.loads((run / "command.json").read_text())
    assert cmd["argv"][:2] == ["certrl", "train"] and len(cmd["resumes"]) == 2


# --------------------------------------------------------------------- run_group
TINY = ["--env", "CartPole-v1", "--algo", "dqn", "--steps", "60", "--no-progress",
        "--set", "learning_starts=1000"]


def _group(tmp_path: Path, name: str, *extra: str) -> str:
    out = tmp_path / name
    assert main(["train", *TINY, *extra, "--out", str(out)]) == 0
    group = load_checkpoint(out / "agent.pt")["metadata"]["run_group"]
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["metadata"]["run_group"] == group
    assert json.loads((out / "train.jsonl").read_text().splitlines()[-1])["run_group"] == group
    return group


def test_run_group_ignores_seed_threads_out_only(tmp_path):
    base = _group(tmp_path, "a", "--seed", "0")
    assert len(base) == 64 and int(base, 16) >= 0
    assert _group(tmp_path, "b", "--seed", "7", "--threads", "2") == base
    assert _group(tmp_path, "c", "--seed", "0", "--checkpoint-every", "7") == base
    others = {
        _group(tmp_path, "lr", "--set", "lr=5e-4"),
        _group(tmp_path, "hidden", "--set", "hidden=32,32"),
        _group(tmp_path, "threat", "--set", 'threat={"eps": 0.01}'),
        _group(tmp_path, "loss", "--loss", "car", "--train-eps", "0.01"),
        _group(tmp_path, "loss2", "--loss", "car", "--train-eps", "0.02"),
    }
    out = tmp_path / "steps"
    assert main(["train", *TINY[:5], "61", *TINY[6:], "--out", str(out)]) == 0
    others.add(load_checkpoint(out / "agent.pt")["metadata"]["run_group"])
    out = tmp_path / "ppo"
    assert main(["train", "--env", "CartPole-v1", "--algo", "ppo", "--steps", "60",
                 "--no-progress", "--out", str(out)]) == 0
    others.add(load_checkpoint(out / "agent.pt")["metadata"]["run_group"])
    assert base not in others and len(others) == 7


# --------------------------------------------------------------------- clear errors
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("damage", ["truncated", "pickled", "foreign", "no-train-state"])
def test_resume_bad_latest_is_a_one_line_error(damage, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    latest = out / "checkpoints" / "latest.pt"
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:300])
    elif damage == "pickled":  # a full pickle (not weights_only-loadable)
        torch.save({"format": "certrl-checkpoint", "algo": "dqn", "x": Path("x")}, latest)
    elif damage == "foreign":
        torch.save({"algo": "dqn", "env_id": "CartPole-v1"}, latest)
    else:
        data = load_checkpoint(latest)
        data.pop("train_state")
        torch.save(data, latest)
    capsys.readouterr()
    before = _snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "latest.pt" in err and "weights_only=False" not in err
    assert _snapshot(out) == before  # nothing rewritten


@pytest.mark.parametrize("extra,field", [
    (["--seed", "-1"], "--seed"),
    (["--set", "batch_size=0"], "batch_size"),
    (["--set", "buffer_size=0"], "buffer_size"),
    (["--set", "train_freq=0"], "train_freq"),
    (["--set", "gradient_steps=-2"], "gradient_steps"),
    (["--set", "target_update_interval=0"], "target_update_interval"),
    (["--set", "lr=0"], "lr"),
    (["--set", "gamma=0"], "gamma"),
    (["--set", "exploration_fraction=1.5"], "exploration_fraction"),
    (["--set", "eps_fraction=1.5"], "exploration_fraction"),  # the old name still works
    (["--set", "hidden=0,64"], "hidden"),
])
def test_train_bad_settings_one_line_nothing_written(extra, field, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, *extra, "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert field in err
    assert not out.exists()


@pytest.mark.parametrize("setting,field", [
    ("num_envs=0", "num_envs"), ("num_steps=0", "num_steps"),
    ("num_minibatches=0", "num_minibatches"), ("update_epochs=0", "update_epochs"),
    ("gae_lambda=2", "gae_lambda"), ("clip_coef=-0.1", "clip_coef"),
])
def test_train_bad_ppo_settings(setting, field, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--env", "CartPole-v1", "--algo", "ppo", "--steps", "64",
                 "--no-progress", "--set", setting, "--out", str(out)]) == 2
    assert field in _one_line_error(capsys) and not out.exists()


def test_train_out_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *TINY, "--out", str(blocker / "run")]) == 2
    assert "file" in _one_line_error(capsys)
    assert blocker.read_text() == "x"
