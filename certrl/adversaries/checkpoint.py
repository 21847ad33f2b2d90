"""Learned-attacker checkpoints: the attacker's networks, tied to one victim.

One torch file (written atomically, read with ``weights_only=True``)::

    {"format": "certrl-attacker", "format_version": 1,
     "kind": "rs" | "sa-rl" | "pa-ad", # Robust Sarsa Q-network / SA-RL adversary / PA-AD director
     "victim_id": sha256 identity of the victim agent (certrl.identity),
     "victim_label": path or shipped name the victim was given as (a label),
     "env_id": ..., "settings": {...},  # every training setting, the budget and seed included
     "threat_model": {...} | None,      # SA-RL, PA-AD: the ball it was trained for
     "nets": {name: {"spec": ..., "state_dict": ...}},
     "info": {...},                     # training summary (returns, losses, CPU seconds)
     "versions": {...}}

``attacker_id`` is the sha256 of kind, victim id, settings, threat model and the
networks' tensors (by sorted name): rows of a learned attack name it, so a number can
be traced to the exact attacker that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from certrl.io import CheckpointError, atomic_torch_save, library_versions, plain
from certrl.nets import build_network

FORMAT = "certrl-attacker"
FORMAT_VERSION = 1
KINDS = ("rs", "sa-rl", "pa-ad")


def attacker_id(payload: dict) -> str:
    """sha256 (hex) of the attacker's kind, victim, settings, threat model and weights."""
    h = hashlib.sha256()
    head = {k: payload.get(k) for k in ("kind", "victim_id", "settings", "threat_model")}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name in sorted(payload["nets"]):
        net = payload["nets"][name]
        h.update(name.encode())
        h.update(json.dumps(net["spec"], sort_keys=True).encode())
        for key in sorted(net["state_dict"]):
            t = net["state_dict"][key].detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_attacker(path: str | os.PathLike, kind: str, victim_id: str, victim_label: str,
                  env_id: str, settings: dict, nets: dict[str, nn.Module], info: dict,
                  threat_model: dict | None = None) -> str:
    """Write an attacker checkpoint; returns its ``attacker_id``."""
    if kind not in KINDS:
        raise ValueError(f"unknown attacker kind {kind!r}; use one of {KINDS}")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
               "victim_id": victim_id, "victim_label": victim_label, "env_id": env_id,
               "settings": settings, "threat_model": threat_model,
               "nets": {k: {"spec": n.spec, "state_dict": n.state_dict()}
                        for k, n in nets.items()},
               "info": info, "versions": library_versions()}
    payload = plain(payload)
    payload["attacker_id"] = attacker_id(payload)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)
    return payload["attacker_id"]


def load_attacker(path: str | os.PathLike, kind: str, victim_id: str) -> tuple[dict, dict]:
    """(payload, nets) of the attacker at ``path``; ``CheckpointError`` when it is missing,
    unreadable, of another kind, trained against another victim, or altered (its
    ``attacker_id`` does not match its contents)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"attacker checkpoint {str(p)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on bad files
        raise CheckpointError(f"{str(p)!r} is not a readable attacker checkpoint: "
                              f"{type(e).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a certrl attacker checkpoint")
    if data.get("kind") != kind:
        raise CheckpointError(f"{str(p)!r} holds a {data.get('kind')!r} attacker, not {kind!r}")
    if data.get("victim_id") != victim_id:
        raise CheckpointError(
            f"{str(p)!r} was trained against agent {str(data.get('victim_id'))[:16]}..., not "
            f"this agent ({victim_id[:16]}...): train one for it (another --attacker path)")
    try:
        nets = {k: build_network(v["spec"]) for k, v in data["nets"].items()}
        for k, net in nets.items():
            net.load_state_dict(data["nets"][k]["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{str(p)!r}: bad attacker networks ({e})") from None
    if attacker_id(data) != data.get("attacker_id"):
        raise CheckpointError(f"{str(p)!r}: contents do not match its attacker_id (altered)")
    return data, {k: n.eval() for k, n in nets.items()}
