"""Robust DQN table: vanilla, SA, RADIAL, WocaR, CAR (IBP), CAR (PGD), SortNet on
CartPole-v1 and Acrobot-v1; Natural / PGD / ACR (CROWN) at two eps, training time;
IQM and 95% bootstrap CIs over seeds.

    .venv/bin/python benchmarks/robust_dqn.py --envs CartPole-v1 --seeds 0 1 2 3 4

Every run trains through the CLI (``certrl train ...``, the exact command is stored in
the run's result.json) into OUT/<env>/<method>/seed<k>/train, then evaluates:
  * Natural: mean return over ``--episodes`` episodes (env seeds 1000..).
  * PGD eps: same episodes, l_inf PGD (10 steps, random start, CE objective) on every
    observation (``certrl.attacks.make_attack``).
  * ACR eps: fraction of the natural-trajectory states whose greedy action is certified
    by ``bounds.margin_lower(agent.bounded_form(), ball, a*, method="crown")`` (all
    margins > 0); SortNet agents use the closed-form Lipschitz certificate
    (``bounds.lipschitz.lipschitz_margin_certificate``, margin > 2 L eps), also sound.
Resumable: a run with result.json is skipped, an interrupted training resumes from its
checkpoint. ``--workers`` processes (1 torch thread each). Tables are rendered from the
result.json files into benchmarks/results/robust_dqn.{md,tex,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from certrl.records import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import (  # noqa: E402
    all_results,
    bootstrap_ci,
    iqm,
    make_tasks,
    read_result,
    run_pool,
    run_task,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# per env: training steps, the eps the robust losses train for, the two evaluation eps
ENVS = {
    "CartPole-v1": {"steps": 50_000, "train_eps": 0.05, "eval_eps": (0.05, 0.1)},
    "Acrobot-v1": {"steps": 50_000, "train_eps": 0.2, "eval_eps": (0.2, 0.3)},
}
METHODS = {
    "vanilla": ("Vanilla DQN", []),
    "sa": ("SA-DQN (CROWN-IBP, kappa 0.1)",
           ["--loss", "sa", "--solver", "crown-ibp", "--kappa", "0.1"]),
    "radial": ("RADIAL-DQN (IBP)", ["--loss", "radial"]),
    "wocar": ("WocaR-DQN (IBP)", ["--loss", "wocar"]),
    "car-ibp": ("CAR-DQN (IBP)", ["--loss", "car", "--solver", "ibp"]),
    "car-pgd": ("CAR-DQN (PGD)", ["--loss", "car", "--solver", "pgd", "--pgd-steps", "5"]),
    "sortnet": ("SortNet DQN", ["--loss", "sortnet"]),
}


def train_argv(env: str, method: str, seed: int | str, out: Path, steps: int) -> list[str]:
    """The ``certrl train`` arguments of one run."""
    spec = ENVS[env]
    argv = ["train", "--env", env, "--algo", "dqn", "--steps", str(steps), "--seed", str(seed),
            "--out", str(out)]
    extra = METHODS[method][1]
    if extra:
        argv += extra + ["--train-eps", str(spec["train_eps"]), "--warmup", "0.5",
                         "--ramp", "0.3"]
    return argv


def acr(agent, x, eps: float) -> float:
    """Fraction of network inputs ``x`` (N, *shape) whose greedy action is certified at eps
    (CROWN or Lipschitz)."""
    import torch

    import bounds

    with torch.no_grad():
        q = agent.forward(x)
    if agent.net.spec.get("type") == "lipschitz_q":
        cert = bounds.lipschitz_margin_certificate(q, eps, lipschitz=agent.net.lipschitz_linf)
        return float(cert.certified.float().mean())
    net = agent.bounded_form()
    certified = []
    for i in range(0, len(x), 2048):
        xb = x[i:i + 2048]
        with torch.no_grad():
            m = bounds.margin_lower(net, agent.threat_model.ball(xb, eps), q[i:i + 2048].argmax(1),
                                    method="crown")
        certified.append(bounds.certified(m))
    return float(torch.cat(certified).float().mean())


def run_one(task: dict) -> dict:
    """Train (or resume) and evaluate one (env, method, seed); writes result.json."""
    return run_task(task, train_argv, measure)


def measure(task: dict, agent, summary: dict, argv: list[str], t0: float) -> dict:
    """Natural, PGD and ACR results of one trained run (its result.json row)."""
    import torch

    from certrl.attacks import make_attack
    from certrl.rollout import acting, play

    env, method, seed = task["env"], task["method"], task["seed"]
    spec = ENVS[env]
    n = task["episodes"]
    # natural episodes (env seeds 1000..; record the network inputs for ACR)
    states = []
    ends = play(agent, list(range(n)), 1000, lambda i: acting(agent), None,
                lambda i, s: states.append(s.x))
    nat = [e.ret for e in ends]
    from certrl.evaluate import evaluate

    row = {"env": env, "method": method, "label": METHODS[method][0], "seed": seed,
           "loss": agent.loss_name, "train_eps": agent.threat_model.eps,
           "norm": "inf", "eps_space": agent.threat_model.space, "episodes": n,
           "natural": float(np.mean(nat)), "natural_returns": nat,
           "train_wall_s": summary.get("wall_s"), "train_steps": summary.get("steps"),
           "command": "certrl " + " ".join(argv), "cert_method": "crown"}
    if agent.net.spec.get("type") == "lipschitz_q":
        row["cert_method"] = "lipschitz (closed form)"
    st = torch.cat(states)
    for eps in spec["eval_eps"]:
        atk = make_attack("pgd", agent.forward, agent.threat_model, eps=eps, steps=10,
                          seed=seed)
        r = evaluate(agent, episodes=n, seed=1000, attack=atk)
        row[f"pgd_{eps:g}"] = r.mean
        row[f"pgd_{eps:g}_returns"] = r.returns
        row[f"acr_{eps:g}"] = acr(agent, st, eps)
    row["eval_wall_s"] = time.perf_counter() - t0
    print(f"done {env} {method} seed {seed}: natural {row['natural']:.1f} "
          + " ".join(f"pgd{eps:g} {row[f'pgd_{eps:g}']:.1f} acr{eps:g} {row[f'acr_{eps:g}']:.2f}"
                     for eps in spec["eval_eps"])
          + f" train {row['train_wall_s']:.0f}s", flush=True)
    return row


# ------------------------------------------------------------------ statistics
HEADER = ["# Robust DQN: natural, PGD and certified (ACR) results", "",
          "Generated by `benchmarks/robust_dqn.py` from the per-run `result.json` files. "
          "Cells: IQM over seeds [95% percentile-bootstrap CI over seeds]; each seed's value is "
          "the mean over its evaluation episodes. PGD: l_inf, 10 steps, random start, per step. "
          "ACR: fraction of natural-trajectory states whose greedy action is certified "
          "(CROWN margin bounds; SortNet: closed-form Lipschitz margin > 2 L eps). eps in raw "
          "observation units (l_inf). Train time: wall-clock seconds of `certrl train` with "
          "1 torch thread, 2 runs in parallel on 2 shared CPU cores.", ""]
CSV_FIELDS = ["env", "method", "column", "iqm", "ci_low", "ci_high", "n_seeds", "seeds",
              "values"]


def render(out: Path, envs: list[str], sweep_wall: float | None = None) -> None:
    """Markdown / LaTeX / CSV tables from OUT/**/result.json."""
    rows = all_results(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    md, tex, csv_rows = list(HEADER), [], []
    for env in envs:
        er = [r for r in rows if r["env"] == env]
        if not er:
            continue
        cols = _columns(env)
        table = _method_cells(env, er, cols, csv_rows)
        env_md, env_tex = _env_tables(env, er[0].get("train_steps"), cols, table)
        md += env_md
        tex += env_tex
    if sweep_wall is not None:
        md.append(f"Sweep wall-clock of the last invocation: {sweep_wall / 60:.1f} min.")
    (RESULTS / "robust_dqn.md").write_text("\n".join(md) + "\n")
    (RESULTS / "robust_dqn.tex").write_text("\n".join(tex) + "\n")
    with open(RESULTS / "robust_dqn.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(csv_rows)
    print(f"wrote {RESULTS / 'robust_dqn.md'} ({len(rows)} runs)")


def _columns(env: str) -> list[tuple[str, str]]:
    """(result key, header) of the env's table columns."""
    e1, e2 = ENVS[env]["eval_eps"]
    return [("natural", "Natural"), (f"pgd_{e1:g}", f"PGD {e1:g}"),
            (f"pgd_{e2:g}", f"PGD {e2:g}"), (f"acr_{e1:g}", f"ACR {e1:g}"),
            (f"acr_{e2:g}", f"ACR {e2:g}"), ("train_wall_s", "Train time (s)")]


def _method_cells(env: str, er: list[dict], cols, csv_rows: list[dict]) -> dict:
    """method -> (seeds, {key: (IQM, CI low, CI high)}); appends the CSV rows."""
    table = {}
    for m in METHODS:
        mr = [r for r in er if r["method"] == m]
        if not mr:
            continue
        cells = {}
        for key, _ in cols:
            vals = np.array([r[key] for r in mr], dtype=float)
            lo, hi = bootstrap_ci(vals)
            cells[key] = (iqm(vals), lo, hi)
            csv_rows.append({"env": env, "method": m, "column": key, "iqm": iqm(vals),
                             "ci_low": lo, "ci_high": hi, "n_seeds": len(vals),
                             "seeds": " ".join(str(r["seed"]) for r in mr),
                             "values": " ".join(f"{v:g}" for v in vals)})
        table[m] = (len(mr), cells)
    return table


def _cell_text(key: str, v: float, lo: float, hi: float, best: dict, latex: bool) -> str:
    s = f"{v:.2f} [{lo:.2f}, {hi:.2f}]" if key.startswith("acr") else \
        f"{v:.1f} [{lo:.1f}, {hi:.1f}]"
    if key in best and abs(v - best[key]) < 1e-9:
        s = (r"\textbf{" + s + "}") if latex else f"**{s}**"
    return s


def _env_tables(env: str, steps, cols, table: dict) -> tuple[list[str], list[str]]:
    """The Markdown and LaTeX lines of one env's table."""
    spec = ENVS[env]
    e1, e2 = spec["eval_eps"]
    best = {key: max(c[key][0] for _, c in table.values()) for key, _ in cols[:-1]}
    md = [f"## {env} (train eps {spec['train_eps']:g}, {steps} env steps, "
          f"eval eps {e1:g} / {e2:g}, raw observation, l_inf)", "",
          "| Method | seeds | " + " | ".join(c for _, c in cols) + " |",
          "|---|---|" + "---|" * len(cols)]
    tex = [r"\begin{table}[t]", r"\centering", r"\small",
           r"\caption{" + env.replace("_", r"\_") + r": IQM over seeds [95\% bootstrap CI]. "
           f"Robust losses trained at $\\epsilon={spec['train_eps']:g}$ ($\\ell_\\infty$, raw "
           "observation); PGD: 10 steps; ACR: CROWN (SortNet: closed-form Lipschitz). "
           r"Best per column in bold.}",
           r"\begin{tabular}{l" + "c" * (len(cols) + 1) + "}", r"\toprule",
           "Method & seeds & " + " & ".join(c for _, c in cols) + r" \\", r"\midrule"]
    for m, (nseeds, cells) in table.items():
        md.append(f"| {METHODS[m][0]} | {nseeds} | "
                  + " | ".join(_cell_text(k, *cells[k], best, False) for k, _ in cols) + " |")
        tex.append(f"{METHODS[m][0]} & {nseeds} & "
                   + " & ".join(_cell_text(k, *cells[k], best, True) for k, _ in cols) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    md += ["", "Commands (seed K = 0..4): " + "; ".join(
        f"{METHODS[m][0]}: `certrl "
        + " ".join(train_argv(env, m, "K", Path("DIR"), steps or spec["steps"])) + "`"
        for m in table), ""]
    return md, tex


SHIP = {"vanilla": "vanilla", "sa": "sa", "radial": "radial", "wocar": "wocar", "car-ibp": "car",
        "sortnet": "sortnet"}


def ship(out: Path, episodes: int = 20) -> None:
    """Copy one CartPole agent per method into certrl/agents/ with JSON sidecars.

    The seed shipped is the one with the highest natural return in the table (ties: the
    higher ACR at the first eval eps); the rule is written into the sidecar.
    """
    import shutil

    import torch

    torch.set_num_threads(1)
    from certrl.agent import AGENTS_DIR, load
    from certrl.evaluate import evaluate
    from certrl.io import library_versions

    e1 = ENVS["CartPole-v1"]["eval_eps"][0]
    for method, short in SHIP.items():
        done = sorted((out / "CartPole-v1" / method).glob("seed*/result.json"))
        if not done:
            print(f"skip {method}: no finished run")
            continue
        results = [read_result(p.parent) for p in done]
        res = max(results, key=lambda r: (r["natural"], r[f"acr_{e1:g}"], -r["seed"]))
        seed = res["seed"]
        rdir = out / "CartPole-v1" / method / f"seed{seed}"
        name = f"cartpole-dqn-{short}"
        agent = load(rdir / "train")
        ev = evaluate(agent, episodes=episodes, seed=0)
        net = agent.net.spec
        if net["type"] == "lipschitz_q":
            desc = (f"SortNet Q-network 4-{net['hidden']}x{net['depth'] - 1}-2 "
                    f"(bounds.lipschitz.LipschitzMLP), Q = {net['scale']:g} * f, "
                    f"{net['scale']:g}-Lipschitz per output in l_inf")
        else:
            desc = "MLP 4-64-64-2 (ReLU), double DQN, not dueling"
        argv = train_argv("CartPole-v1", method, seed, Path(f"runs/{name}"),
                          res["train_steps"])
        side = {
            "name": name, "env_id": "CartPole-v1", "algo": "dqn", "loss": agent.loss_name,
            "seed": seed, "network": desc,
            "command": "certrl " + " ".join(argv),
            "benchmark": "benchmarks/robust_dqn.py (one run of the committed table)",
            "selection": (f"seed {seed}: highest natural return of seeds "
                          f"{sorted(r['seed'] for r in results)} in the table "
                          f"(ties: higher ACR at eps {e1:g})"),
            "eval_command": f"certrl evaluate runs/{name}/agent.pt --episodes {episodes}",
            "eval_return_mean": ev.mean, "eval_return_std": ev.std,
            "eval_episodes": episodes, "eval_seeds": f"0..{episodes - 1}",
            "train_steps": res["train_steps"], "train_wall_s": round(res["train_wall_s"], 1),
            "robust_loss": agent.config.get("robust_loss"),
            "threat_model": agent.threat_model.to_dict(),
            "table_row": {k: res[k] for k in res if k.startswith(("natural", "pgd_", "acr_"))
                          and not k.endswith("_returns")},
            "versions": library_versions(),
        }
        shutil.copyfile(rdir / "train" / "agent.pt", AGENTS_DIR / f"{name}.pt")
        write_text_atomic(AGENTS_DIR / f"{name}.json", json.dumps(side, indent=2) + "\n")
        size = (AGENTS_DIR / f"{name}.pt").stat().st_size
        print(f"shipped {name}: return {ev.mean:.1f} +- {ev.std:.1f}, {size / 1024:.0f} KB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=None, help="override the per-env step budget")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per column")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="runs/robust_dqn")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--ship", action="store_true",
                   help="copy one CartPole agent per method to certrl/agents/ (with sidecars)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.ship:
        ship(out)
        return 0
    t0 = time.perf_counter()
    if not args.render_only:
        tasks = make_tasks(out, args.envs, args.seeds, args.methods,
                           lambda env: args.steps or ENVS[env]["steps"], args.episodes)
        run_pool(run_one, tasks, args.workers, lambda: render(out, args.envs))
    render(out, args.envs, time.perf_counter() - t0 if not args.render_only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
