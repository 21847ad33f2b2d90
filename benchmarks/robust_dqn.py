"""Robust DQN table, the references' protocol: vanilla bases, robust fine-tunes, GWC, ACR.

    .venv/bin/python benchmarks/robust_dqn.py --envs CartPole-v1 --seeds 0 1 2 --workers 2 \
        --methods vanilla vanilla-ft sa radial wocar car-ibp car-pgd \
        --bases-from runs/robust_dqn_ft --out runs/robust_dqn_ft02

The current protocol (issue 11, second round): robust losses fine-tuned at train eps 0.02
(CartPole; the smallest round eps where GWC breaks every vanilla base) and the kept
checkpoint chosen by the robust rule (``certrl train --select robust``: min of the mean
natural and the mean GWC-CROWN return at the train eps on the selection episodes; the
vanilla control uses the same rule at the same eps). The earlier protocol (train eps 0.05,
natural selection) is ``--train-eps 0.05 --select natural --out runs/robust_dqn_ft``; its
tables are kept in benchmarks/results/robust_dqn_eps005.{md,tex,csv}.

Per env and seed K (every run through the CLI; the exact command is in its result.json):
  1. vanilla base: ``certrl train --env ENV --algo dqn --steps 50000 --seed K`` (the
     from-scratch vanilla protocol of the shipped agents), into OUT/<env>/vanilla/seedK/train.
  2. fine-tunes from that base (``--init-from OUT/<env>/vanilla/seedK/train``, the
     fine-tuning defaults of ``certrl.algos.dqn.FINETUNE_DEFAULTS``: 20k steps, lr 1e-4,
     batch 32, target every 1000, eps-greedy 0.01, reward scale 0.01, best checkpoint by a
     natural evaluation every 1000 steps on 5 fixed episodes): a vanilla fine-tune control
     (``vanilla-ft``), SA, RADIAL, WocaR, CAR (IBP) and CAR (PGD), all at the env's train eps.
  3. SortNet from scratch (its Q-network is not the vanilla MLP, so there is nothing to
     fine-tune from): the old from-scratch robust protocol, 50k steps.
Evaluation of every run (20 episodes, env seeds 0..19, the same episodes for every column):
  * Natural: mean greedy return (``certrl.evaluate.evaluate``).
  * PGD / PGD-ref at each eval eps: ``certrl.attacks.make_attack`` ("pgd": 10 steps,
    random start, best iterate; "pgd-ref": the references' 10 x 0.1 eps sign steps, no
    random start) on every observation.
  * GWC (IBP) / GWC (CROWN) at each eval eps: ``certrl.certify.run_certify`` methods
    gwc-ibp / gwc-crown (greedy worst case, RADIAL: a heuristic, not a certificate).
  * ACR (IBP) / ACR (CROWN): mean certified radius over the natural-trajectory states,
    ``run_certify`` methods ibp / crown (radius search, rtol 0.02, 8 bisections); the
    certified fraction at each eval eps is recorded too. SortNet: the closed-form
    Lipschitz radius (method lipschitz) in both ACR columns, GWC n/a.
Resumable: a run with result.json is skipped, an interrupted training resumes from its
checkpoint, certify rows are appended per unit. ``--workers`` processes (1 torch thread
each). Tables (IQM [95% bootstrap CI] over seeds) are rendered from the result.json files
through ``certrl.report`` into benchmarks/results/robust_dqn.{md,tex,csv}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from certrl.algos.selection import ROBUST_SELECTS
from certrl.records import write_text_atomic
from certrl.report import Column, Style, Table, to_latex, to_markdown, value_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    all_results,
    iqm,
    make_tasks,
    metric_column,
    read_result,
    run_task,
    run_tasks,
    seed_values,
    train_or_resume,
    write_result,
    write_tables,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
EPISODES = 20  # evaluation episodes per column (RADIAL / CAR-DQN report 20-50)
EVAL_SEED = 0  # evaluation episodes use env seeds EVAL_SEED + i (i = 0..EPISODES-1)

# per env: vanilla / SortNet from-scratch steps, train eps of the robust losses, eval eps
# (raw observation units, l_inf; see docs/robust-training.md "Why these eps") and the
# return floor the targets' ratios are taken above (the worst return an episode can get:
# CartPole 0; Acrobot -500, -1 per step up to the 500-step limit), so that "80% of the
# natural return" reads (R - floor) >= 0.8 (R_natural - floor) in both envs
ENVS = {
    "CartPole-v1": {"steps": 50_000, "train_eps": 0.02, "eval_eps": (0.02, 0.05),
                    "floor": 0.0},
    # Acrobot: GWC-CROWN breaks both probed vanilla bases (-500, the time limit) from eps 0.01
    # on (seed 1 kept -84 / -109 at 0.002 / 0.005), so 0.01 is the train eps
    "Acrobot-v1": {"steps": 50_000, "train_eps": 0.01, "eval_eps": (0.01, 0.02),
                   "floor": -500.0},
}
# method -> (label, extra flags, how it starts)
METHODS = {
    "vanilla": ("Vanilla DQN (base)", [], "scratch"),
    "vanilla-ft": ("Vanilla fine-tune (control)", [], "finetune"),
    "sa": ("SA-DQN (CROWN-IBP)", ["--loss", "sa", "--solver", "crown-ibp"], "finetune"),
    "radial": ("RADIAL-DQN (IBP)", ["--loss", "radial"], "finetune"),
    "wocar": ("WocaR-DQN (IBP)", ["--loss", "wocar"], "finetune"),
    "car-ibp": ("CAR-DQN (IBP)", ["--loss", "car", "--solver", "ibp"], "finetune"),
    "car-pgd": ("CAR-DQN (PGD)", ["--loss", "car", "--solver", "pgd"], "finetune"),
    # the reference's --trades form (kappa TD + (1 - kappa) soft max, kappa = its
    # --kappa-end default 0.8): added after the 2026-12-06 probe (docs/robust-training.md)
    "car-trades": ("CAR-DQN (IBP, trades 0.8)", ["--loss", "car", "--solver", "ibp",
                                                 "--kappa-end", "0.8"], "finetune"),
    "sortnet": ("SortNet DQN (scratch)", ["--loss", "sortnet", "--warmup", "0.5", "--ramp",
                                          "0.3"], "scratch"),
}
ATTACKS = ("pgd", "pgd-ref")
# attacks per run: "train" = our PGD at the train eps only (the robust-selection protocol:
# PGD on 20 full-length episodes took ~15 of a robust run's ~18 evaluation minutes on this
# shared machine); "all" = both attacks at every eval eps
ATTACK_PLAN = {"plan": "train"}
# best-checkpoint rule of the fine-tunes: "robust", "robust-pgd" (certrl.algos.selection)
# or "natural"
SELECT = {"select": "robust"}
# from-scratch runs keep their best checkpoint too: a natural evaluation (5 episodes) every
# 5000 steps (the plain final network of seeds 0 and 2 scored 62 and 17: not a solved base)
SCRATCH_EVAL_EVERY = 5000
GWC = ("gwc-ibp", "gwc-crown")
WHERE = f"this CPU machine ({platform.machine()}, 2 shared cores, 1 torch thread per run)"


def base_dir(out: Path, env: str, seed) -> Path:
    """The vanilla base run of (env, seed): what every fine-tune of that seed starts from."""
    return Path(out) / env / "vanilla" / f"seed{seed}" / "train"


def train_argv(env: str, method: str, seed: int | str, out: Path, steps: int,
               root: Path | str = "OUT") -> list[str]:
    """The ``certrl train`` arguments of one run (``root``: the sweep's --out)."""
    spec, (_, extra, start) = ENVS[env], METHODS[method]
    if start == "finetune":
        argv = ["train", "--init-from", str(base_dir(Path(root), env, seed)), "--seed",
                str(seed), "--out", str(out)]
    else:  # from scratch, best checkpoint kept (a solved base for the fine-tunes)
        argv = ["train", "--env", env, "--algo", "dqn", "--steps", str(steps), "--seed",
                str(seed), "--out", str(out), "--eval-every", str(SCRATCH_EVAL_EVERY),
                "--eval-episodes", "5"]
    if extra:
        argv += extra + ["--train-eps", str(spec["train_eps"])]
    if start == "finetune" and SELECT["select"] in ROBUST_SELECTS:
        argv += ["--select", SELECT["select"]] + ([] if extra else
                                                  ["--select-eps", str(spec["train_eps"])])
    return argv


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (the init agent's weights file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_bases(task: dict) -> dict:
    """Phase 1: train (or resume) the vanilla base of one (env, seed); no evaluation."""
    import torch

    torch.set_num_threads(1)
    tdir = base_dir(Path(task["root"]), task["env"], task["seed"])
    argv = train_argv(task["env"], "vanilla", task["seed"], tdir, task["steps"])
    return train_or_resume(tdir, argv)


def set_protocol(task: dict) -> None:
    """This process's train eps and selection rule from the task (spawned workers re-import
    the module with the defaults)."""
    if task.get("train_eps") is not None:
        ENVS[task["env"]]["train_eps"] = float(task["train_eps"])
    if task.get("select"):
        SELECT["select"] = task["select"]


def run_one(task: dict) -> dict:
    """Phase 2: train (or resume) and evaluate one (env, method, seed); writes result.json."""
    set_protocol(task)
    ATTACK_PLAN["plan"] = task.get("attack_plan", ATTACK_PLAN["plan"])
    def argv(env, method, seed, out, steps):
        return train_argv(env, method, seed, out, steps, task["root"])

    return run_task(task, argv, measure)


def certify_columns(agent, rdir: Path, label: str, eps: tuple, n: int) -> dict:
    """GWC returns and ACR (mean certified radius, certified fraction) through
    ``certrl.certify.run_certify`` over the n natural episodes (env seeds EVAL_SEED..)."""
    from certrl.certify import CertifySettings, RadiusConfig, run_certify
    from certrl.records import read_rows

    sortnet = agent.net.spec.get("type") == "lipschitz_q"
    acr_methods = {"ibp": "lipschitz", "crown": "lipschitz"} if sortnet else \
        {"ibp": "ibp", "crown": "crown"}
    methods = sorted(set(acr_methods.values())) + ([] if sortnet else list(GWC))
    settings = CertifySettings(seed=EVAL_SEED, radius=RadiusConfig(rtol=0.02, max_iter=8),
                               state_rows=False)
    path = rdir / "certify.jsonl"
    summ = run_certify(agent, label, list(eps), methods, n, path, settings,
                       progress=False)["summary"]
    rows = [r for r in read_rows(path) if r.get("record") == "episode"]
    row: dict = {}
    for col, m in acr_methods.items():
        mr = [r for r in rows if r["method"] == m and float(r["eps"]) == float(eps[0])]
        steps = np.array([r["steps"] for r in mr], dtype=float)
        rad = np.array([r["mean_radius"] for r in mr], dtype=float)
        row[f"acr_{col}"] = float((rad * steps).sum() / steps.sum())
        row[f"acr_{col}_method"] = m
        for e in eps:
            row[f"certfrac_{col}_{e:g}"] = summ[(m, float(e))]["acr"]
    for m in GWC:
        for e in eps:
            key = f"{m.replace('-', '_')}_{e:g}"
            if sortnet:
                row[key] = None
                continue
            rets = summ[(m, float(e))]["returns"]
            row[key], row[key + "_returns"] = float(np.mean(rets)), rets
    return row


def planned_attacks(env: str) -> list[tuple[str, float]]:
    """(attack, eps) pairs of ATTACK_PLAN for the env."""
    spec = ENVS[env]
    if ATTACK_PLAN["plan"] == "train":
        return [("pgd", spec["train_eps"])]
    return [(a, e) for e in spec["eval_eps"] for a in ATTACKS]


def attack_columns(agent, eps: tuple, n: int, seed: int,
                   only: list[tuple[str, float]] | None = None) -> dict:
    """Mean return under our PGD and the references' PGD at every eval eps, same
    episodes."""
    from certrl.attacks import make_attack
    from certrl.evaluate import evaluate

    row: dict = {}
    for e in eps:
        for name in ATTACKS if only is None else [a for a, x in only if x == e]:
            atk = make_attack(name, agent.forward, agent.threat_model.with_eps(e), e, 10,
                              None, seed, agent.action_space_kind, "ce")
            r = evaluate(agent, episodes=n, seed=EVAL_SEED, attack=atk)
            key = f"{name.replace('-', '_')}_{e:g}"
            row[key], row[key + "_returns"] = r.mean, r.returns
    return row


def final_columns(task: dict, row: dict, eps: float, n: int) -> dict:
    """The last network of a fine-tune (train/final.pt) when the kept checkpoint is an
    earlier one: natural and GWC (CROWN) at the train eps (same episodes)."""
    from certrl.agent import load
    from certrl.certify.trajectory import gwc_rollout
    from certrl.evaluate import evaluate

    final = Path(task["dir"]) / "train" / "final.pt"
    sel = row.get("selection") or {}
    if not final.exists() or sel.get("best_step") == row.get("train_steps"):
        return {}
    agent = load(final)
    out = {"final_natural": evaluate(agent, episodes=n, seed=EVAL_SEED).mean,
           f"final_gwc_crown_{eps:g}": None}
    if agent.net.spec.get("type") != "lipschitz_q":  # SortNet: no GWC (no bounded form)
        gwc = gwc_rollout(agent, eps, "crown", episodes=n, seed=EVAL_SEED)
        out[f"final_gwc_crown_{eps:g}"] = float(np.mean([g["return"] for g in gwc]))
    return out


def measure(task: dict, agent, summary: dict, argv: list[str], t0: float) -> dict:
    """Natural, PGD, PGD-ref, GWC and ACR results of one trained run (its result.json)."""
    from certrl.evaluate import evaluate

    env, method, seed, n = task["env"], task["method"], task["seed"], task["episodes"]
    spec, rdir = ENVS[env], Path(task["dir"])
    t1 = time.perf_counter()
    nat = evaluate(agent, episodes=n, seed=EVAL_SEED)
    row = {"env": env, "method": method, "label": METHODS[method][0], "seed": seed,
           "start": METHODS[method][2], "loss": agent.loss_name,
           "train_eps": spec["train_eps"], "eval_eps": list(spec["eval_eps"]),
           "threat_model": agent.threat_model.to_dict(), "episodes": n,
           "eval_seeds": f"{EVAL_SEED}..{EVAL_SEED + n - 1}",
           "natural": nat.mean, "natural_returns": nat.returns,
           "train_wall_s": summary.get("wall_s"), "train_steps": summary.get("steps"),
           "selection": summary.get("selection") or summary.get("best"),
           "command": "certrl " + " ".join(argv), "where": WHERE}
    if METHODS[method][2] == "finetune":
        init = base_dir(Path(task["root"]), env, seed) / "agent.pt"
        row["init_agent"] = {"path": str(init), "sha256": file_sha256(init)}
    row.update(attack_columns(agent, spec["eval_eps"], n, int(seed), planned_attacks(env)))
    row.update(certify_columns(agent, rdir, f"{env}/{method}/seed{seed}", spec["eval_eps"], n))
    row.update(final_columns(task, row, spec["train_eps"], n))
    row["eval_wall_s"] = time.perf_counter() - t1
    short = {k: round(v, 3) for k, v in row.items() if k.startswith(("pgd", "gwc", "acr_"))
             and isinstance(v, float)}
    print(f"done {env} {method} seed {seed}: natural {row['natural']:.1f} {short} "
          f"train {row['train_wall_s'] or 0:.0f}s ",
          f"eval {row['eval_wall_s']:.0f}s", flush=True)
    return row


# ------------------------------------------------------------------ tables
def header() -> list[str]:
    """The Markdown preamble of the tables."""
    return ["# Robust DQN: the references' protocol (vanilla base, robust fine-tunes)", "",
            "Generated by `benchmarks/robust_dqn.py` from the per-run `result.json` files "
            "through `certrl.report` (the same statistics and renderer as `certrl table`). "
            "Cells: IQM over seeds [95% percentile-bootstrap CI over seeds]; each seed's value "
            f"is the mean over its {EPISODES} evaluation episodes (env seeds "
            f"{EVAL_SEED}..{EVAL_SEED + EPISODES - 1}, the same episodes in every column). "
            "Robust methods and the vanilla control are fine-tuned from the same seed's "
            "vanilla base (`--init-from`, fine-tuning defaults, best checkpoint by "
            + SELECT_WORDS[SELECT["select"]] + " evaluated every 1000 steps on 5 separate "
            "episodes); SortNet trains from scratch. "
            "PGD: ours, 10 steps, random start, best iterate, CE objective (at the train eps "
            "only unless run with `--attacks all`). "
            "PGD-ref: the references' 10 sign steps of 0.1 eps, no random start. "
            "GWC: greedy worst case with IBP or CROWN bounds (RADIAL; a heuristic, not a "
            "certificate). ACR: mean certified radius over the natural-trajectory states "
            "(radius search, rtol 0.02; SortNet: closed-form Lipschitz radius in both ACR "
            "columns, GWC n/a). Best step: env step of the kept checkpoint (0 = the init "
            "weights). Train time: wall-clock s of `certrl train`. "
            f"Where: every number was run on {WHERE}.", ""]


def threat_words(env: str, rows: list[dict]) -> str:
    """The threat model of an env's table (norm, space, per-dimension scale vector)."""
    tms = {json.dumps(r.get("threat_model", {}).get("scale"), sort_keys=True) for r in rows}
    scale = "none (raw eps in every dimension)" if tms == {"null"} else \
        "per run: " + "; ".join(sorted(tms))
    return f"l_inf, raw observation space, per-dimension scale {scale}"


def render(out: Path, envs: list[str], sweep_wall: float | None = None,
           name: str = "robust_dqn") -> None:
    """Markdown / LaTeX / CSV tables from OUT/**/result.json (``certrl.report``), written to
    benchmarks/results/NAME.{md,tex,csv}."""
    rows = [mark_resumed(out, r) for r in all_results(out)]
    md, tex, tables = header(), [], []
    for env in envs:
        er = [r for r in rows if r["env"] == env]
        if not er:
            continue
        env_md, env_tex, env_tabs = env_tables(env, er)
        md, tex, tables = md + env_md, tex + env_tex, tables + env_tabs
        md += target_lines(env, er)
    if sweep_wall is not None:
        md.append(f"Sweep wall-clock of the last invocation: {sweep_wall / 60:.1f} min.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_tables(RESULTS / name, md, tex, tables)
    print(f"wrote {RESULTS / (name + '.md')} ({len(rows)} runs)", flush=True)


def mark_resumed(out: Path, r: dict) -> dict:
    """The row with ``train_resumes`` (resumes of its training, from command.json): the
    summary's wall_s then covers the last segment only, so its train time is left out."""
    cmd = Path(out) / r["env"] / r["method"] / f"seed{r['seed']}" / "train" / "command.json"
    n = len(json.loads(cmd.read_text()).get("resumes", [])) if cmd.exists() else 0
    return {**r, "train_resumes": n}


# ------------------------------------------------------------------ issue 11 targets
TARGET_METHODS = ("radial", "car-trades", "car-ibp", "car-pgd", "sa", "wocar", "vanilla-ft")


def target_values(er: list[dict], method: str, e: float) -> dict | None:
    """IQM over a method's seeds of what the targets read at eps ``e`` (None: no runs)."""
    mr = [r for r in er if r["method"] == method]
    if not mr:
        return None

    def q(key: str) -> float | None:
        vals = [r.get(key) for r in mr]
        return None if any(v is None for v in vals) else float(iqm(np.asarray(vals, float)))
    return {"n": len(mr), "natural": q("natural"), "gwc": q(f"gwc_crown_{e:g}"),
            "pgd": q(f"pgd_{e:g}"), "rate": q(f"certfrac_crown_{e:g}"), "radius": q("acr_crown")}


def target_lines(env: str, er: list[dict]) -> list[str]:
    """Markdown: the issue's Done-when targets at the train eps, met / not met per method,
    on the IQMs over seeds (computed here from the result.json files)."""
    e, f = ENVS[env]["train_eps"], ENVS[env]["floor"]
    v = target_values(er, "vanilla", e)
    if v is None or v["natural"] is None:
        return []
    if v["gwc"] is None or v["rate"] is None:  # vanilla not certified at this train eps
        return [f"### Issue 11 targets at the train eps {e:g}", "",
                f"Not computed: the vanilla bases have no GWC-CROWN / CROWN rate at {e:g} "
                "(they were evaluated at another train eps's columns).", ""]

    def at_least(x, frac: float, ref: float) -> bool:  # (x - floor) >= frac (ref - floor)
        return x is not None and x - f >= frac * (ref - f)

    def cell(x, ok, k):
        return "n/a" if x is None else f"{x:.3g} ({'met' if ok else 'not met'}; {k})"

    def seeds_ok(m: str, key: str, ok) -> str:
        mr = [r for r in er if r["method"] == m]
        good = sum(1 for r in mr if r.get(key) is not None and ok(r, float(r[key])))
        return f"{good}/{len(mr)} seeds"
    lines = [f"### Issue 11 targets at the train eps {e:g} (IQM over seeds)", "",
             f"Vanilla (base): natural {v['natural']:.1f}, GWC-CROWN {e:g} {v['gwc']:.1f} "
             f"(target < 50% of natural: "
             f"{'not met' if at_least(v['gwc'], 0.5, v['natural']) else 'met'}"
             f"), CROWN cert. rate {v['rate']:.3f}, mean CROWN radius {v['radius']:.4f}.", "",
             "Each cell: the IQM, met / not met on the IQM, and how many seeds meet it on "
             "their own value (vanilla's side of a comparison: its IQM)."
             + (f" Return ratios are taken above the floor {f:g} (the worst return an "
                "episode can get): x >= 0.8 R reads x - floor >= 0.8 (R - floor)." if f else ""),
             "",
             "| method | seeds | natural >= 0.9 x vanilla | GWC-CROWN >= 0.8 x own natural | "
             "PGD >= 0.8 x own natural | CROWN cert. rate >= vanilla + 0.2 | mean CROWN radius "
             ">= vanilla + 0.2 |", "|---|---|---|---|---|---|---|"]
    vn, vr, vrad = v["natural"], v["rate"], v["radius"]

    def own(r: dict, x: float) -> bool:
        return at_least(x, 0.8, r["natural"])
    for m in TARGET_METHODS:
        t = target_values(er, m, e)
        if t is None:
            continue
        nat = t["natural"]
        lines.append(
            f"| {METHODS[m][0]} | {t['n']} | "
            f"{cell(nat, at_least(nat, 0.9, vn), seeds_ok(m, 'natural', lambda r, x: at_least(x, 0.9, vn)))} | "  # noqa: E501
            f"{cell(t['gwc'], at_least(t['gwc'], 0.8, nat), seeds_ok(m, f'gwc_crown_{e:g}', own))} | "  # noqa: E501
            f"{cell(t['pgd'], at_least(t['pgd'], 0.8, nat), seeds_ok(m, f'pgd_{e:g}', own))} | "  # noqa: E501
            f"{cell(t['rate'], t['rate'] is not None and t['rate'] >= vr + 0.2, seeds_ok(m, f'certfrac_crown_{e:g}', lambda r, x: x >= vr + 0.2))} | "  # noqa: E501
            f"{cell(t['radius'], t['radius'] is not None and t['radius'] >= vrad + 0.2, seeds_ok(m, 'acr_crown', lambda r, x: x >= vrad + 0.2))}"  # noqa: E501
            " |")
    return lines + [""]


NO_BEST = ("best_step", "train_wall_s")
SELECT_WORDS = {"natural": "mean natural return",
                "robust": "min(mean natural return, mean GWC-CROWN return at the train eps) "
                          "(`--select robust`; the vanilla control too, at the same eps)",
                "robust-pgd": "min(mean natural return, mean GWC-CROWN return, mean return "
                              "under our PGD, both at the train eps) (`--select robust-pgd`; "
                              "the vanilla control too, at the same eps)"}


def _col(key: str, title: str) -> Column:
    digits = 3 if key.startswith(("acr", "certfrac")) else 0 if key in NO_BEST else 1
    return metric_column(key, title, digits, best=key not in NO_BEST)


def columns(env: str) -> dict[str, list[Column]]:
    """Per table part ("returns", "certificates", "checkpoint"): its columns (the key of a
    column is its result.json key)."""
    eps, te = ENVS[env]["eval_eps"], ENVS[env]["train_eps"]
    ret = [("natural", "Natural")]
    plan = planned_attacks(env)
    for e in eps:
        ret += [(f"{a.replace('-', '_')}_{e:g}", f"{'PGD' if a == 'pgd' else 'PGD-ref'} {e:g}")
                for a in ATTACKS if (a, e) in plan]
        ret += [(f"gwc_ibp_{e:g}", f"GWC-IBP {e:g}"), (f"gwc_crown_{e:g}", f"GWC-CROWN {e:g}")]
    cert = [(f"certfrac_{m}_{e:g}", f"Cert. rate {m.upper()} {e:g}")
            for e in eps for m in ("ibp", "crown")]
    cert += [("acr_ibp", "Mean radius IBP"), ("acr_crown", "Mean radius CROWN")]
    other = [("best_step", "Best step"), ("final_natural", "Final: natural"),
             (f"final_gwc_crown_{te:g}", f"Final: GWC-CROWN {te:g}"),
             ("train_wall_s", "Train time (s)")]
    return {part: [_col(k, t) for k, t in cols]
            for part, cols in (("returns", ret), ("certificates", cert), ("checkpoint", other))}


def cell_value(r: dict, key: str) -> float | None:
    """One run's value of a column (None: not applicable)."""
    if key == "best_step":
        sel = r.get("selection") or {}
        return float(sel["best_step"]) if isinstance(sel, dict) and "best_step" in sel \
            else None
    if key == "train_wall_s" and r.get("train_resumes"):
        return None
    v = r.get(key)
    return None if v is None else float(v)


def part_table(env: str, part: str, cols: list[Column], er: list[dict], title: str) -> Table:
    """One table part: a row per method (IQM [CI] over its seeds; a column where some seed
    has no value is n/a), best per column in bold (not for best step and train time)."""
    rows = []
    for m in METHODS:
        mr = [r for r in er if r["method"] == m]
        if mr:
            rows.append((f"{METHODS[m][0]}, {len(mr)} seeds",
                         {c: seed_values(mr, cell_value, c.name) for c in cols}))
    t = value_table(env, cols, rows, title)
    t.name = f"{env}-{part}"
    return t


PART_TITLES = {"returns": "Returns (natural, attacked, greedy worst case)",
               "certificates": "Certificates on the natural trajectories (sound: IBP, CROWN, "
                               "SortNet Lipschitz)",
               "checkpoint": "Kept checkpoint vs the last network of the fine-tune (final_*: "
                             "only where the kept checkpoint is not the last one; n/a if "
                             "some seed kept its last)"}


def env_tables(env: str, er: list[dict]) -> tuple[list[str], list[str], list[Table]]:
    """The Markdown lines, LaTeX lines and tables of one env."""
    spec = ENVS[env]
    eps_words = " / ".join(f"{e:g}" for e in spec["eval_eps"])
    tm = threat_words(env, er)
    md = [f"## {env}", "", f"Threat model: {tm}. Robust losses fine-tuned at eps "
          f"{spec['train_eps']:g}; evaluated at eps {eps_words}. Base / SortNet: "
          f"{spec['steps']} env steps from scratch; fine-tunes: 20000 env steps.", ""]
    tables = []
    for part, pcols in columns(env).items():
        title = (f"{env} -- {PART_TITLES[part]}. IQM over seeds [95% bootstrap CI]. "
                 f"Threat model: {tm}. Robust losses fine-tuned from the seed's vanilla base "
                 f"at eps={spec['train_eps']:g}, evaluated at eps = {eps_words}. GWC: "
                 "heuristic. Best per column in bold.")
        t = part_table(env, part, pcols, er, title)
        tables.append(t)
        md += [f"### {PART_TITLES[part]}", "", to_markdown([t], MD_STYLE)]
    md += ["Commands (seed K, OUT = the sweep's --out):", ""] + [
        f"- {METHODS[m][0]}: `certrl "
        + " ".join(train_argv(env, m, "K", Path("OUT") / env / m / "seedK" / "train",
                              spec["steps"])) + "`"
        for m in METHODS if any(r["method"] == m for r in er)] + [""]
    return md, to_latex(tables, TEX_STYLE).splitlines(), tables


MD_STYLE = Style(row_header="Method", md_caption=False)
TEX_STYLE = Style(float_env="table*", resize=True, font=r"\scriptsize", row_header="Method",
                  label="tab:robust-dqn")


# ------------------------------------------------------------------ shipping
# the shipped CAR agent is the reference-form CAR-IBP (CAR-trades is a table row only:
# docs/robust-training.md, "Shipped agents")
SHIP = {"vanilla": "vanilla", "sa": "sa", "radial": "radial", "wocar": "wocar",
        "car-ibp": "car", "sortnet": "sortnet"}
SHIP_RULE = ("the median run of the method's finished CartPole seeds when ranked by natural "
             "return (equal returns ranked by seed, the higher seed first; lower middle for an "
             "even count), fixed in the code before the table was read")
# the rule of the robust-selection protocol (fixed in the code before its results existed)
SHIP_RULE_ROBUST = (
    "fine-tunes: the seed whose kept checkpoint has the highest robust-selection score "
    "(selection.best_score: min(mean natural, mean GWC-CROWN return at the train eps), and "
    "the mean return under our PGD at that eps with --select robust-pgd, on the "
    "5 selection episodes, env seeds 1000000..1000004, not the table's episodes; ties -> the "
    "lower seed); vanilla: the base the shipped CAR agent was fine-tuned from (so the demo's "
    "pair is a base and its own fine-tune); fixed in the code before the results existed")


def pick_seed(results: list[dict]) -> dict:
    """SHIP_RULE: the middle run when ranked by (natural return, -seed); lower middle for an
    even count (three runs at 500: seed 1)."""
    ranked = sorted(results, key=lambda r: (r["natural"], -int(r["seed"])))
    return ranked[(len(ranked) - 1) // 2]


def pick_seed_robust(results: list[dict]) -> dict:
    """SHIP_RULE_ROBUST for a fine-tuned method: highest selection.best_score, then the
    lower seed."""
    return max(results, key=lambda r: (float(r["selection"]["best_score"]), -int(r["seed"])))


def sidecar(name: str, res: dict, results: list[dict], src: Path,
            table: str = "robust_dqn") -> dict:
    """The JSON sidecar of a shipped agent: its table row, exact command, init agent (path +
    sha256), seed and checkpoint selection, threat model, and how to reproduce the row."""
    from certrl.io import library_versions

    eps = " ".join(f"{e:g}" for e in res["eval_eps"])
    n = res["episodes"]
    sortnet = res["method"] == "sortnet"
    methods = "lipschitz" if sortnet else "ibp crown gwc-ibp gwc-crown"
    return {
        "name": name, "env_id": res["env"], "algo": "dqn", "loss": res["loss"],
        "seed": res["seed"],
        "network": ("SortNet Q-network (certrl.nets lipschitz_q), from scratch" if sortnet
                    else "MLP 4-64-64-2 (ReLU), double DQN, not dueling"),
        "command": res["command"].replace(f"{ROOT}/", ""),
        "init_agent": None if res.get("init_agent") is None else {
            **res["init_agent"], "path": res["init_agent"]["path"].replace(f"{ROOT}/", "")},
        "benchmark": "benchmarks/robust_dqn.py (one run of the committed table, "
                     f"benchmarks/results/{table}.md)",
        "selection": f"{SHIP_RULE_ROBUST}; seeds {sorted(r['seed'] for r in results)}",
        "checkpoint_selection": res.get("selection"),
        "checkpoint_rule": (res.get("selection") or {}).get("rule"),
        "threat_model": res["threat_model"], "train_eps": res["train_eps"],
        "eval_return_mean": res["natural"],
        "eval_return_std": float(np.std(res["natural_returns"])),
        "eval_episodes": n, "eval_seeds": res["eval_seeds"], "where": res["where"],
        "train_steps": res["train_steps"], "train_wall_s": res["train_wall_s"],
        "reproduce": [f"certrl evaluate {name} --episodes {n} --seed {EVAL_SEED}",
                      f"certrl certify {name} --method {methods} --eps {eps} "
                      f"--episodes {n} --seed {EVAL_SEED}",
                      f"certrl attack {name} --attack pgd --eps {eps} --episodes {n}"],
        "table_row": {k: v for k, v in res.items() if isinstance(v, (int, float))
                      and not isinstance(v, bool) and k != "seed"},
        "weights_sha256": file_sha256(src), "versions": library_versions()}


def ship(out: Path, min_seeds: int = 3, table: str = "robust_dqn") -> None:
    """Copy one CartPole agent per method into certrl/agents/ with JSON sidecars (only
    methods with at least ``min_seeds`` finished seeds); ``table``: the --name of the table
    the runs are a row of (named in each sidecar)."""
    import shutil

    from certrl.agent import AGENTS_DIR

    env = "CartPole-v1"
    car_seed = None
    for method, short in sorted(SHIP.items(), key=lambda kv: kv[0] == "vanilla"):
        results = [read_result(p.parent) for p in
                   sorted((Path(out) / env / method).glob("seed*/result.json"))]
        if len(results) < min_seeds or (method == "vanilla" and car_seed is None):
            print(f"skip {method}: {len(results)} finished seeds (need {min_seeds}; vanilla "
                  "needs the shipped CAR agent)")
            continue
        res = next(r for r in results if int(r["seed"]) == car_seed) \
            if method == "vanilla" else pick_seed_robust(results)
        if short == "car":
            car_seed = int(res["seed"])
        name = f"cartpole-dqn-{short}"
        src = Path(out) / env / method / f"seed{res['seed']}" / "train" / "agent.pt"
        side = sidecar(name, res, results, src, table)
        shutil.copyfile(src, AGENTS_DIR / f"{name}.pt")
        write_text_atomic(AGENTS_DIR / f"{name}.json", json.dumps(side, indent=2) + "\n")
        size = (AGENTS_DIR / f"{name}.pt").stat().st_size
        print(f"shipped {name}: seed {res['seed']}, natural {res['natural']:.1f}, "
              f"{size / 1024:.0f} KB")


def fill_attacks(out: Path, envs: list[str], seeds: list[int]) -> None:
    """Finished runs without a PGD / PGD-ref column at some eval eps (the earlier protocol
    attacked at the largest eps only) get it, on the same episodes; result.json rewritten."""
    import torch

    from certrl.agent import load

    torch.set_num_threads(1)
    for env in envs:
        for p in sorted(Path(out).glob(f"{env}/*/seed*/result.json")):
            row = read_result(p.parent)
            if int(row["seed"]) not in seeds:
                continue
            todo = [(a, e) for a, e in planned_attacks(env)
                    if f"{a.replace('-', '_')}_{e:g}" not in row]
            if todo:
                row.update(attack_columns(load(p.parent / "train"), tuple(e for _, e in todo),
                                          row["episodes"], int(row["seed"]), todo))
                row["attacks_added"] = [f"{a} {e:g}" for a, e in todo]
                write_result(p.parent, row)
                print(f"{p.parent}: PGD / PGD-ref added at eps {todo}", flush=True)


def copy_bases(src: Path, out: Path, envs: list[str], seeds: list[int]) -> None:
    """Copy each missing OUT/<env>/vanilla/seedK (the base run and its evaluation) from the
    earlier sweep ``src`` (bases are not retrained)."""
    import shutil

    for env in envs:
        for seed in seeds:
            s, d = src / env / "vanilla" / f"seed{seed}", out / env / "vanilla" / f"seed{seed}"
            if not d.exists() and (s / "train" / "agent.pt").exists():
                shutil.copytree(s, d)
                print(f"base {env} seed {seed}: copied from {s}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["CartPole-v1"], choices=list(ENVS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--episodes", type=int, default=EPISODES,
                   help="evaluation episodes per column")
    p.add_argument("--workers", type=int, default=2,
                   help="runs at once (> 1: Ray tasks on a local Ray instance)")
    p.add_argument("--address", default=None,
                   help="run on the Ray cluster at this address instead (certrl[sweep])")
    p.add_argument("--out", default="runs/robust_dqn_ft02")
    p.add_argument("--bases-from", default=None, metavar="DIR",
                   help="copy the vanilla bases (OUT/<env>/vanilla/seedK) from an earlier "
                        "sweep's --out instead of training them")
    p.add_argument("--train-eps", type=float, default=None,
                   help="train eps of the robust losses (default: ENVS; one env at a time)")
    p.add_argument("--attacks", choices=("train", "all"), default=ATTACK_PLAN["plan"],
                   help="train: our PGD at the train eps only; all: PGD and PGD-ref at every "
                        "eval eps")
    p.add_argument("--select", choices=("natural", *ROBUST_SELECTS), default=SELECT["select"],
                   help="best-checkpoint rule of the fine-tunes")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--name", default="robust_dqn",
                   help="table files: benchmarks/results/NAME.{md,tex,csv}")
    p.add_argument("--ship", action="store_true",
                   help="copy one CartPole agent per method to certrl/agents/ (with sidecars)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.train_eps is not None:
        if len(args.envs) != 1:
            raise SystemExit("--train-eps applies to one env: give one --envs")
        ENVS[args.envs[0]]["train_eps"] = args.train_eps
    SELECT["select"] = args.select
    ATTACK_PLAN["plan"] = args.attacks
    if args.bases_from:
        copy_bases(Path(args.bases_from), out, args.envs, args.seeds)
    if args.ship:
        ship(out, table=args.name)
        return 0
    t0 = time.perf_counter()
    if not args.render_only:
        bases = [{"env": e, "seed": s, "root": str(out), "steps": ENVS[e]["steps"]}
                 for e in args.envs for s in args.seeds
                 if not (base_dir(out, e, s) / "agent.pt").exists()]
        print(f"phase 1: {len(bases)} vanilla bases to train", flush=True)
        if bases:
            run_tasks(train_bases, [{**b, "dir": str(base_dir(out, b["env"], b["seed"]))}
                                    for b in bases], args.workers, lambda: None, args.address)
        tasks = make_tasks(out, args.envs, args.seeds, args.methods,
                           lambda env: ENVS[env]["steps"], args.episodes)
        tasks = [{**t, "root": str(out), "select": args.select, "attack_plan": args.attacks,
                  "train_eps": ENVS[t["env"]]["train_eps"]} for t in tasks]
        run_tasks(run_one, tasks, args.workers, lambda: None,  # render: once at the end
                  args.address)
        fill_attacks(out, args.envs, args.seeds)
    render(out, args.envs, time.perf_counter() - t0 if not args.render_only else None,
           args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
