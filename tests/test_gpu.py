"""CUDA checks (marker ``gpu``; skipped with a reason on a machine without a CUDA GPU):
bound soundness by sampling, native vs auto_LiRPA agreement, a short DQN training run and
``certrl certify --device cuda``, all on the GPU. ``benchmarks/gpu_check.sh`` runs them."""

from __future__ import annotations

import math

import pytest
import torch

import bounds
from certrl.agent import load
from certrl.cli import main
from certrl.records import read_rows
from tests.conftest import NETS, sample_ball, shared_net

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
TOL = 1e-4  # GPU kernels (TF32 off below) round differently from the CPU's


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 matmuls / convolutions: float32 bounds as on the CPU."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _net_and_ball(name: str, norm: float, eps: float = 0.08):
    net = shared_net(name)
    x = torch.rand((3, *NETS[name][1]), generator=torch.Generator().manual_seed(1))
    ball = bounds.LpBall(x, eps, norm=norm, lower=0.0, upper=1.0)
    return net, x, ball


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_cuda_bounds_contain_samples(name, method, norm):
    net, x, ball = _net_and_ball(name, norm)
    gnet = _copy_to(net, CUDA)
    with torch.no_grad():
        lb, ub = bounds.compute(gnet, ball.to(CUDA), method=method, backend="native",
                                alpha_iterations=5)
        assert lb.device.type == ub.device.type == "cuda"
        pts = sample_ball(ball, 256, torch.Generator().manual_seed(7)).to(CUDA)
        out = gnet(pts.reshape(-1, *x.shape[1:])).reshape(256, x.shape[0], -1)
    assert (lb <= ub + TOL).all()
    assert (out >= lb - TOL).all(), f"sample below lb by {(lb - out).max():.3g}"
    assert (out <= ub + TOL).all(), f"sample above ub by {(out - ub).max():.3g}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_cuda_bounds_equal_cpu_bounds(name, method):
    net, _, ball = _net_and_ball(name, math.inf)
    with torch.no_grad():
        lc, uc = bounds.compute(net, ball, method=method, alpha_iterations=5)
        lg, ug = bounds.compute(_copy_to(net, CUDA), ball.to(CUDA), method=method,
                                alpha_iterations=5)
    torch.testing.assert_close(lg.cpu(), lc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ug.cpu(), uc, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_cuda_native_equals_lirpa(name, method):
    pytest.importorskip("auto_LiRPA", reason="auto_LiRPA is an optional extra")
    net, _, ball = _net_and_ball(name, math.inf)
    gnet, gball = _copy_to(net, CUDA), ball.to(CUDA)
    with torch.no_grad():
        ln, un = bounds.compute(gnet, gball, method, backend="native")
        ll, ul = bounds.compute(gnet, gball, method, backend="lirpa")
    torch.testing.assert_close(ln, ll, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(un, ul, rtol=1e-4, atol=1e-4)


def _copy_to(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).to(device).eval()


@pytest.mark.usefixtures("keep_threads")
def test_certify_cli_on_cuda_agrees_with_cpu(tmp_path, cartpole):
    argv = ["certify", "cartpole-dqn-vanilla", "--eps", "0.01", "--method", "ibp", "crown",
            "alpha-crown", "--episodes", "1", "--max-steps", "20", "--no-progress",
            "--no-radius"]
    gpu, cpu = tmp_path / "g.jsonl", tmp_path / "c.jsonl"
    assert main([*argv, "--out", str(gpu), "--device", "cuda"]) == 0
    assert main([*argv, "--out", str(cpu), "--device", "cpu"]) == 0
    rg, rc = read_rows(gpu), read_rows(cpu)
    units = [r for r in rg if "versions" in r]
    assert units and all(r["versions"]["device"].startswith("cuda:") for r in units)
    sg = [r for r in rg if r.get("record") == "state"]
    sc = [r for r in rc if r.get("record") == "state"]
    assert len(sg) == len(sc) > 0
    for a, b in zip(sg, sc):
        assert (a["method"], a["step"], a["action"]) == (b["method"], b["step"], b["action"])
        ma, mb = a["margin_lower"], b["margin_lower"]
        assert abs(ma - mb) <= 1e-4 * max(1.0, abs(mb))
        if abs(mb) > 1e-3:  # away from the boundary the verdict is the same
            assert a["certified"] == b["certified"]


@pytest.mark.usefixtures("keep_threads")
def test_agent_acts_the_same_on_cuda(cartpole):
    import numpy as np

    cpu, gpu = load("cartpole-dqn-vanilla"), load("cartpole-dqn-vanilla", device="cuda")
    assert gpu.device.type == "cuda"
    obs = np.random.default_rng(0).normal(size=(64, *cpu.obs_shape)).astype(np.float32)
    assert (cpu.predict(obs) == gpu.predict(obs)).mean() > 0.95  # ties may round apart


@pytest.mark.usefixtures("keep_threads")
def test_short_dqn_training_on_cuda(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "400",
               "--out", str(out), "--no-progress", "--device", "cuda",
               "--set", "learning_starts=100"])
    assert rc == 0
    agent = load(out / "agent.pt")
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())
    rc = main(["train", "--out", str(out), "--resume", "--steps", "500", "--no-progress",
               "--device", "cuda"])
    assert rc == 0
    assert _summary(out)["versions"]["device"].startswith("cuda:")


@pytest.mark.usefixtures("keep_threads")
def test_short_ppo_training_on_cuda(tmp_path):
    out = tmp_path / "ppo"
    assert main(["train", "--env", "CartPole-v1", "--algo", "ppo", "--steps", "1024",
                 "--out", str(out), "--no-progress", "--device", "cuda"]) == 0
    assert _summary(out)["versions"]["device"].startswith("cuda:")
    agent = load(out / "agent.pt")
    assert all(torch.isfinite(p).all() for p in agent.net.parameters())


def _summary(out) -> dict:
    import json

    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()][-1]


@pytest.mark.usefixtures("keep_threads")
@pytest.mark.parametrize("argv", [
    ["evaluate", "cartpole-dqn-vanilla", "--episodes", "2", "--max-steps", "50"],
    ["evaluate", "cartpole-dqn-vanilla", "--episodes", "1", "--max-steps", "20", "--smoothed",
     "--samples", "20"],
    ["attack", "cartpole-dqn-vanilla", "--attack", "pgd", "--eps", "0.02", "--episodes", "1",
     "--max-steps", "20"],
], ids=["evaluate", "smoothed", "pgd"])
def test_episode_commands_on_cuda_match_cpu(tmp_path, cartpole, argv):
    gpu, cpu = tmp_path / "g.jsonl", tmp_path / "c.jsonl"
    quiet = ["--no-progress"] if argv[0] == "evaluate" else []
    assert main([*argv, *quiet, "--out", str(gpu), "--device", "cuda"]) == 0
    assert main([*argv, *quiet, "--out", str(cpu), "--device", "cpu"]) == 0
    rg, rc = read_rows(gpu), read_rows(cpu)
    assert all(r["versions"]["device"].startswith("cuda:") for r in rg)
    # the same seeded episodes: CPU-drawn noise, argmax actions (ties aside) agree
    assert [r["return"] for r in rg] == [r["return"] for r in rc]
