"""The checkpoint file format: one torch file, loadable with ``weights_only=True``.

Layout (a plain dict of tensors, dicts, lists, strings and numbers)::

    {"format": "certrl-checkpoint", "format_version": 1,
     "nets": {name: {"spec": {...}, "state_dict": {...}}},
     "algo", "loss", "env_id", "env_version", "env_family", "obs_shape",
     "action_space": {...}, "preprocessing": {...}, "obs_rms": {...} | None,
     "threat_model": {...}, "config": {...}, "seed", "versions": {...},
     "metadata": {...}, "reward_scale": float (optional; absent = 1.0),
     "train_state": {...} (optional, for --resume)}

``reward_scale`` (DQN): rewards were multiplied by it in the TD target, so the stored
Q-network outputs ~ reward_scale x the Q values in true reward units
(``certrl.Agent.reward_scale``). ``metadata`` may hold ``init_agent`` (fine-tuned runs) and
``selection`` (best-checkpoint selection); see docs/training.md.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import torch

CERTRL_VERSION = "0.1.0"  # certrl.__version__ (kept here: io sits below the package root)
FORMAT = "certrl-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("nets", "algo", "env_id", "obs_shape", "action_space", "preprocessing",
            "threat_model", "config", "seed", "versions")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, foreign or inconsistent."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (absent ones omitted)."""
    out = {"certrl": CERTRL_VERSION, "torch": str(torch.__version__),
           "gymnasium": gymnasium.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for mod in ("ale_py", "mujoco"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return out


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plain(obj, where: str = "checkpoint"):
    """Convert to what ``torch.load(weights_only=True)`` accepts: tensors, dicts,
    lists, str, int, float, bool, None (numpy scalars/arrays and tuples converted)."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")


def umask() -> int:
    """The process umask (mkstemp creates 0600 files; give them the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint dict (adds the format marker) atomically."""
    data = plain(dict(payload))
    data["format"] = FORMAT
    data["format_version"] = FORMAT_VERSION
    atomic_torch_save(data, path)


def _load_error_detail(e: Exception) -> str:
    """One line on why torch could not load a file, without torch's advice to retry with
    ``weights_only=False`` (which would run arbitrary code from the file: certrl never does)."""
    text = str(e)
    if "weights_only" not in text and "Weights only" not in text:
        line = text.splitlines()[0] if text.strip() else type(e).__name__
        return line[:200]
    detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text \
        else ""
    detail = " ".join(detail.split())
    m = re.match(r"Unsupported global: GLOBAL (\S+)", detail)
    if m:
        return (f"it stores a Python object ({m.group(1)}), and certrl checkpoints hold only "
                f"tensors, numbers, strings, lists and dicts")
    m = re.match(r"(Unsupported operand \S+)", detail)
    if m:
        return f"its contents are not a torch pickle ({m.group(1).lower()})"
    return "its contents are not a torch pickle of tensors, numbers and strings"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint; ``CheckpointError`` names what is wrong."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory, not a file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds on bad files
        raise CheckpointError(
            f"{str(p)!r} is not a readable certrl checkpoint (corrupt, truncated or not a "
            f"torch file): {_load_error_detail(e)}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(p)!r} is a torch file but not a certrl checkpoint (no "
            f"'format: {FORMAT}' marker)"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(p)!r} has checkpoint format version {version!r}; this certrl reads "
            f"versions <= {FORMAT_VERSION} (upgrade certrl)"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{str(p)!r} lacks required fields {missing}")
    return data
