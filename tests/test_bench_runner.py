"""benchmarks/sweep.run_tasks, the benchmark scripts' runner: in process (workers 1) or as
Ray tasks (workers > 1, ``certrl.sweeps.ray_run.map_tasks``); every task without a
result.json run once, ``after_each`` after every task, failed tasks named after the others
finished."""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from sweep import run_tasks  # noqa: E402


def write_result(task: dict) -> dict:
    """A task that records its index and the process that ran it."""
    Path(task["dir"]).mkdir(parents=True, exist_ok=True)
    (Path(task["dir"]) / "result.json").write_text(json.dumps({"i": task["i"],
                                                               "pid": os.getpid()}))
    return {}


def fail(task: dict) -> dict:
    if task["i"] == 1:
        raise ValueError("this task fails")
    return write_result(task)


def results(tmp_path, n: int) -> list[dict]:
    return [json.loads((tmp_path / f"t{i}" / "result.json").read_text()) for i in range(n)]


def test_in_process_runner_runs_every_task_once_and_skips_done_ones(tmp_path):
    tasks = [{"dir": str(tmp_path / f"t{i}"), "i": i} for i in range(3)]
    (tmp_path / "t0").mkdir()  # already done: skipped
    (tmp_path / "t0" / "result.json").write_text(json.dumps({"i": 0, "pid": -1}))
    finished = []
    run_tasks(write_result, tasks, 1, lambda: finished.append(1))
    assert len(finished) == 2
    rows = results(tmp_path, 3)
    assert [r["i"] for r in rows] == [0, 1, 2]
    assert rows[0]["pid"] == -1 and rows[1]["pid"] == rows[2]["pid"] == os.getpid()


def test_in_process_runner_raises_the_tasks_error(tmp_path):
    tasks = [{"dir": str(tmp_path / f"t{i}"), "i": i} for i in range(3)]
    with pytest.raises(ValueError, match="this task fails"):
        run_tasks(fail, tasks, 1, lambda: None)


@pytest.mark.slow
def test_ray_runner_runs_tasks_in_workers_and_names_the_failed_one(tmp_path, keep_threads):
    """workers 2: Ray tasks on a local instance (other processes), the test module's own
    functions importable there (the driver's import path is the workers' PYTHONPATH)."""
    pytest.importorskip("ray", reason="Ray is optional: pip install 'certrl[sweep]'")
    tasks = [{"dir": str(tmp_path / f"t{i}"), "i": i} for i in range(4)]
    write_result(tasks[3])
    finished = []
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: .*t1 \(ValueError: this task"):
        run_tasks(fail, tasks, 2, lambda: finished.append(1))
    assert len(finished) == 3  # t3 was done already
    assert not (tmp_path / "t1" / "result.json").exists()
    rows = [json.loads((tmp_path / f"t{i}" / "result.json").read_text()) for i in (0, 2, 3)]
    assert rows[0]["pid"] != os.getpid() and rows[1]["pid"] != os.getpid()
    assert rows[2]["pid"] == os.getpid()
