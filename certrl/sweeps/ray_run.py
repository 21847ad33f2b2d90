"""Run sweep units as Ray tasks: a local Ray instance, or an existing cluster (address).

Each unit is one task (1 CPU) that waits for the tasks of its dependencies (Ray
resolves the ObjectRefs passed as arguments); Ray retries a failed task (an exception
or a dead worker) up to ``max_retries`` times. Ray is an optional dependency
(``pip install 'certrl[sweep]'``), imported only here and only when a sweep runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from certrl.sweeps.spec import Unit
from certrl.sweeps.units import run_unit

LOCAL_CPUS = 2  # a local instance stays small (a laptop)


@dataclass
class Outcome:
    """What happened to the units a sweep ran: finished markers, and failures
    (uid -> one-line reason; "dependency ... failed" for units that could not start)."""

    finished: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def import_ray() -> ModuleType:
    """The ray module, or a clear ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError("certrl sweep needs Ray: pip install 'certrl[sweep]' "
                          "(or pip install 'ray>=2.9')") from None
    return ray


def start_ray(address: str | None, num_cpus: int = LOCAL_CPUS,
              env_vars: dict[str, str] | None = None) -> ModuleType:
    """Connect to the cluster at ``address``, or start a small local instance (no
    dashboard, worker output not forwarded: each unit logs to its own folder).
    ``env_vars``: set in every worker (the job's runtime environment)."""
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    extra = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    if address:
        ray.init(address=address, log_to_driver=False, **extra)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING", **extra)
    return ray


def _task(unit: Unit, out: str, *deps) -> dict:
    """The Ray task body: ``deps`` are the finished dependencies' markers (unused; their
    presence is the ordering)."""
    import torch

    torch.set_num_threads(1)
    return run_unit(unit, out)


def run_units(todo: list[Unit], out: str | Path, max_retries: int, address: str | None = None,
              num_cpus: int = LOCAL_CPUS, progress: bool = True) -> Outcome:
    """Submit every unit of ``todo`` (dependencies first; a dependency not in ``todo`` is
    finished already), wait for all of them; the Outcome. Ray is started (or joined) and
    shut down here, unless the caller's process is connected to Ray already."""
    ray = import_ray()
    own = not ray.is_initialized()
    if own:
        start_ray(address, num_cpus)
    try:
        remote = ray.remote(num_cpus=1, max_retries=max_retries,
                            retry_exceptions=True)(_task)
        refs: dict[str, object] = {}
        for u in todo:
            deps = [refs[d] for d in u.deps if d in refs]
            refs[u.uid] = remote.remote(u, str(Path(out).absolute()), *deps)
        return collect(ray, refs, {u.uid: u for u in todo}, progress)
    finally:
        if own:
            ray.shutdown()


def failure_text(e: Exception) -> str:
    """One line naming a failed task's error (Ray wraps it: its ``cause``)."""
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}".replace("\n", " | ")


def collect(ray, refs: dict, units: dict[str, Unit], progress: bool = True) -> Outcome:
    """Wait for every task, in completion order, recording markers and failures."""
    res = Outcome()
    uid_of = {ref: uid for uid, ref in refs.items()}
    pending = list(refs.values())
    bar = tqdm(total=len(pending), desc="sweep", unit="unit", disable=not progress)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        uid = uid_of[ready[0]]
        try:
            res.finished.append(ray.get(ready[0]))
        except Exception as e:  # the task's error, after its retries, or a dependency's
            res.failed[uid] = failure_text(e)
        bar.update(1)
        bar.set_postfix(failed=len(res.failed))
    bar.close()
    for uid in refs:  # submission order: dependencies first
        bad = [d for d in units[uid].deps if d in res.failed]
        if uid in res.failed and bad:
            res.failed[uid] = f"not run: dependency {bad[0]} failed"
    return res


def _call(fn: Callable[[dict], dict], item: dict) -> dict:
    """The Ray task body of ``map_tasks``: one torch thread, then ``fn(item)``."""
    import torch

    torch.set_num_threads(1)
    return fn(item)


def driver_pythonpath() -> str:
    """The driver's import path (its existing folders) as a PYTHONPATH: workers can then
    import the modules the driver's functions come from (a benchmark script's folder,
    a test module), which Ray pickles by reference."""
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))


def map_tasks(fn: Callable[[dict], dict], items: Sequence[dict], labels: Sequence[str],
              max_retries: int = 0, address: str | None = None, num_cpus: int = LOCAL_CPUS,
              after_each: Callable[[], None] | None = None,
              progress: bool = True) -> Outcome:
    """Run ``fn(item)`` for every item as one Ray task (1 CPU, one torch thread) on a local
    instance of ``num_cpus`` CPUs or the cluster at ``address``; independent tasks, each
    retried up to ``max_retries`` times. ``after_each`` runs in the driver after every
    finished task (success or failure). Returns the Outcome: the tasks' return values in
    completion order, and failures keyed by the item's label. The benchmark scripts'
    runner (``benchmarks/sweep.py``); ``certrl sweep`` uses ``run_units``."""
    ray = import_ray()
    own = not ray.is_initialized()
    if own:
        start_ray(address, num_cpus, {"PYTHONPATH": driver_pythonpath()})
    try:
        remote = ray.remote(num_cpus=1, max_retries=max_retries,
                            retry_exceptions=True)(_call)
        label_of = {remote.remote(fn, it): lab for it, lab in zip(items, labels, strict=True)}
        res, pending = Outcome(), list(label_of)
        bar = tqdm(total=len(pending), desc="tasks", unit="task", disable=not progress)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                res.finished.append(ray.get(ready[0]))
            except Exception as e:  # the task's error, after its retries
                res.failed[label_of[ready[0]]] = failure_text(e)
            bar.update(1)
            if after_each is not None:
                after_each()
        bar.close()
        return res
    finally:
        if own:
            ray.shutdown()
