"""Which torch device certrl computes on: ``--device auto|cpu|cuda[:N]``.

``resolve_device`` turns the user's word into a ``torch.device`` (``auto``: the
first CUDA GPU when ``torch.cuda.is_available()``, else the CPU) and refuses,
with a ValueError naming what is available, a device this machine does not
have. ``device_label`` is what results rows record (``versions["device"]``).

Random numbers that a result depends on (smoothing noise, attack restarts,
stochastic actions, exploration) keep being drawn from CPU generators and are
moved to the device, so a seeded result is the same on every device up to the
floating-point differences of the device's kernels.
"""

from __future__ import annotations

import argparse
import re

import torch

DEVICE_WORDS = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_HELP = ("torch device: auto (cuda when a CUDA GPU is available, else cpu), cpu, cuda "
               "or cuda:N (default auto)")

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``spec`` names (None or "auto": cuda if available, else cpu);
    ValueError for an unknown word or a device this machine does not have."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    word = "auto" if spec is None else str(spec).strip().lower()
    if word == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    if word == "cpu":
        return torch.device("cpu")
    m = _CUDA.match(word)
    if m is None:
        raise ValueError(f"unknown device {spec!r}; use one of {', '.join(DEVICE_WORDS)}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but no CUDA GPU is available here "
                         f"(torch {torch.__version__}, built with CUDA "
                         f"{torch.version.cuda or 'none'}); use --device cpu or auto")
    count = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise ValueError(f"device {spec!r} requested but this machine has {count} CUDA "
                         f"device(s): cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def device_arg(text: str) -> str:
    """argparse type of --device: the word itself, checked for its form only (whether the
    device exists is checked when the command runs, so --help works everywhere)."""
    word = text.strip().lower()
    if word in ("auto", "cpu") or _CUDA.match(word):
        return word
    raise argparse.ArgumentTypeError(
        f"unknown device {text!r}; use one of {', '.join(DEVICE_WORDS)}")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """Register ``--device`` (default auto) on a command's parser."""
    p.add_argument("--device", type=device_arg, default="auto", metavar="DEVICE",
                   help=DEVICE_HELP)


def device_label(device: torch.device | str) -> str:
    """What rows record: "cpu", or "cuda:N (GPU name)"."""
    d = torch.device(device)
    if d.type != "cuda":
        return str(d)
    index = d.index if d.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def module_device(module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu when it has none); for a
    wrapper such as ``bounds.BoundNetwork``, of the module it wraps (``.net``)."""
    if not isinstance(module, torch.nn.Module):
        module = getattr(module, "net", None)
        if not isinstance(module, torch.nn.Module):
            return torch.device("cpu")
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def configure_determinism(device: torch.device) -> None:
    """cuDNN settings that keep certification deterministic on a GPU: no autotuned
    (run-dependent) convolution algorithms, deterministic kernels only. No-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
