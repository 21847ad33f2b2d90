"""Machine-readable results: JSON lines written atomically (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from certrl.agent import Agent
from certrl.envs import env_version
from certrl.identity import agent_identity
from certrl.io import _umask, library_versions


def _clean(v):
    """JSON-safe values: non-finite floats become strings ('inf', 'nan')."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _clean(v.item())
    return v


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write ``records`` one JSON object per line; readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_clean(r), sort_keys=False) for r in records]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def agent_fields(agent: Agent, checkpoint: str | None = None) -> dict:
    """The fields every result row about ``agent`` carries.

    ``agent_id`` is the sha256 identity (``certrl.identity.agent_identity``);
    ``agent_label`` (and the older ``checkpoint``) is the path or shipped name the
    user gave, a label only; ``run_group`` is the training run's group (a hash of
    its config without the seed) or None.
    """
    tm = agent.threat_model
    return {
        "agent_id": agent_identity(agent), "agent_label": checkpoint,
        "run_group": (agent.metadata or {}).get("run_group"),
        "env_id": agent.env_id, "env_version": env_version(agent.env_id),
        "algo": agent.algo, "loss": agent.loss_name, "seed": agent.seed,
        "norm": tm.to_dict()["norm"], "eps_space": tm.space,
        "checkpoint": checkpoint, "config": agent.config,
        "versions": library_versions(),
        "train_versions": getattr(agent, "versions", None),
    }
