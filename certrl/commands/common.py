"""Helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import torch

from certrl.threat import check_eps


def eps_arg(text: str) -> float:
    """argparse type for eps: a finite number >= 0 (also '3/255')."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"eps must be a number, got {text!r}") from None
    try:
        return check_eps(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_at_least(text: str, low: int, what: str) -> int:
    """int(text) if it is >= ``low``; else argparse's error "expected <what>, got ..."."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return int_at_least(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return int_at_least(text, 0, "an integer >= 0")


def set_threads(n: int | None) -> None:
    """Torch intra-op threads (1 is fastest for small MLPs on shared CPUs)."""
    if n is not None and n > 0:
        torch.set_num_threads(n)


def default_out(kind: str, ckpt: str, *parts) -> Path:
    """results/<kind>-<checkpoint stem>[-parts]-<timestamp>.jsonl"""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ckpt).stem)
    bits = [kind, stem, *[re.sub(r"[^A-Za-z0-9_.-]+", "_", str(p)) for p in parts]]
    return Path("results") / ("-".join(bits) + time.strftime("-%Y%m%d-%H%M%S") + ".jsonl")


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="overwrite --out even if it holds other results (default: refuse a "
                        "file of another kind or settings, resume one of the same)")


def truncation_note(summary: dict) -> str:
    """', k of n episodes cut by --max-steps' when some were."""
    k = summary.get("truncated", 0)
    return f" ({k} of {summary['episodes']} episodes cut by --max-steps)" if k else ""
