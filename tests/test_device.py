"""--device auto|cpu|cuda[:N] (certrl.device) on a CPU-only machine: resolution, clean
refusals, the CPU rows unchanged, and no tensor of the certify path created off-device."""

from __future__ import annotations

import collections
import json
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from certrl.agent import load
from certrl.cli import main
from certrl.device import device_label, resolve_device
from certrl.records import read_rows

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "cartpole-dqn-vanilla"
CERTIFY = ["certify", SHIPPED, "--eps", "0.01", "--method", "ibp", "crown", "smoothing",
           "--episodes", "1", "--max-steps", "4", "--n", "50", "--n0", "10", "--no-progress"]


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as a CPU-only one, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_cuda_when_available_else_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_without_cuda_is_cpu(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_gpu_is_refused(no_cuda, spec):
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        resolve_device(spec)


def test_cuda_index_past_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\): cuda:0..cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu", "", "mps"])
def test_unknown_device_word_is_refused(spec):
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(spec)


@pytest.mark.usefixtures("keep_threads")
@pytest.mark.parametrize("command", ["certify", "evaluate", "attack", "audit"])
def test_cli_refuses_an_unknown_device_with_exit_2(tmp_path, capsys, command):
    out = tmp_path / "r.jsonl"
    argv = {"certify": CERTIFY, "evaluate": ["evaluate", SHIPPED, "--episodes", "1"],
            "attack": ["attack", SHIPPED, "--eps", "0.01", "--episodes", "1"],
            "audit": ["audit", str(out)]}[command]
    rest = [] if command == "audit" else ["--out", str(out)]
    assert main([*argv, *rest, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("keep_threads")
@pytest.mark.parametrize("command", ["certify", "evaluate", "attack"])
def test_cli_refuses_cuda_on_a_cpu_machine_before_writing(tmp_path, capsys, no_cuda, command):
    out = tmp_path / "r.jsonl"
    argv = {"certify": CERTIFY, "evaluate": ["evaluate", SHIPPED, "--episodes", "1"],
            "attack": ["attack", SHIPPED, "--eps", "0.01", "--episodes", "1"]}[command]
    assert main([*argv, "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert f"certrl {command}: error: device 'cuda' requested but no CUDA GPU" in err
    assert not out.exists()


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.usefixtures("keep_threads")
def test_device_cpu_gives_the_rows_of_the_default_on_a_cpu_machine(tmp_path, cartpole, no_cuda):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main([*CERTIFY, "--out", str(a)]) == 0
    assert main([*CERTIFY, "--out", str(b), "--device", "cpu"]) == 0
    ra, rb = read_rows(a), read_rows(b)
    assert len(ra) == len(rb) > 3
    assert _without_times(ra) == _without_times(rb)
    units = [r for r in ra if "versions" in r]
    assert units and all(r["versions"]["device"] == "cpu" for r in units)


@pytest.mark.usefixtures("keep_threads")
def test_evaluate_and_attack_rows_record_the_device(tmp_path, cartpole):
    ev, atk = tmp_path / "e.jsonl", tmp_path / "a.jsonl"
    assert main(["evaluate", SHIPPED, "--episodes", "1", "--max-steps", "5", "--out", str(ev),
                 "--device", "cpu", "--no-progress"]) == 0
    assert main(["attack", SHIPPED, "--attack", "pgd", "--eps", "0.05", "--episodes", "1",
                 "--max-steps", "5", "--out", str(atk), "--device", "cpu"]) == 0
    for p in (ev, atk):
        (row,) = read_rows(p)
        assert row["versions"]["device"] == "cpu"


@pytest.mark.usefixtures("keep_threads")
def test_audit_runs_with_device_cpu(tmp_path, cartpole, capsys):
    out = tmp_path / "c.jsonl"
    assert main([*CERTIFY[:6], "--episodes", "1", "--max-steps", "3", "--no-progress",
                 "--out", str(out)]) == 0
    assert main(["audit", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "reproduced" in capsys.readouterr().out.lower()


def test_agent_load_on_a_device(cartpole):
    agent = load(SHIPPED, device="cpu")
    assert agent.device == torch.device("cpu")
    x = agent.preprocess(torch.zeros(2, *agent.obs_shape).numpy())
    assert x.device == agent.device and x.dtype == torch.float32
    assert agent.to(None) is agent and agent.to("auto") is agent
    assert device_label("cpu") == "cpu"


def test_device_flag_is_documented_in_help(capsys):
    from certrl.cli import build_parser

    parser, _ = build_parser()
    for command in ("certify", "evaluate", "attack", "audit"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--device DEVICE" in capsys.readouterr().out


# ------------------------------------------------------- tensors created off-device
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.arange, torch.eye, torch.empty,
             torch.rand, torch.randn, torch.randint, torch.tensor, torch.as_tensor,
             torch.linspace}
# the certify path of certrl (bounds/ is reviewed separately: see docs/performance.md)
WATCHED = ("certrl/agent.py", "certrl/threat.py", "certrl/certify/", "certrl/smoothed.py",
           "certrl/rollout.py", "certrl/evaluate.py")


class _Factories(TorchFunctionMode):
    """Records tensor factory calls without ``device=`` made from certrl code."""

    def __init__(self):
        super().__init__()
        self.hits: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None and not (
                func is torch.as_tensor and args and isinstance(args[0], torch.Tensor)):
            for fr in reversed(traceback.extract_stack()[:-1]):
                rel = Path(fr.filename).resolve()
                if ROOT in rel.parents and ".venv" not in rel.parts:
                    self.hits[f"{rel.relative_to(ROOT)}:{fr.lineno}: {fr.line}"] += 1
                    break
        return func(*args, **kwargs)


@pytest.mark.usefixtures("keep_threads")
def test_certify_path_creates_no_tensor_without_a_device(tmp_path, cartpole):
    """On a GPU, a tensor made without device= lands on the CPU: a host round trip or a
    device mismatch. The certify path (episodes, ibp / crown / alpha-crown / smoothing /
    bab / gwc-crown and the radius search) must make none in certrl's own modules."""
    mode = _Factories()
    with mode:
        rc = main(["certify", SHIPPED, "--eps", "0.01", "--method", "ibp", "crown",
                   "alpha-crown", "smoothing", "bab", "gwc-crown", "--episodes", "1",
                   "--max-steps", "3",
                   "--n", "40", "--n0", "10", "--no-progress", "--out",
                   str(tmp_path / "c.jsonl")])
    assert rc == 0
    bad = {k: n for k, n in mode.hits.items() if k.startswith(WATCHED)}
    assert not bad, json.dumps(bad, indent=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_gpu_check_script_fails_clearly_without_cuda(tmp_path):
    import os
    import subprocess
    import sys

    log = tmp_path / "gpu.log"
    env = {**os.environ, "GPU_CHECK_LOG": str(log), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3
    assert "no CUDA device is available" in res.stdout
    assert "no CUDA device is available" in log.read_text()


@pytest.mark.usefixtures("one_thread")
def test_dqn_to_cpu_mid_run_changes_no_number():
    """``algo.to(device)`` moves networks and re-binds optimizer state; on the CPU it must
    leave a seeded run bit-identical (the optimizer state round trip included)."""
    from certrl.algos.dqn import DQN, DQNConfig

    def run(move: bool):
        cfg = DQNConfig.for_env("CartPole-v1", total_steps=160, learning_starts=20, seed=5)
        algo = DQN(cfg)
        algo.learn(100)
        if move:
            assert algo.to("cpu") is algo
        algo.learn()
        return algo

    a, b = run(False), run(True)
    for k, v in a.agent_obj.nets["q"].state_dict().items():
        assert torch.equal(v, b.agent_obj.nets["q"].state_dict()[k])
    assert b.agent_obj.device == torch.device("cpu")


def test_pixels_on_device_equal_the_host_preprocessing_bit_for_bit():
    import numpy as np

    from certrl.agent import pixels_on_device

    arr = np.arange(256, dtype=np.uint8).reshape(1, 4, 8, 8).repeat(3, 0)
    for scale in (255.0, 256.0, 7.0):
        want = torch.as_tensor(arr.astype(np.float32) / scale)
        got = pixels_on_device(arr, scale, torch.device("cpu"))
        assert got.dtype == torch.float32 and torch.equal(got.view(torch.int32),
                                                          want.view(torch.int32))


TRAIN = ["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "120", "--no-progress",
         "--set", "learning_starts=20", "--set", "train_freq=4", "--set", "gradient_steps=1"]


@pytest.mark.usefixtures("keep_threads")
@pytest.mark.parametrize("device, why", [("tpu", "unknown device 'tpu'"),
                                         ("cuda", "no CUDA GPU is available")])
def test_train_refuses_a_bad_device_before_writing(tmp_path, capsys, no_cuda, device, why):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--device", device]) == 2
    assert why in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.usefixtures("keep_threads")
def test_train_auto_keeps_ppo_on_the_cpu(tmp_path, monkeypatch):
    import certrl.commands.train as train_cmd

    # a machine where auto means cuda: PPO stays on the CPU (moving it would fail here)
    monkeypatch.setattr(train_cmd, "resolve_device", lambda spec: torch.device("cuda", 0))
    out = tmp_path / "run"
    assert main(["train", "--env", "CartPole-v1", "--algo", "ppo", "--steps", "64", "--out",
                 str(out), "--no-progress"]) == 0
    summary = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()][-1]
    assert summary["versions"]["device"] == "cpu"


@pytest.mark.usefixtures("keep_threads")
def test_train_device_cpu_gives_the_weights_of_the_default(tmp_path, no_cuda):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*TRAIN, "--out", str(a)]) == 0
    assert main([*TRAIN, "--out", str(b), "--device", "cpu"]) == 0
    wa, wb = load(a).net.state_dict(), load(b).net.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summary = [json.loads(line) for line in (b / "train.jsonl").read_text().splitlines()][-1]
    assert summary["versions"]["device"] == "cpu"


def test_python_api_takes_a_device(tmp_path, cartpole, no_cuda):
    import numpy as np

    from certrl.certify import certify_states, run_certify
    from certrl.evaluate import evaluate

    agent = load(SHIPPED)
    res = evaluate(agent, episodes=1, max_steps=5, device="cpu")
    assert res.lengths == [5]
    with pytest.raises(ValueError, match="no CUDA GPU"):
        evaluate(agent, episodes=1, max_steps=5, device="cuda")
    with pytest.raises(ValueError, match="unknown device"):
        run_certify(agent, SHIPPED, [0.01], ["ibp"], 1, tmp_path / "c.jsonl", device="tpu")
    assert not (tmp_path / "c.jsonl").exists()
    x = np.zeros((2, *agent.obs_shape), dtype=np.float32)
    (cert,) = certify_states(agent.bounded_form(), x, 0.01, "crown", device="cpu")
    assert cert.certified.shape == (2,)


def test_configure_determinism_sets_cudnn_for_a_gpu_only(monkeypatch):
    from certrl.device import configure_determinism

    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", True)
    monkeypatch.setattr(cudnn, "deterministic", False)
    configure_determinism(torch.device("cpu"))
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    configure_determinism(torch.device("cuda", 0))  # flags only: no GPU needed
    assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
