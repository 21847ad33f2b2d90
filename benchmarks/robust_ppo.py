"""Robust PPO benchmark (issue 12): vanilla vs SA-PPO vs CAR-PPO vs WocaR-PPO on Hopper-v5
(the references' protocol) and InvertedPendulum-v5 (the fast check); returns under the
references' attacks, their per-seed worst, and certified action-deviation bounds; IQM and
95% bootstrap CIs over seeds.

    # the full protocol (Hopper: 2M env steps, 5 seeds, 50 episodes, reference budgets)
    .venv/bin/python benchmarks/robust_ppo.py --envs Hopper-v5 --seeds 0 1 2 3 4 --workers 16
    # the pilot committed as benchmarks/results/robust_ppo_hopper_pilot.*
    .venv/bin/python benchmarks/robust_ppo.py --envs Hopper-v5 --seeds 0 --steps 20000 \
        --episodes 3 --cert-episodes 1 --rs-budget 2048 --sarl-budget 2048 \
        --paad-budget 2048 --out runs/robust_ppo_hopper_pilot --suffix _pilot --workers 1

Each run trains through ``certrl train`` into OUT/<env>/<method>/seed<k>/train (resumable:
an interrupted training resumes from its checkpoint) and is then measured column by column,
each column one in-process ``certrl evaluate`` / ``attack`` / ``certify`` command writing
OUT/<env>/<method>/seed<k>/<column>.jsonl (those commands resume unit by unit); a finished
column is recorded in columns.json with its CPU seconds (``time.process_time`` of this
process around the command: attacker training included) and skipped on a rerun; result.json
is written when every column is done. Columns (deterministic mean actions, env seeds
1000.., attacks l_inf at ``eval_eps`` in running-mean/std normalized observation units):
natural, random, critic, MAD, RS, RS+MAD, SA-RL, PA-AD (``certrl attack``, docs/attacks.md),
worst (per episode seed the lowest return over the attack columns) and the certified bound
on the action mean's deviation (``certrl certify --method crown``, mean over visited states
of max_k max(UB_k - mu_k, mu_k - LB_k); no attack can move an action mean further).
Tables: benchmarks/results/<stem><suffix>.{md,tex,csv}, stem per env (ENVS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from certrl.report import Style, to_latex, to_markdown, value_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    all_results,
    make_tasks,
    metric_column,
    read_result,
    run_tasks,
    seed_values,
    train_or_resume,
    write_result,
    write_tables,
)

RESULTS = Path(__file__).resolve().parent / "results"
EPISODE_SEED = 1000
# InvertedPendulum: eval eps 0.5 (MAD at 0.1-0.3 leaves a 50k-step vanilla agent at 1000),
# train eps 0.1 (docs/robust-training.md "PPO check"). Hopper: SA-PPO's / CAR's / WocaR's
# Hopper setting, robust_ppo_eps 0.075 in normalized-state units for training and attacks,
# 2M env steps (train_steps 976 x 2048), 50 evaluation episodes (SA-PPO's attack scans).
ENVS = {
    "InvertedPendulum-v5": {"steps": 50_000, "train_eps": 0.1, "eval_eps": 0.5,
                            "episodes": 10, "cert_episodes": 5, "stem": "robust_ppo_pendulum"},
    "Hopper-v5": {"steps": 2_000_000, "train_eps": 0.075, "eval_eps": 0.075,
                  "episodes": 50, "cert_episodes": 10, "stem": "robust_ppo_hopper"},
}
# The references' Hopper settings (docs/robust-training.md "Robust PPO vs the references"):
# SA-PPO convex relaxation (crown-ibp) with its Hopper reg 0.03; CAR-PPO car_pgd (10 steps,
# reg 0.3, lambda 1000, clean loss added: the loss defaults); WocaR-PPO with SGLD (the
# loss defaults: q_weight 0 -> 0.8, reg 0.1). Every loss ramps eps over 75% of the run.
METHODS = {
    "vanilla": ("Vanilla PPO", []),
    "sa": ("SA-PPO (convex relax.)", ["--loss", "sa", "--solver", "crown-ibp", "--reg", "0.03"]),
    "car": ("CAR-PPO (PGD)", ["--loss", "car", "--solver", "pgd", "--pgd-steps", "10"]),
    "wocar": ("WocaR-PPO (SGLD)", ["--loss", "wocar", "--solver", "sgld"]),
}
# Attack columns: (title, certrl attack words without eps / episodes / out). rs and rs+mad
# share one Sarsa attacker (its file is rs.pt), sa-rl and pa-ad have their own.
ATTACKS = {
    "random": ("Random", ["--attack", "random"]),
    "critic": ("Critic", ["--attack", "critic"]),
    "mad": ("MAD", ["--attack", "mad", "--steps", "10"]),
    "rs": ("RS", ["--attack", "rs"]),
    "rs+mad": ("RS+MAD", ["--attack", "rs+mad"]),
    "sa-rl": ("SA-RL", ["--attack", "sa-rl"]),
    "pa-ad": ("PA-AD", ["--attack", "pa-ad"]),
}
BUDGET_FLAGS = {"rs": "rs_budget", "rs+mad": "rs_budget", "sa-rl": "sarl_budget",
                "pa-ad": "paad_budget"}
ATTACKER_FILE = {"rs": "rs", "rs+mad": "rs", "sa-rl": "sa-rl", "pa-ad": "pa-ad"}
COLUMNS = ["natural", *ATTACKS, "cert"]  # the measured columns, in order ("worst" derived)


def train_argv(env: str, method: str, seed: int, out: Path, steps: int) -> list[str]:
    """``certrl train`` words of one run (robust losses at the env's train eps)."""
    argv = ["train", "--env", env, "--algo", "ppo", "--steps", str(steps), "--seed", str(seed),
            "--out", str(out)]
    if METHODS[method][1]:
        argv += METHODS[method][1] + ["--train-eps", str(ENVS[env]["train_eps"])]
    return argv


def column_argv(col: str, agent: Path, rdir: Path, task: dict) -> list[str]:
    """The ``certrl`` words of one measured column of a run (writes RDIR/<col>.jsonl)."""
    eps, out = str(ENVS[task["env"]]["eval_eps"]), str(Path(rdir) / f"{col}.jsonl")
    common = ["--seed", str(EPISODE_SEED), "--out", out, "--no-progress"]
    if col == "natural":
        return ["evaluate", str(agent), "--episodes", str(task["episodes"]), *common]
    if col == "cert":
        return ["certify", str(agent), "--method", "crown", "--eps", eps, "--no-radius",
                "--no-state-rows", "--episodes", str(task["cert_episodes"]), *common]
    argv = ["attack", str(agent), *ATTACKS[col][1], "--eps", eps,
            "--episodes", str(task["episodes"]), *common]
    if col in BUDGET_FLAGS:
        argv += ["--budget", str(task["budgets"][BUDGET_FLAGS[col]]),
                 "--attacker-seed", str(task["seed"]),
                 "--attacker", str(Path(rdir) / "attackers" / f"{ATTACKER_FILE[col]}.pt")]
    return argv


def column_summary(col: str, path: Path) -> dict:
    """A finished column's values from its JSON lines: per-episode-seed returns (attack /
    evaluate) or the certified deviation (certify), steps played, attacker fields."""
    from certrl.records import read_rows

    rows = [r for r in read_rows(path) if r.get("record") == "episode"]
    if not rows:
        raise RuntimeError(f"{path}: no episode rows")
    if col == "cert":
        dev = [r["mean_max_deviation"] for r in rows]
        return {"value": sum(dev) / len(dev), "max": max(r["max_max_deviation"] for r in rows),
                "states": sum(r["length"] for r in rows)}
    ret = {str(r["episode_seed"]): float(r["return"]) for r in rows}  # JSON keys
    out = {"value": sum(ret.values()) / len(ret), "returns": ret,
           "steps": sum(int(r["length"]) for r in rows)}
    out.update({k: v for k, v in rows[0].items() if k.startswith("attacker_")})
    return out


def worst_returns(cols: dict) -> dict[str, float]:
    """Per episode seed, the lowest return over the attack columns present in ``cols``."""
    seeds = set.intersection(*(set(cols[a]["returns"]) for a in ATTACKS if a in cols))
    return {s: min(float(cols[a]["returns"][s]) for a in ATTACKS if a in cols)
            for s in sorted(seeds)}


def measure_columns(task: dict, agent: Path) -> dict:
    """Run the columns of ``task["columns"]`` not yet in RDIR/columns.json, one at a time;
    after each, columns.json is rewritten atomically (its CPU / wall seconds included).
    Finished columns are summarized again from their JSON lines files."""
    from certrl.cli import main
    from certrl.records import write_text_atomic

    rdir = Path(task["dir"])
    path = rdir / "columns.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for col in task["columns"]:
        if col in done:  # values re-read from the column's file; its CPU seconds kept
            done[col].update(column_summary(col, rdir / f"{col}.jsonl"))
            continue
        argv = column_argv(col, agent, rdir, task)
        c0, w0 = time.process_time(), time.perf_counter()
        if main(argv) != 0:
            raise RuntimeError(f"column {col} failed: certrl {' '.join(argv)}")
        done[col] = {**column_summary(col, rdir / f"{col}.jsonl"),
                     "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                     "command": "certrl " + " ".join(argv)}
        write_text_atomic(path, json.dumps(done, indent=1) + "\n")
        print(f"{task['env']} {task['method']} seed {task['seed']}: {col} "
              f"{done[col]['value']:.3g} ({done[col]['cpu_s']:.0f} CPU s)", flush=True)
    return done


def train_timed(tdir: Path, argv: list[str]) -> tuple[dict, float | None]:
    """Train (or resume) one run; (its train.jsonl summary, CPU seconds of the training).
    The CPU seconds are this process's, kept in train/cpu_s.json; an agent trained outside
    the benchmark has them only if that file was written by its launcher (else None)."""
    from certrl.records import write_text_atomic

    cpu_file = tdir / "cpu_s.json"
    fresh = not (tdir / "agent.pt").exists()
    c0 = time.process_time()
    summary = train_or_resume(tdir, argv)
    if fresh:
        prev = json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.exists() else 0.0
        cpu = prev + time.process_time() - c0
        write_text_atomic(cpu_file, json.dumps({"cpu_s": cpu, "how": "process_time"}) + "\n")
    return summary, (json.loads(cpu_file.read_text())["cpu_s"] if cpu_file.exists() else None)


# Deliberate parallel (duplicates lists it): sweep.run_task's resume protocol, but training is
# timed (train_timed) and columns are measured from the checkpoint file.
def run_one(task: dict) -> dict:
    """Train (or resume) and measure one (env, method, seed); writes result.json."""
    import torch

    torch.set_num_threads(1)
    done = read_result(task["dir"])
    if done is not None:
        return done
    tdir = Path(task["dir"]) / "train"
    argv = train_argv(task["env"], task["method"], task["seed"], tdir, task["steps"])
    summary, train_cpu = train_timed(tdir, argv)
    cols = measure_columns(task, tdir / "agent.pt")
    row = make_row(task, cols, summary, train_cpu, argv)
    write_result(task["dir"], row)
    return row


def make_row(task: dict, cols: dict, summary: dict, train_cpu: float | None,
             argv: list[str]) -> dict:
    """The result.json row: every column's value, CPU seconds and the settings."""
    env, m = task["env"], task["method"]
    row = {"env": env, "method": m, "label": METHODS[m][0], "seed": task["seed"],
           "eval_eps": ENVS[env]["eval_eps"], "train_eps": ENVS[env]["train_eps"],
           "episodes": task["episodes"], "cert_episodes": task["cert_episodes"],
           "budgets": task["budgets"], "train_steps": summary.get("steps"),
           "train_wall_s": summary.get("wall_s"), "train_cpu_s": train_cpu,
           "train_last20_return": summary.get("last20_return"),
           "train_command": "certrl " + " ".join(argv), "columns": cols,
           "host_cpus": os.cpu_count()}
    for c, v in cols.items():
        row[c] = v["value"]
        row[f"cpu_s_{c}"] = v["cpu_s"]
    if any(a in cols for a in ATTACKS):
        w = worst_returns(cols)
        row["worst"], row["worst_returns"] = sum(w.values()) / len(w), w
    return row


def value_columns() -> list:
    """The return / bound columns of the main table (``certrl.report`` columns)."""
    from certrl.report import Column

    cols = [metric_column("natural", "Natural", 1)]
    cols += [metric_column(a, t, 1) for a, (t, _) in ATTACKS.items()]
    cols += [metric_column("worst", "Worst", 1),
             Column("metric", "cert", None, title="Cert. action dev. (CROWN)", digits=4,
                    better="lower")]
    return cols


def cost_columns() -> list:
    """CPU minutes of the training and of every measured column."""
    return [metric_column("train_cpu_min", "Train", 1, best=False)] + [
        metric_column(f"cpu_min_{c}", "Cert." if c == "cert" else
                      "Natural" if c == "natural" else ATTACKS[c][0], 2, best=False)
        for c in COLUMNS]


def method_rows(rows: list[dict], columns: list) -> list[tuple[str, dict]]:
    """(label, {column: {seed: value}}) per method with runs, in METHODS order."""
    out = []
    for m, (label, _) in METHODS.items():
        mr = [cpu_minutes(r) for r in rows if r["method"] == m]
        if mr:
            out.append((f"{label}, {len(mr)} seed{'s' if len(mr) > 1 else ''}",
                        {c: seed_values(mr, lambda r, k: r.get(k), c.name) for c in columns}))
    return out


def cpu_minutes(row: dict) -> dict:
    """The row with its CPU seconds also in minutes (train_cpu_min, cpu_min_<column>)."""
    r = dict(row)
    if r.get("train_cpu_s") is not None:
        r["train_cpu_min"] = r["train_cpu_s"] / 60
    for c in COLUMNS:
        if f"cpu_s_{c}" in r:
            r[f"cpu_min_{c}"] = r[f"cpu_s_{c}"] / 60
    return r


def full_cost(rows: list[dict], env: str, seeds: int) -> dict[str, float]:
    """Extrapolated CPU core-hours of the full protocol (ENVS[env] steps and episodes, the
    reference attacker budgets, every episode at the 1000-step cap) from measured runs:
    training scales with env steps; an attack column with its CPU per env step played
    (after its attacker's training) and its attacker's training CPU per budget step; the
    certificate with its CPU per certified state. Per method, times ``seeds``."""
    spec, full_budget = ENVS[env], {"rs_budget": 61440, "sarl_budget": 999424,
                                    "paad_budget": 999424}
    out = {}
    for m in METHODS:
        mr = [r for r in rows if r["env"] == env and r["method"] == m]
        if not mr:
            continue
        r, cpu = mr[0], 0.0
        cpu += r["train_cpu_s"] / r["train_steps"] * spec["steps"]
        for c in COLUMNS:
            v = r["columns"].get(c)
            if v is None:
                continue
            if c == "cert":
                cpu += v["cpu_s"] / v["states"] * 1000 * spec["cert_episodes"]
                continue
            train = ((v.get("attacker_train_cpu_s") or 0.0) if c in ("rs", "sa-rl", "pa-ad")
                     else 0.0)
            cpu += (v["cpu_s"] - train) / v["steps"] * 1000 * spec["episodes"]
            if train:
                key = BUDGET_FLAGS[c]
                cpu += train / r["budgets"][key] * full_budget[key]
        out[m] = cpu * seeds / 3600
    return out


MD_STYLE = Style(row_header="Method", md_caption=False)


def render(out: Path, suffix: str = "", wall: float | None = None, workers: int = 1) -> None:
    """Markdown / LaTeX / CSV tables from OUT/**/result.json, one file set per env."""
    render_rows(all_results(out), suffix, wall, workers)


def render_rows(rows: list[dict], suffix: str = "", wall: float | None = None,
                workers: int = 1, results: Path = RESULTS) -> list[Path]:
    """Per env with rows: the value table (IQM [95% CI] over seeds, ``value_table``), the
    CPU-minutes table and, for Hopper, the extrapolated full-protocol cost; returns the
    Markdown paths written."""
    written = []
    for env, spec in ENVS.items():
        er = [r for r in rows if r["env"] == env]
        if not er:
            continue
        r0 = er[0]
        vt = value_table(env, value_columns(), method_rows(er, value_columns()),
                         f"{env}: IQM over seeds [95% bootstrap CI]; attacks at eps "
                         f"{r0['eval_eps']:g} (normalized obs., l_inf).")
        ct = value_table(env, cost_columns(), method_rows(er, cost_columns()),
                         f"{env}: CPU minutes per run (IQM over seeds).")
        md = [f"# Robust PPO: {env}{' (PILOT, not results)' if suffix else ''}", "",
              *header_lines(r0, suffix), "", to_markdown([vt], MD_STYLE), "",
              "CPU minutes of each run (training; each column's command, its attacker's "
              "training included: RS+MAD reuses the RS attacker):", "",
              to_markdown([ct], MD_STYLE)]
        if env == "Hopper-v5" and all(set(COLUMNS) <= set(r["columns"]) for r in er):
            md += ["", *estimate_lines(er)]  # only from runs with every column
        if wall is not None:
            md.append(f"\nWall-clock of this invocation: {wall / 60:.1f} min ({workers} "
                      f"workers, {os.cpu_count()} CPU cores, 1 torch thread per run).")
        stem = results / f"{spec['stem']}{suffix}"
        results.mkdir(parents=True, exist_ok=True)
        tex = to_latex([vt, ct], Style(row_header="Method", label=f"tab:{spec['stem']}"))
        write_tables(stem, md, tex.splitlines(), [vt, ct])
        written.append(stem.with_suffix(".md"))
    return written


def header_lines(r: dict, suffix: str) -> list[str]:
    """The protocol of the runs of one table, from a result row."""
    b = r["budgets"]
    lines = ["Generated by `benchmarks/robust_ppo.py` through `certrl.report`. "
             f"{r['train_steps']} env steps of training, train eps {r['train_eps']:g}, attacks "
             f"l_inf at eps {r['eval_eps']:g} in running-mean/std normalized observation units, "
             f"{r['episodes']} episodes (env seeds {EPISODE_SEED}..), deterministic (mean) "
             f"actions. MAD, critic, RS, RS+MAD: 10 steps. Attacker training budgets (env steps): "
             f"RS {b['rs_budget']}, SA-RL {b['sarl_budget']}, PA-AD {b['paad_budget']}. "
             f"Columns measured: {', '.join(r.get('columns', {})) or 'as in the row'}. "
             "Worst: per episode seed the lowest return over the attack columns measured. "
             "Cert.: "
             "certified bound on the action mean's largest per-dimension change (CROWN), mean "
             f"over the states of {r['cert_episodes']} episodes (lower is better)."]
    if suffix:
        lines += ["", "**PILOT**: a short-budget run to check the pipeline end to end and to "
                  "measure costs, not a result: the agents are far from solving the task and "
                  "the attackers are trained with a tiny fraction of the references' budgets."]
    return lines


def estimate_lines(rows: list[dict]) -> list[str]:
    """Extrapolated core-hours of the full Hopper protocol (``full_cost``)."""
    out = ["Extrapolated CPU core-hours of the full protocol (2M env steps, 50 episodes of "
           "up to 1000 steps, certificates on 10 episodes, reference attacker budgets RS "
           "61440 and SA-RL / PA-AD 999424), from the CPU per env step measured here:", "",
           "| method | 1 seed | 3 seeds | 5 seeds |", "|---|---:|---:|---:|"]
    one, tot3, tot5 = full_cost(rows, "Hopper-v5", 1), 0.0, 0.0
    for m, h in one.items():
        out.append(f"| {METHODS[m][0]} | {h:.1f} | {3 * h:.1f} | {5 * h:.1f} |")
        tot3, tot5 = tot3 + 3 * h, tot5 + 5 * h
    if len(one) > 1:
        out.append(f"| all methods | {sum(one.values()):.1f} | {tot3:.1f} | {tot5:.1f} |")
    return out


def make_run_tasks(args: argparse.Namespace) -> list[dict]:
    """The benchmark's task list: one per (env, seed, method), columns and budgets set."""
    tasks = make_tasks(Path(args.out), args.envs, args.seeds, args.methods,
                       lambda env: args.steps or ENVS[env]["steps"], 0)
    budgets = {"rs_budget": args.rs_budget, "sarl_budget": args.sarl_budget,
               "paad_budget": args.paad_budget}
    for t in tasks:
        t["episodes"] = args.episodes or ENVS[t["env"]]["episodes"]
        t["cert_episodes"] = args.cert_episodes or ENVS[t["env"]]["cert_episodes"]
        t["budgets"], t["columns"] = dict(budgets), list(args.columns)
    return tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: the full protocol)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--columns", nargs="+", default=COLUMNS, choices=COLUMNS,
                   help="measured columns (worst is derived from the attack columns run)")
    p.add_argument("--steps", type=int, default=None, help="training env steps (default: "
                   "per env, Hopper 2M as SA-PPO, InvertedPendulum 50k)")
    p.add_argument("--episodes", type=int, default=None, help="default per env: Hopper 50")
    p.add_argument("--cert-episodes", type=int, default=None)
    p.add_argument("--rs-budget", type=int, default=61440, help="Robust Sarsa training env "
                   "steps (SA-PPO: 30 x 2048)")
    p.add_argument("--sarl-budget", type=int, default=999424, help="SA-RL adversary "
                   "training env steps (ATLA: 488 x 2048)")
    p.add_argument("--paad-budget", type=int, default=999424, help="PA-AD director "
                   "training env steps")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once (> 1: Ray tasks on a local Ray instance)")
    p.add_argument("--address", default=None,
                   help="run on the Ray cluster at this address instead (certrl[sweep])")
    p.add_argument("--out", default="runs/robust_ppo")
    p.add_argument("--suffix", default="", help="table file suffix, e.g. _pilot")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    for k in ("steps", "episodes", "cert_episodes", "rs_budget", "sarl_budget", "paad_budget"):
        v = getattr(args, k)
        if v is not None and v < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out, t0 = Path(args.out), time.perf_counter()
    if not args.render_only:
        run_tasks(run_one, make_run_tasks(args), args.workers,
                  lambda: render(out, args.suffix), args.address)
    render(out, args.suffix, None if args.render_only else time.perf_counter() - t0,
           args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
