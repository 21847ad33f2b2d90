"""Lossless, smaller storage of the large tensors of a training checkpoint.

A DQN ``latest.pt`` on Atari is mostly float32 weights: the Q-network, the target
network and Adam's two moment tensors, four copies of the Nature CNN's 1.7M
parameters (25.8 MB). Packing keeps every bit and shrinks them:

* byte shuffle + zlib: the bytes of a tensor regrouped by position in the element
  (all first bytes, then all second bytes, ...) compress well in the exponent and
  high-mantissa planes; zlib level ``ZLIB_LEVEL``;
* XOR with a reference: the target network is stored as the bitwise XOR of its bytes
  with the Q-network's (which the same checkpoint holds): the target is a lagged copy
  of Q, so the sign, exponent and high mantissa bits mostly cancel.

``unpack`` inverts both exactly (the tests compare bit patterns). Tensors under
``PACK_MIN_NUMEL`` elements stay as they are, and so does anything that is not a
tensor; a packed tensor is a plain dict (``weights_only``-loadable).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

PACK_FORMAT = "shuffle-zlib-v1"
PACK_MIN_NUMEL = 4096
ZLIB_LEVEL = 1  # ~100 MB/s here; level 6 saves ~3% more at 5x the time
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)}


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw bytes as a (numel, itemsize) uint8 array (CPU copy)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().reshape(t.numel(), t.element_size())


def packable(t, ref: torch.Tensor | None = None) -> bool:
    """Whether ``t`` is a tensor ``pack`` stores packed (large, of a known dtype; with a
    reference: of the reference's shape and dtype)."""
    if not isinstance(t, torch.Tensor) or t.numel() < PACK_MIN_NUMEL or t.dim() == 0:
        return False
    if str(t.dtype).removeprefix("torch.") not in _DTYPES:
        return False
    return ref is None or (isinstance(ref, torch.Tensor) and ref.shape == t.shape
                           and ref.dtype == t.dtype)


def pack(t: torch.Tensor, ref: torch.Tensor | None = None):
    """``t`` as {"packed", "dtype", "shape", "xor_ref", "data"}: bytes XOR ``ref``'s (if
    given), byte-shuffled, zlib-compressed; ``t`` itself when not ``packable``."""
    if not packable(t, ref):
        return t
    b = _bytes_of(t)
    if ref is not None:
        b = np.bitwise_xor(b, _bytes_of(ref))
    blob = bytearray(zlib.compress(np.ascontiguousarray(b.T).tobytes(), ZLIB_LEVEL))
    return {"packed": PACK_FORMAT, "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape), "xor_ref": ref is not None,
            "data": torch.frombuffer(blob, dtype=torch.uint8)}


def is_packed(obj) -> bool:
    """Whether ``obj`` is a dict ``pack`` made."""
    return isinstance(obj, dict) and obj.get("packed") == PACK_FORMAT and "data" in obj


def unpack(obj, ref: torch.Tensor | None = None):
    """Inverse of ``pack`` (``ref``: the same reference tensor); anything not packed is
    returned as is. ValueError for a packed tensor that does not decode."""
    if not is_packed(obj):
        return obj
    dtype = _DTYPES.get(str(obj["dtype"]))
    shape = tuple(int(s) for s in obj["shape"])
    if dtype is None:
        raise ValueError(f"packed tensor of unknown dtype {obj['dtype']!r}")
    n, size = int(np.prod(shape)), torch.empty((), dtype=dtype).element_size()
    try:
        raw = zlib.decompress(np.asarray(obj["data"]).tobytes())
    except zlib.error as e:
        raise ValueError(f"packed tensor does not decompress ({e})") from None
    if len(raw) != n * size:
        raise ValueError(f"packed tensor holds {len(raw)} bytes, not {n * size} for shape "
                         f"{shape} {obj['dtype']}")
    b = np.frombuffer(raw, np.uint8).reshape(size, n).T
    if obj.get("xor_ref"):
        if ref is None or tuple(ref.shape) != shape or ref.dtype != dtype:
            raise ValueError("packed tensor was stored against a reference tensor that is "
                             "missing or of another shape / dtype")
        b = np.bitwise_xor(b, _bytes_of(ref))
    flat = torch.from_numpy(np.ascontiguousarray(b).reshape(-1).copy())
    return flat.view(dtype).reshape(shape)


def pack_tree(obj, refs: dict | None = None):
    """``obj`` (nested dicts / lists / tuples) with every ``packable`` tensor packed; a
    tensor under key k of a dict is XORed with ``refs[k]`` when that fits (``refs``
    applies to the top level only: a state dict and its reference state dict)."""
    if isinstance(obj, dict):
        refs = refs or {}
        return {k: pack(v, refs.get(k)) if packable(v, refs.get(k))
                else pack_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack_tree(v) for v in obj)
    return pack(obj)


def unpack_tree(obj, refs: dict | None = None):
    """Inverse of ``pack_tree`` (same ``refs``); unpacked input comes back unchanged."""
    if is_packed(obj):
        return unpack(obj)
    if isinstance(obj, dict):
        refs = refs or {}
        return {k: unpack(v, refs.get(k)) if is_packed(v) else unpack_tree(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack_tree(v) for v in obj)
    return obj
