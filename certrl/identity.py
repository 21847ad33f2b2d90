"""An agent's identity: one sha256 over everything that decides its actions.

Hashed, in this order (each part framed by its name and length so no two
different agents can serialize alike): every network (names sorted; its spec
as sorted-key JSON; its state_dict tensors in sorted key order as name, dtype,
shape and the raw bytes of the contiguous CPU tensor), the preprocessing dict,
the observation normalization statistics (mean, var, count) if any, the action
space, the observation shape, the env id and the threat model. The checkpoint
path or shipped name is *not* part of it: it is only a label.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

_CACHE_ATTR = "_certrl_identity"


def _canonical_json(value) -> bytes:
    """Sorted-key JSON bytes (non-JSON values such as inf rendered by ``repr``)."""
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":")).encode()


def _feed(h, tag: str, data: bytes) -> None:
    """Add one framed part: tag, length, bytes."""
    h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)


def _feed_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    _feed(h, "tensor", name.encode())
    _feed(h, "dtype", str(t.dtype).encode())
    _feed(h, "shape", _canonical_json(list(t.shape)))
    _feed(h, "bytes", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _feed_array(h, name: str, a) -> None:
    a = np.ascontiguousarray(np.asarray(a))
    _feed(h, "array", name.encode())
    _feed(h, "dtype", a.dtype.str.encode())
    _feed(h, "shape", _canonical_json(list(a.shape)))
    _feed(h, "bytes", a.tobytes())


def _feed_nets(h, nets: dict) -> None:
    for name in sorted(nets):
        net = nets[name]
        _feed(h, "net", name.encode())
        _feed(h, "spec", _canonical_json(getattr(net, "spec", None)))
        sd = net.state_dict()
        for key in sorted(sd):
            _feed_tensor(h, key, sd[key])


def compute_identity(agent) -> str:
    """sha256 hex of the canonical serialization of ``agent`` (not cached)."""
    h = hashlib.sha256()
    _feed(h, "format", b"certrl-agent-identity-v1")
    _feed_nets(h, agent.nets)
    _feed(h, "preprocessing", _canonical_json(agent.preprocessing))
    rms = agent.obs_rms
    _feed(h, "obs_rms", b"none" if rms is None else b"some")
    if rms is not None:
        _feed_array(h, "mean", np.asarray(rms.mean, dtype=np.float64))
        _feed_array(h, "var", np.asarray(rms.var, dtype=np.float64))
        _feed_array(h, "count", np.asarray(float(rms.count), dtype=np.float64))
    _feed(h, "action_space", _canonical_json(agent.action_space))
    _feed(h, "obs_shape", _canonical_json(list(agent.obs_shape)))
    _feed(h, "env_id", str(agent.env_id).encode())
    _feed(h, "threat_model", _canonical_json(agent.threat_model.to_dict()))
    return h.hexdigest()


def agent_identity(agent) -> str:
    """The agent's identity (sha256 hex); computed once per agent object and cached.

    Loaded agents are not mutated, so the cache is safe; call ``compute_identity``
    for an agent whose weights you changed in place.
    """
    cached = getattr(agent, _CACHE_ATTR, None)
    if cached is None:
        cached = compute_identity(agent)
        setattr(agent, _CACHE_ATTR, cached)
    return cached
