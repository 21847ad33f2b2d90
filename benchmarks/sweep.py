"""What the robust-training sweeps share: train-or-resume one run through the CLI, each
run's result.json (read, written atomically through ``certrl.records``), the runner of a
list of runs (``run_tasks``: in process, or as Ray tasks through the engine of ``certrl
sweep``), and the table plumbing. The statistics (IQM, percentile bootstrap over seeds)
and the rendering are ``certrl.report``'s (``value_table``, ``to_markdown``,
``to_latex``, ``to_csv``): the benchmarks have no renderer or statistics of their own;
``iqm`` and ``bootstrap_ci`` are re-exported from there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from certrl.records import read_rows, write_text_atomic
from certrl.report import Column, Table, bootstrap_ci, iqm, to_csv

__all__ = ["all_results", "bootstrap_ci", "iqm", "make_tasks", "metric_column", "read_result",
           "run_task", "run_tasks", "seed_values", "train_or_resume", "write_result",
           "write_tables"]


def train_or_resume(tdir: Path, argv: list[str]) -> dict:
    """Train ``certrl <argv>`` into ``tdir`` (resume from its checkpoint if one is there; skip
    if ``agent.pt`` exists); return the run's last train.jsonl record (the summary)."""
    from certrl.cli import main

    if not (tdir / "agent.pt").exists():
        if (tdir / "checkpoints" / "latest.pt").exists():
            rc = main(["train", "--out", str(tdir), "--resume", "--no-progress"])
        else:
            rc = main([*argv, "--no-progress"])
        if rc != 0:
            raise RuntimeError(f"training failed: {argv}")
    return read_rows(tdir / "train.jsonl")[-1]


def read_result(rdir: Path) -> dict | None:
    """The run's result.json (None while the run has none)."""
    path = Path(rdir) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_result(rdir: Path, row: dict) -> None:
    """Write the run's result.json atomically (a crash never leaves half a file)."""
    write_text_atomic(Path(rdir) / "result.json", json.dumps(row, indent=1) + "\n")


def all_results(out: Path) -> list[dict]:
    """Every OUT/<env>/<method>/seed<k>/result.json, in path order."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*/*/seed*/result.json"))]


def run_task(task: dict, train_argv: Callable[..., list[str]],
             measure: Callable[..., dict]) -> dict:
    """The task's result.json: read if the run has one, else train (or resume) it through
    the CLI and ``measure(task, agent, summary, argv, t0)`` it (t0: before training); the
    row is written atomically. One torch thread."""
    import torch

    from certrl.agent import load

    torch.set_num_threads(1)
    done = read_result(task["dir"])
    if done is not None:
        return done
    tdir = Path(task["dir"]) / "train"
    argv = train_argv(task["env"], task["method"], task["seed"], tdir, task["steps"])
    t0 = time.perf_counter()
    summary = train_or_resume(tdir, argv)
    row = measure(task, load(tdir), summary, argv, t0)
    write_result(task["dir"], row)
    return row


def make_tasks(out: Path, envs, seeds, methods, steps: Callable[[str], int],
               episodes: int) -> list[dict]:
    """One task per (env, seed, method), seed-major (every method's seed 0 first); each
    run's folder OUT/<env>/<method>/seed<k> is created."""
    tasks = []
    for env in envs:
        for seed in seeds:
            for m in methods:
                d = Path(out) / env / m / f"seed{seed}"
                d.mkdir(parents=True, exist_ok=True)
                tasks.append({"env": env, "method": m, "seed": seed, "dir": str(d),
                              "steps": steps(env), "episodes": episodes})
    return tasks


def run_tasks(fn: Callable[[dict], dict], tasks: list[dict], workers: int,
              after_each: Callable[[], None], address: str | None = None) -> None:
    """Run ``fn`` on the tasks without a result.json: in this process, one after the other,
    when ``workers`` <= 1 and no ``address``; otherwise as Ray tasks (one CPU and one torch
    thread each) on a local Ray instance of ``workers`` CPUs, or on the Ray cluster at
    ``address`` (``certrl.sweeps.ray_run.map_tasks``: the engine of ``certrl sweep``).
    ``after_each`` runs after every finished task. Raises RuntimeError naming the tasks
    that failed, after the others finished (a failed in-process task raises at once)."""
    todo = [t for t in tasks if not (Path(t["dir"]) / "result.json").exists()]
    where = f"Ray at {address}" if address else (
        f"local Ray, {workers} CPUs" if workers > 1 else "in process")
    print(f"{len(tasks)} runs, {len(tasks) - len(todo)} done, {len(todo)} to go ({where})",
          flush=True)
    if workers <= 1 and not address:
        for t in todo:
            fn(t)
            after_each()
        return
    if not todo:
        return
    from certrl.sweeps.ray_run import map_tasks

    res = map_tasks(fn, todo, [t["dir"] for t in todo], address=address,
                    num_cpus=max(workers, 1), after_each=after_each)
    if res.failed:
        raise RuntimeError(f"{len(res.failed)} run(s) failed: " + "; ".join(
            f"{d} ({why})" for d, why in res.failed.items()))


def seed_values(runs: list[dict], value: Callable[[dict, str], float | None],
                key: str) -> dict[int, float | None]:
    """seed -> ``value(run, key)`` over a method's runs (None: not applicable)."""
    return {int(r["seed"]): value(r, key) for r in runs}


def metric_column(key: str, title: str, digits: int, best: bool = True) -> Column:
    """A benchmark column (a result.json key) for ``certrl.report.value_table``."""
    return Column("metric", key, None, title=title, digits=digits,
                  better=None if best else "none")


def write_tables(stem: Path, md: list[str], tex: list[str], tables: list[Table]) -> None:
    """Write STEM.md, STEM.tex and STEM.csv (``certrl.report.to_csv``: one line per cell,
    full precision, per-seed values) atomically."""
    write_text_atomic(stem.with_suffix(".md"), "\n".join(md) + "\n")
    write_text_atomic(stem.with_suffix(".tex"), "\n".join(tex) + "\n")
    write_text_atomic(stem.with_suffix(".csv"), to_csv(tables))
