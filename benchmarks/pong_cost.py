"""Measured CPU cost of a paper-protocol Pong run: vanilla DQN, then robust fine-tunes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pong_cost.py            # ~55 min here, niced
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pong_cost.py --quick    # smoke run (noise)
    .venv/bin/python benchmarks/pong_cost.py --device cuda                # one GPU: wall time

Every number is CPU time of ``certrl train`` subprocesses (1 torch thread, ``--no-progress``),
so the other jobs of a shared machine change it little; with ``--device cuda`` it is wall
time (the work is on the GPU). Each phase runs twice, ``--short``
and ``--short + --steps`` env steps after the same warm-up, and the cost per env step is the
difference of the two runs' CPU times divided by ``--steps``: start-up, imports, the warm-up
and the final save cancel, what remains is the steady state (acting, replay, updates).

Phases (the settings are certrl's defaults, ``--set learning_starts`` shortened):
  * vanilla: ``certrl train --env ALE/Pong-v5 --algo dqn`` (Atari defaults: an update of a
    batch of 32 every 4 env steps).
  * fine-tunes from that vanilla agent (``--init-from``, the Atari fine-tuning defaults of
    ``certrl.algos.dqn.FINETUNE_DEFAULTS``: an update every env step, batch 32) with each
    robust loss at eps 1/255 (RADIAL / CAR-DQN's Pong eps): RADIAL (IBP), CAR (IBP),
    CAR (PGD), SA (CROWN-IBP), WocaR (IBP), and the vanilla fine-tune control.
The projection multiplies by the protocol's lengths: ``--base-steps`` (default 6M env
steps, RADIAL-DQN's default training length) and ``--finetune-steps`` (4.5M, CAR-DQN and
RADIAL-DQN's README fine-tunes). Prints a markdown table; ``--json PATH`` writes the raw
numbers with the command, versions and host.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = "ALE/Pong-v5"
EPS = 1 / 255
LOSSES = {
    "vanilla-ft": [],
    "radial": ["--loss", "radial"],
    "car-ibp": ["--loss", "car", "--solver", "ibp"],
    "car-pgd": ["--loss", "car", "--solver", "pgd"],
    "sa": ["--loss", "sa", "--solver", "crown-ibp"],
    "wocar": ["--loss", "wocar"],
}


def child_cpu() -> float:
    """CPU seconds (user + system) of every finished child process so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train_seconds(argv: list[str], device: str = "cpu") -> float:
    """Seconds of one ``certrl train`` subprocess (raises if it fails): CPU time (user +
    system) on ``device="cpu"``; wall time on a GPU, where the work is not CPU time."""
    t0, w0 = child_cpu(), time.perf_counter()
    cmd = [sys.executable, "-m", "certrl.cli", *argv, "--no-progress", "--threads", "1",
           "--device", device]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return child_cpu() - t0 if device == "cpu" else time.perf_counter() - w0


def per_step(base: list[str], out: Path, warm: int, short: int, steps: int,
             device: str = "cpu") -> float:
    """Seconds (``train_seconds``: CPU, or wall on a GPU) per env step in the steady state:
    (t(short + steps) - t(short)) / steps, both runs with the same ``learning_starts``
    warm-up and no checkpoint or eval."""
    common = ["--set", f"learning_starts={warm}", "--checkpoint-every", str(10 ** 9)]
    sec = [train_seconds([*base, "--steps", str(n), "--out", str(out / f"n{n}"), *common],
                         device)
           for n in (short, short + steps)]
    return (sec[1] - sec[0]) / steps


def measure(args: argparse.Namespace, work: Path) -> dict:
    """CPU seconds per env step of the vanilla run and of each fine-tune."""
    van = ["train", "--env", ENV, "--algo", "dqn", "--seed", "0"]
    out = {"vanilla": per_step(van, work / "vanilla", args.warm, args.short, args.steps,
                               args.device)}
    clock = "CPU" if args.device == "cpu" else "wall"
    print(f"vanilla: {out['vanilla'] * 1e3:.1f} ms {clock} per env step", flush=True)
    init = work / "vanilla" / f"n{args.short + args.steps}"
    for name in args.losses:
        ft = ["train", "--init-from", str(init), "--seed", "0", "--eval-every", "0",
              *LOSSES[name], *(["--train-eps", f"{EPS}"] if LOSSES[name] else [])]
        out[name] = per_step(ft, work / name, args.warm, args.short, args.steps, args.device)
        print(f"{name}: {out[name] * 1e3:.1f} ms {clock} per env step", flush=True)
    return out


def table(cost: dict, base_steps: int, ft_steps: int) -> str:
    """Markdown: ms per env step, ratio to the vanilla fine-tune, projected core-hours."""
    lines = ["| phase | ms / env step | x vanilla fine-tune | env steps | hours |",
             "|---|---:|---:|---:|---:|"]
    ref = cost.get("vanilla-ft")
    total = 0.0
    for name, c in cost.items():
        n = base_steps if name == "vanilla" else ft_steps
        hours = c * n / 3600
        total += hours
        ratio = f"{c / ref:.2f}" if ref and name != "vanilla" else "-"
        lines.append(f"| {name} | {c * 1e3:.1f} | {ratio} | {n:,} | {hours:.0f} |")
    lines.append(f"| total (one seed, every phase) | | | | {total:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", type=int, default=100, help="learning_starts of every run")
    p.add_argument("--short", type=int, default=150, help="env steps of the shorter run")
    p.add_argument("--steps", type=int, default=300, help="extra env steps measured")
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--base-steps", type=int, default=6_000_000)
    p.add_argument("--finetune-steps", type=int, default=4_500_000)
    p.add_argument("--quick", action="store_true", help="tiny runs (a smoke test)")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--device", default="cpu",
                   help="certrl train --device; on a GPU the cost is wall time, not CPU time")
    args = p.parse_args(argv)
    if args.quick:
        args.warm, args.short, args.steps = 20, 30, 20
        args.losses = ["vanilla-ft", "radial"]
    if min(args.warm, args.short - args.warm, args.steps) < 1:
        p.error("need --warm >= 1, --short > --warm and --steps >= 1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pong_cost_") as tmp:
        cost = measure(args, Path(tmp))
    md = table(cost, args.base_steps, args.finetune_steps)
    clock = "CPU time" if args.device == "cpu" else f"wall time on {args.device}"
    print(f"\nPong DQN, {clock} per env step ({platform.machine()}, 1 torch thread), "
          f"steady state over {args.steps} env steps after {args.short}:\n\n{md}")
    print(f"\nwall time of this benchmark: {time.perf_counter() - t0:.0f} s")
    if args.json:
        import torch

        rec = {"command": sys.argv, "device": args.device,
               "clock": "cpu" if args.device == "cpu" else "wall",
               "s_per_env_step" if args.device != "cpu" else "cpu_s_per_env_step": cost,
               "warm": args.warm,
               "short": args.short, "steps": args.steps, "base_steps": args.base_steps,
               "finetune_steps": args.finetune_steps, "eps": EPS,
               "versions": {"torch": torch.__version__, "python": platform.python_version()},
               "host": platform.node()}
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
