"""certrl sweep: run a YAML grid of train runs and evaluate / certify / attack jobs on Ray."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from certrl.commands.common import positive_int
from certrl.records import write_text_atomic
from certrl.sweeps import expand, load_spec, plan, table_args

DESCRIPTION = """\
Run a sweep spec (YAML; see docs/sweeps.md): train groups (env x algo x loss x
train_eps x seeds, or fine-tunes of another group's runs) and jobs (certrl evaluate,
certify or attack on every trained agent of the groups they name), one Ray task per
unit. Default: a small local Ray instance (--num-cpus, no dashboard); --address joins
an existing cluster (every node needs certrl installed and OUT on a shared file
system).

Each unit writes its own folder OUT/<env>/<group>/<algo>-<loss>[-eps<e>]/seed<k>/
(train/ for the run, <job>/results.jsonl for each job) and, after its results, a
DONE.json marker written atomically. A rerun skips units with a marker; a killed unit
has none and is redone (training resumes from its checkpoint, jobs resume their
results file). A failed unit is retried max_retries times, then reported (and in
OUT/sweep.json); its dependants are not run; the exit code is 1. The jobs' results
files feed certrl table directly; OUT/table.args holds them with one --group per
train group, so `certrl table @OUT/table.args` names each row by its spec entry."""

TABLE_GLOB = "*/*/*/*/*/results.jsonl"  # env/group/tag/seed/job/results.jsonl under OUT
TABLE_ARGS = "table.args"  # certrl table's arguments (files + one --group per spec entry)


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of train / certify / attack runs on Ray",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="sweep spec (YAML)")
    p.add_argument("--out", default=None, help="sweep folder (default: the spec's out)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address to join (e.g. auto or HOST:6379); default: "
                        "start a local Ray instance")
    p.add_argument("--num-cpus", type=positive_int, default=2,
                   help="CPUs of the local Ray instance (one unit per CPU; default 2)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="retries of a failed unit (default: the spec's max_retries, or 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the units and which are done; run nothing (no Ray needed)")
    p.add_argument("--table", action="store_true",
                   help="print certrl table of the results at the end (Markdown)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.out is None and spec.out is None:
        raise ValueError("no output folder: give --out, or out: in the spec")
    if args.max_retries is not None and args.max_retries < 0:
        raise ValueError("--max-retries must be >= 0")
    out = Path(args.out or spec.out).absolute()
    units = expand(spec, out)
    done, todo = plan(units, out)
    print(f"sweep {args.spec}: {len(units)} units, {len(done)} done, {len(todo)} to run "
          f"(out: {out})")
    if args.dry_run:
        for u in units:
            print(f"  {'done' if u in done else 'todo'}  {u.uid}: certrl {' '.join(u.argv)}")
        return 0
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    if todo:
        failed = _run_on_ray(todo, out, args, spec.max_retries)
    _write_status(out, args, units, failed, time.perf_counter() - t0)
    for uid, why in failed.items():
        print(f"failed: {uid}: {why}", file=sys.stderr)
    words = table_args(units, out) if out.exists() else []
    n_files = sum(1 for w in words if w.endswith(".jsonl"))
    hint = f"certrl table {out}/{TABLE_GLOB}"
    if n_files:
        write_text_atomic(out / TABLE_ARGS, "\n".join(words) + "\n")
        hint = f"certrl table @{out / TABLE_ARGS}  (rows named by spec entry)"
    print(f"{len(units) - len(failed)}/{len(units)} units done; {n_files} results files; "
          f"table: {hint}")
    if args.table and n_files:
        from certrl.cli import main

        main(["table", f"@{out / TABLE_ARGS}"])
    return 1 if failed else 0


def _run_on_ray(todo, out: Path, args: argparse.Namespace, spec_retries: int) -> dict:
    """The failures (uid -> reason) of running ``todo`` on Ray."""
    from certrl.sweeps.ray_run import import_ray, run_units

    try:
        import_ray()
    except ImportError as e:
        raise ValueError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    retries = spec_retries if args.max_retries is None else args.max_retries
    res = run_units(todo, out, retries, args.address, args.num_cpus,
                    progress=not args.no_progress)
    return res.failed


def _write_status(out: Path, args, units, failed: dict, wall: float) -> None:
    """OUT/sweep.json: the last invocation's spec, units and failures (atomic)."""
    if not out.exists():
        return
    status = {"spec": str(Path(args.spec).absolute()), "address": args.address,
              "units": len(units), "failed": failed, "wall_s": round(wall, 3),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(out / "sweep.json", json.dumps(status, indent=1) + "\n")
