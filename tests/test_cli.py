import subprocess
import sys
from pathlib import Path

import pytest
import torch

from certrl.cli import main
from certrl.records import read_rows
from tests.conftest import SHIPPED, has_shipped


def _summary(path):
    rows = read_rows(path)
    assert rows[-1]["record"] == "summary"
    return rows


def _episodes(path):
    rows = read_rows(path)
    assert rows and all(r["record"] == "episode" for r in rows)
    return rows


def test_train_dqn_resume_evaluate_attack(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "300", "--seed", "1",
            "--out", str(out), "--no-progress", "--set", "learning_starts=100",
            "--checkpoint-every", "100"]
    assert main(args) == 0
    assert (out / "agent.pt").exists() and (out / "checkpoints" / "latest.pt").exists()
    # periodic snapshots every >= 100 steps (taken at the next episode boundary)
    snaps = sorted(int(f.stem[5:]) for f in (out / "checkpoints").glob("step_*.pt"))
    assert len(snaps) >= 2 and snaps[0] >= 100 and snaps[1] - snaps[0] >= 100, snaps
    rows = _summary(out / "train.jsonl")
    assert rows[-1]["steps"] == 300 and rows[-1]["config"]["learning_starts"] == 100
    assert rows[0]["record"] == "episode" and "return" in rows[0]
    assert "trained dqn" in capsys.readouterr().out
    import json

    import certrl

    assert json.loads((out / "command.json").read_text())["argv"][:2] == ["certrl", "train"]
    assert certrl.load(out).env_id == "CartPole-v1"  # a training folder loads its agent.pt
    # a second plain run into the same folder is refused
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--steps", "400", "--no-progress"]) == 0
    assert _summary(out / "train.jsonl")[-1]["steps"] == 400
    ev = tmp_path / "ev.jsonl"
    assert main(["evaluate", str(out / "agent.pt"), "--episodes", "2", "--out", str(ev),
                 "--max-steps", "50"]) == 0
    rows = _episodes(ev)
    assert len(rows) == 2
    for key in ("env_id", "algo", "loss", "seed", "eps", "norm", "eps_space", "attack",
                "return", "config", "versions", "agent_id", "agent_label", "run_group",
                "truncated", "length", "source"):
        assert key in rows[0], key
    at = tmp_path / "at.jsonl"
    assert main(["attack", str(out / "agent.pt"), "--attack", "fgsm", "--eps", "0.1", "0.2",
                 "--episodes", "1", "--max-steps", "30", "--out", str(at)]) == 0
    rows = _episodes(at)
    assert [r["eps"] for r in rows] == [0.1, 0.2]
    assert "eps 0.2" in capsys.readouterr().out


def test_train_ppo_mujoco_and_mad(tmp_path):
    out = tmp_path / "ppo"
    assert main(["train", "--env", "Hopper-v5", "--algo", "ppo", "--steps", "64", "--out",
                 str(out), "--no-progress", "--set", "num_envs=1", "--set", "num_steps=32",
                 "--set", "num_minibatches=2", "--set", "update_epochs=1"]) == 0
    data = torch.load(out / "agent.pt", weights_only=True)
    assert data["obs_rms"]["frozen"] and data["env_family"] == "mujoco"
    at = tmp_path / "mad.jsonl"
    assert main(["attack", str(out / "agent.pt"), "--attack", "mad", "--eps", "0.075",
                 "--steps", "2", "--episodes", "1", "--max-steps", "20", "--out", str(at)]) == 0
    s = _episodes(at)[-1]
    assert s["eps_space"].startswith("running-mean/std") and s["attack"] == "mad"


def test_train_atari_smoke(tmp_path):
    out = tmp_path / "pong"
    assert main(["train", "--env", "ALE/Pong-v5", "--algo", "dqn", "--steps", "24", "--out",
                 str(out), "--no-progress", "--threads", "1", "--set", "buffer_size=32",
                 "--set", "learning_starts=16", "--set", "batch_size=4"]) == 0
    at = tmp_path / "at.jsonl"
    assert main(["attack", str(out / "agent.pt"), "--attack", "pgd", "--eps", "1/255",
                 "--steps", "2", "--episodes", "1", "--max-steps", "5", "--out", str(at)]) == 0
    s = _episodes(at)[-1]
    assert s["eps"] == pytest.approx(1 / 255) and s["eps_space"] == "[0,1]-scaled pixels"


@has_shipped
def test_agents_and_shipped_by_name(tmp_path, capsys):
    assert main(["agents", "--out", str(tmp_path / "a.jsonl")]) == 0
    assert SHIPPED in capsys.readouterr().out
    assert SHIPPED in [r["name"] for r in read_rows(tmp_path / "a.jsonl")]
    ev = tmp_path / "ev.jsonl"
    assert main(["evaluate", SHIPPED, "--episodes", "1", "--max-steps", "20",
                 "--out", str(ev)]) == 0
    assert [r["return"] for r in _episodes(ev)] == [20.0]
    assert "natural return 20.00 +- 0.00 over 1 episodes (1 of 1 episodes cut" in (
        capsys.readouterr().out)


@pytest.mark.parametrize("argv,needle", [
    (["attack", SHIPPED, "--eps", "-0.1"], "eps must be >= 0"),
    (["attack", SHIPPED, "--eps", "nan"], "NaN"),
    (["attack", SHIPPED, "--eps", "abc"], "must be a number"),
    (["attack", SHIPPED, "--eps", "0.1", "--attack", "cw"], "invalid choice"),
    (["attack", SHIPPED, "--eps", "0.1", "--attack", "mad"], "mad attacks continuous"),
    (["evaluate", "missing.pt"], "does not exist"),
    (["evaluate", "--episodes", "0", SHIPPED], "positive integer"),
    (["train", "--env", "NoSuchEnv-v0", "--algo", "dqn", "--steps", "10"], "unknown or unsupp"),
    (["train", "--env", "Pendulum-v1", "--algo", "dqn", "--steps", "10"], "discrete"),
    (["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "10", "--set", "lr=x"],
     "bad value"),
    (["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "10", "--set", "foo=1"],
     "no settable field"),
    (["train", "--resume"], "no checkpoint"),
])
def test_bad_inputs_fail_cleanly(tmp_path, capsys, argv, needle):
    out = tmp_path / "o.jsonl"
    extra = ["--out", str(out if argv[0] != "train" else tmp_path / "run")]
    assert main(argv + extra) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "run" / "agent.pt").exists()


def test_bad_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    out = tmp_path / "o.jsonl"
    assert main(["evaluate", str(bad), "--out", str(out)]) == 2
    assert "not a readable certrl checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert main(["attack", str(foreign), "--eps", "0.1", "--out", str(out)]) == 2
    assert "not a certrl checkpoint" in capsys.readouterr().err
    assert not out.exists()


@has_shipped
def test_obs_shape_mismatch(tmp_path, capsys):
    from certrl.agent import AGENTS_DIR
    from certrl.io import load_checkpoint, save_checkpoint

    data = load_checkpoint(AGENTS_DIR / f"{SHIPPED}.pt")
    data["obs_shape"] = [5]
    data["nets"]["q"]["spec"]["body"]["in_dim"] = 5
    data["nets"]["q"]["state_dict"]["body.0.weight"] = torch.zeros(64, 5)
    p = tmp_path / "shape.pt"
    save_checkpoint(data, p)
    out = tmp_path / "o.jsonl"
    assert main(["evaluate", str(p), "--episodes", "1", "--out", str(out)]) == 2
    assert "shape" in capsys.readouterr().err and not out.exists()


def test_console_script_help():
    exe = Path(sys.executable).parent / "certrl"
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for cmd in ("train", "evaluate", "attack", "agents"):
        assert cmd in res.stdout
    res = subprocess.run([str(exe), "attack", SHIPPED, "--eps", "-1"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "eps must be >= 0" in res.stderr


def test_a_closed_stdout_pipe_ends_quietly():
    """certrl ... | head: no traceback, the shell's SIGPIPE status (141)."""
    spec = Path(__file__).resolve().parent.parent / "benchmarks" / "specs" / "robust_dqn.yaml"
    cmd = (f"{sys.executable} -m certrl.cli sweep {spec} --out /nonexistent-dir --dry-run "
           "| head -c 10; exit ${PIPESTATUS[0]}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr
    assert r.returncode == 141 and r.stdout.startswith("sweep ") and len(r.stdout) == 10
