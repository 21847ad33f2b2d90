"""Packed training-checkpoint tensors (certrl.algos.tensor_pack): bit-exact round trips,
smaller files, and a DQN checkpoint that resumes with the very same target and Adam state."""

from __future__ import annotations

import io

import pytest
import torch

from certrl.algos.dqn import DQN, DQNConfig
from certrl.algos.tensor_pack import PACK_MIN_NUMEL, is_packed, pack, pack_tree, unpack, unpack_tree


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def _same(a, b) -> bool:
    """Equal structure and bit-identical tensors (NaN payloads and -0.0 included)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):  # checkpoints store tuples as lists (certrl.io.plain)
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(_bits(a), _bits(b))
    return a == b


def _nbytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                   torch.int64])
def test_pack_round_trip_is_bit_exact(dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(64, 97, generator=g) * 3).to(dtype)
    if dtype.is_floating_point:
        t.view(-1)[:4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")])
    p = pack(t)
    assert is_packed(p)
    assert _same(unpack(p), t)


def test_xor_with_a_reference_round_trips_and_shrinks_a_lagged_copy():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(256, 256, generator=g) * 0.02
    target = q - 1e-4 * torch.randn(256, 256, generator=g)  # a lagged copy
    alone, against = pack(target), pack(target, q)
    assert _same(unpack(against, q), target)
    assert against["data"].numel() < 0.85 * alone["data"].numel()
    with pytest.raises(ValueError, match="reference"):
        unpack(against)  # the reference is needed


def test_small_tensors_and_other_values_stay_as_they_are():
    small = torch.ones(PACK_MIN_NUMEL - 1)
    tree = {"step": torch.tensor(3.0), "w": small, "lr": 1e-3, "names": ["a", "b"]}
    assert _same(pack_tree(tree), tree)
    assert _same(unpack_tree(tree), tree)  # an unpacked (older) checkpoint reads as before


def test_corrupt_packed_tensor_is_a_clear_error():
    p = pack(torch.randn(8192))
    p["data"] = p["data"][:-10]
    with pytest.raises(ValueError, match="packed tensor"):
        unpack(p)


def _trained_dqn(steps: int = 300) -> DQN:
    cfg = DQNConfig.for_env("CartPole-v1", total_steps=steps, learning_starts=50,
                            target_update_interval=1000, buffer_size=1000, seed=3,
                            hidden=(128, 128))
    algo = DQN(cfg)
    algo.learn()
    return algo


@pytest.mark.usefixtures("one_thread")
def test_dqn_checkpoint_resumes_the_same_target_and_optimizer(tmp_path):
    algo = _trained_dqn()
    path = tmp_path / "latest.pt"
    algo.save(path)
    st = torch.load(path, map_location="cpu", weights_only=True)["train_state"]
    assert any(is_packed(v) and v["xor_ref"] for v in st["target"].values())
    assert any(is_packed(v) for s in st["optimizer"]["state"].values() for v in s.values())
    resumed = DQN.resume(path)
    assert _same(resumed.target.state_dict(), algo.target.state_dict())
    assert _same(resumed.optimizer.state_dict(), algo.optimizer.state_dict())
    plain = {"optimizer": algo.optimizer.state_dict(), "target": algo.target.state_dict()}
    assert _nbytes({"optimizer": st["optimizer"], "target": st["target"]}) < \
        0.8 * _nbytes(plain)
