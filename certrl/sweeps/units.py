"""Run one sweep unit (a ``certrl`` command) into its folder, with a completion marker.

A unit is done when ``OUT/<uid>/DONE.json`` exists: written atomically (temp file,
fsync, rename) only after the command returned 0, so its results are complete
whenever it exists. A killed unit leaves no marker and is run again: a train run
resumes from its last checkpoint, a job's command resumes its results file unit by
unit (``certrl.records``: finished episodes are kept, none is written twice).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path

from certrl.records import write_text_atomic
from certrl.sweeps.spec import Unit

MARKER = "DONE.json"
LOG = "sweep.log"


def portable(argv, out: str | Path) -> list[str]:
    """The command words with the sweep's OUT written as ``OUT`` (markers stay valid when
    the folder moves)."""
    root = str(Path(out).absolute())
    return [a.replace(root, "OUT") for a in argv]


def marker_path(unit: Unit, out: str | Path) -> Path:
    return Path(out) / unit.uid / MARKER


def is_done(unit: Unit, out: str | Path) -> bool:
    """Whether the unit's marker exists for this very command (ValueError when it was
    finished with another command: the spec changed under an existing OUT)."""
    p = marker_path(unit, out)
    if not p.exists():
        return False
    try:
        done = json.loads(p.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{p} is not a sweep marker: delete it to redo the unit") from None
    if done.get("argv") != portable(unit.argv, out):
        raise ValueError(f"{unit.uid} was finished with another command ({p}): the spec "
                         "changed; use another --out, or delete that folder to redo it")
    return True


def plan(units: list[Unit], out: str | Path) -> tuple[list[Unit], list[Unit]]:
    """(done, todo): the units with a marker for their command, and the rest."""
    done = [u for u in units if is_done(u, out)]
    names = {u.uid for u in done}
    return done, [u for u in units if u.uid not in names]


def _train_words(unit: Unit, out: Path) -> list[str]:
    """The train command to run now: resume from the run's checkpoint when a killed try
    left one; otherwise a fresh run in a cleared folder (a try killed before its first
    checkpoint leaves nothing worth keeping)."""
    tdir = out / unit.uid
    if (tdir / "checkpoints" / "latest.pt").exists():
        return ["train", "--out", str(tdir), "--resume"]
    if tdir.exists():
        shutil.rmtree(tdir)
    return list(unit.argv)


def run_unit(unit: Unit, out: str | Path) -> dict:
    """Run ``certrl <unit.argv>`` in-process (output to OUT/<uid>/sweep.log), then write the
    marker; RuntimeError (with the log's tail) when the command fails. Returns the marker."""
    from certrl.cli import main

    out = Path(out).absolute()
    udir = out / unit.uid
    words = _train_words(unit, out) if unit.kind == "train" else list(unit.argv)
    udir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main([*words, "--no-progress"])
        except Exception as e:  # a bug in the command: keep its message in the log
            print(f"{type(e).__name__}: {e}")
            rc = 1
    text = buf.getvalue()
    with open(udir / LOG, "a") as f:
        f.write(f"$ certrl {' '.join(words)}\n{text}")
    if rc != 0:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise RuntimeError(f"{unit.uid}: certrl {words[0]} exited {rc}: {tail}")
    marker = {"uid": unit.uid, "kind": unit.kind, "argv": portable(unit.argv, out),
              "ran": portable(words, out), "results": unit.results,
              "wall_s": round(time.perf_counter() - t0, 3), "host": platform.node(),
              "pid": os.getpid(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "attempt": uuid.uuid4().hex}
    write_text_atomic(udir / MARKER, json.dumps(marker, indent=1) + "\n")
    return marker


def table_args(units: list[Unit], out: str | Path) -> list[str]:
    """``certrl table``'s arguments for a sweep, one per line of OUT/table.args: every
    finished job's results file, then one ``--group NAME=AGENT,...`` per train group (the
    spec entry's name; ``name:env:tag`` when the entry spans several envs or settings), so
    each row is named by its spec entry, not by its run-group id. Members are the agent
    labels the results record (read from each file's first row)."""
    out = Path(out).absolute()
    files = results_files(units, out)
    members: dict[tuple[str, str, str], list[str]] = {}
    for f in files:
        env, group, tag = f.relative_to(out).parts[:3]
        label = _agent_label(f)
        if label is not None and label not in members.setdefault((env, group, tag), []):
            members[(env, group, tag)].append(label)
    per_name: dict[str, int] = {}
    for _, group, _ in members:
        per_name[group] = per_name.get(group, 0) + 1
    words = [str(f) for f in files]
    for (env, group, tag), labels in members.items():
        name = group if per_name[group] == 1 else f"{group}:{env}:{tag}"
        words += ["--group", f"{name}={','.join(labels)}"]
    return words


def _agent_label(path: Path) -> str | None:
    """The agent label of a results file's first row (None when it has none)."""
    with open(path) as f:
        first = f.readline().strip()
    try:
        row = json.loads(first) if first else {}
    except ValueError:
        return None
    label = row.get("agent_label") or row.get("checkpoint")
    return str(label) if label and "," not in str(label) else None


def results_files(units: list[Unit], out: str | Path) -> list[Path]:
    """The JSON lines files of the finished jobs (what ``certrl table`` reads)."""
    return [Path(out) / u.results for u in units
            if u.results and marker_path(u, out).exists()]
