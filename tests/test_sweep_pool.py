"""benchmarks/sweep.run_pool: one spawned process per task, every task run once, a failed
task named in the error after the others finished."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from sweep import run_pool  # noqa: E402


def write_result(task: dict) -> dict:
    """A task that records its index (runs in a spawned process)."""
    Path(task["dir"]).mkdir(parents=True, exist_ok=True)
    (Path(task["dir"]) / "result.json").write_text(json.dumps({"i": task["i"]}))
    return {}


def fail(task: dict) -> dict:
    if task["i"] == 1:
        raise ValueError("this task fails")
    return write_result(task)


def test_run_pool_runs_every_task_once_and_skips_done_ones(tmp_path):
    tasks = [{"dir": str(tmp_path / f"t{i}"), "i": i} for i in range(3)]
    write_result(tasks[0])  # already done: skipped
    finished = []
    run_pool(write_result, tasks, 2, lambda: finished.append(1))
    assert len(finished) == 2
    assert [json.loads((tmp_path / f"t{i}" / "result.json").read_text())["i"]
            for i in range(3)] == [0, 1, 2]


def test_run_pool_names_the_failed_task_after_the_others(tmp_path):
    tasks = [{"dir": str(tmp_path / f"t{i}"), "i": i} for i in range(3)]
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: .*t1 \(exit 1\)"):
        run_pool(fail, tasks, 2, lambda: None)
    assert (tmp_path / "t0" / "result.json").exists() and (tmp_path / "t2" / "result.json").exists()
