"""certrl demo: certify and attack the shipped agent(s), print the verification table.

For every agent (default: each shipped one among cartpole-dqn-vanilla and
cartpole-dqn-car, side by side), over a few seeded episodes: certify every
visited state with IBP, CROWN (sound) and randomized smoothing (probabilistic)
at several eps, play the greedy worst case with IBP and CROWN bounds (GWC,
heuristic), attack with our PGD and the references' PGD (pgd-ref) at the same
eps, and render the table. Writes OUT/certify.jsonl (certificates),
OUT/gwc.jsonl (heuristics), OUT/attack.jsonl (PGD) and OUT/attack-pgd-ref.jsonl
(all resumable; results made with other settings are refused unless --force),
OUT/table.{md,tex,csv} and the figure OUT/certified-fraction.png (certified fraction
of the visited states vs eps, from the per-state certified radii; ``certrl plot``).
Every agent runs under one threat set (``--eps-scale``, default: the one per-dimension
scale the agents carry), so they share columns.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from certrl.agent import load, shipped_agents
from certrl.attacks import make_attack
from certrl.certify import CertifySettings, RadiusConfig, SmoothingConfig, run_certify
from certrl.certify.run import agent_id, check_request, completed_units
from certrl.commands.common import add_force, eps_arg, positive_int, set_threads
from certrl.evaluate import (
    EPS_SCALE_HELP,
    EpisodeRun,
    apply_eps_scale,
    episode_log,
    episode_rng_seed,
    eps_scale_arg,
    run_episodes,
)
from certrl.records import check_out, scale_words
from certrl.report import build_tables, load_rows, render
from certrl.report.figures import save_figure

DEMO_AGENTS = ("cartpole-dqn-vanilla", "cartpole-dqn-car")
DEMO_EPS = (0.005, 0.01, 0.02, 0.05)
DEMO_METHODS = ("ibp", "crown", "smoothing")
DEMO_GWC = ("gwc-ibp", "gwc-crown")  # heuristics, written apart from the certificates
DEMO_ATTACKS = ("pgd", "pgd-ref")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="certify + attack the shipped agents, print the table",
                       description="Certify the shipped CartPole agents with IBP, CROWN and "
                                   "randomized smoothing at several eps, play GWC with IBP "
                                   "and CROWN bounds (heuristic), attack them with our PGD "
                                   "and the references' PGD at the same eps, and print the "
                                   "verification table.")
    p.add_argument("--agents", nargs="+", default=None,
                   help="agent names or checkpoints (default: shipped among "
                        f"{', '.join(DEMO_AGENTS)})")
    p.add_argument("--eps", type=eps_arg, nargs="+", default=list(DEMO_EPS))
    p.add_argument("--methods", nargs="+", default=list(DEMO_METHODS))
    p.add_argument("--gwc", nargs="*", default=list(DEMO_GWC), metavar="METHOD",
                   help=f"GWC variants (default {' '.join(DEMO_GWC)}; none: skip)")
    p.add_argument("--attacks", nargs="+", default=list(DEMO_ATTACKS),
                   choices=DEMO_ATTACKS, help="pgd (ours) and/or pgd-ref (the references')")
    p.add_argument("--episodes", type=positive_int, default=3)
    p.add_argument("--eps-scale", type=_demo_scale_arg, default="common", metavar="SCALE",
                   help="common (default: the per-dimension scale of the first agent "
                        "that carries one, applied to all so they share columns; none if "
                        "none has one) or "
                        "any certify --eps-scale value: " + EPS_SCALE_HELP)
    p.add_argument("--attack-steps", type=positive_int, default=10)
    p.add_argument("--sigma", type=float, default=0.1, help="smoothing noise std")
    p.add_argument("--n", type=positive_int, default=1000, help="smoothing samples")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    add_force(p)
    p.add_argument("--quick", action="store_true",
                   help="tiny budget (1 episode of <= 60 steps, 2 eps, n=200): a smoke test")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=1)


def default_agents() -> list[str]:
    have = set(shipped_agents())
    return [a for a in DEMO_AGENTS if a in have]


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    t_start = time.perf_counter()
    names = args.agents or default_agents()
    if not names:
        raise ValueError("no shipped demo agent found (expected one of "
                         f"{', '.join(DEMO_AGENTS)}); pass --agents CHECKPOINT")
    eps = list(args.eps)
    episodes, max_steps, n = args.episodes, None, args.n
    if args.quick:
        eps, episodes, max_steps, n = eps[:2], 1, 60, min(n, 200)
    settings = CertifySettings(seed=0, max_steps=max_steps,
                               radius=RadiusConfig(rtol=0.02, max_iter=8),
                               smoothing=SmoothingConfig(sigma=args.sigma, n0=100, n=n,
                                                         alpha=0.001))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; --out of demo is a folder")
    paths = _paths(out, args)
    agents = [(name, load(name)) for name in names]  # bad names fail before any output
    spec = common_scale([a for _, a in agents]) if args.eps_scale == "common" \
        else args.eps_scale
    agents = [(name, apply_eps_scale(agent, spec)) for name, agent in agents]
    for _, agent in agents:
        _preflight(agent, eps, episodes, max_steps, settings, paths, args)
    for k, (name, agent) in enumerate(agents):
        fresh = args.force and k == 0
        for path, methods in ((paths["certify"], args.methods), (paths["gwc"], args.gwc)):
            if methods:
                print(f"[{name}] certify ({', '.join(methods)}) at eps "
                      f"{', '.join(map(str, eps))} over {episodes} episode(s)", file=sys.stderr)
                run_certify(agent, name, eps, list(methods), episodes, path, settings,
                            progress=not args.no_progress, fresh=fresh)
        for attack in args.attacks:
            print(f"[{name}] {attack} attack ({args.attack_steps} steps)", file=sys.stderr)
            _attack(agent, name, eps, episodes, max_steps, args.attack_steps,
                    paths[attack], fresh, attack)
    rows = load_rows([p for p in paths.values() if p.exists()])
    tables = build_tables(rows)
    md = render(tables, "md")
    for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
        (out / f"table.{ext}").write_text(md if fmt == "md" else render(tables, fmt))
    print(md)
    print(f"results: {', '.join(str(p) for p in paths.values() if p.exists())}; tables: "
          f"{out}/table.{{md,tex,csv}}; figure: {_figure(rows, out)} "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 0


def _figure(rows: list[dict], out: Path) -> str:
    """Write OUT/certified-fraction.png (certrl plot --kind certified-fraction); its path,
    or why there is none (e.g. no state-level method was run)."""
    path = out / "certified-fraction.png"
    try:
        return str(save_figure(rows, "certified-fraction", path))
    except ValueError as e:
        return f"none ({e})"


def _demo_scale_arg(text: str):
    return "common" if str(text).strip().lower() == "common" else eps_scale_arg(text)


def common_scale(agents) -> tuple[float, ...] | str:
    """One per-dimension eps scale for all ``agents``, so they share table columns: the
    scale of the first agent that carries one ("none" when none does). When the agents
    carry different scales a note on stderr says which one is used."""
    scales = [a.threat_model.scale for a in agents if a.threat_model.scale is not None]
    if not scales:
        return "none"
    if len(set(scales)) > 1:
        print(f"demo: the agents carry different eps scales; all run under "
              f"{scale_words(scales[0])} (pick another with --eps-scale)", file=sys.stderr)
    return scales[0]


def _paths(out: Path, args) -> dict[str, Path]:
    """The demo's result files, checked (kind, --force) before any work."""
    return {"certify": check_out(out / "certify.jsonl", "certify", args.force),
            "gwc": check_out(out / "gwc.jsonl", "certify", args.force),
            "pgd": check_out(out / "attack.jsonl", "attack", args.force),
            "pgd-ref": check_out(out / "attack-pgd-ref.jsonl", "attack", args.force)}


def _preflight(agent, eps, episodes, max_steps, settings, paths, args) -> None:
    """Refuse a request that cannot run, or files made with other settings, before work."""
    for path, methods in ((paths["certify"], args.methods), (paths["gwc"], args.gwc)):
        if not methods:
            continue
        check_request(agent, eps, list(methods), settings)
        if not args.force:
            completed_units(path, agent_id(agent), settings, list(methods))
    if not args.force:
        for attack in args.attacks:
            episode_log(paths[attack], _attack_run(agent, eps, episodes, max_steps,
                                                   args.attack_steps, attack),
                        agent_id(agent)).refresh()


def _attack_run(agent, eps: list[float], episodes: int, max_steps: int | None,
                steps: int, attack: str = "pgd") -> EpisodeRun:
    norm = agent.threat_model.to_dict()["norm"]
    return EpisodeRun("attack", episodes, tuple(eps), attack, norm, 0, max_steps, True, steps,
                      None, "ce")


def _attack(agent, name: str, eps: list[float], episodes: int, max_steps: int | None,
            steps: int, path: Path, fresh: bool, attack: str = "pgd") -> None:
    """Attacked episodes (``attack``: pgd or pgd-ref) at each eps, appended (resumably)
    to ``path``."""
    norm = agent.threat_model.to_dict()["norm"]
    run_ = _attack_run(agent, eps, episodes, max_steps, steps, attack)

    def attack_for(e: float, episode: int):
        return make_attack(attack, agent.forward, agent.threat_model.with_eps(e), e, steps,
                           None, episode_rng_seed(0, episode), agent.action_space_kind, "ce")

    def fields(e: float) -> dict:
        return {"eps": e, "norm": norm, "attack": attack, "attack_steps": steps,
                "step_size": None, "objective": "ce",
                "threat_model": agent.threat_model.with_eps(e).to_dict()}

    run_episodes(agent, name, run_, path, fields, attack_for, fresh=fresh)
