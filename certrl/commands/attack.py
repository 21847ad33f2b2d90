"""certrl attack: returns under an observation attack at one or several eps (resumable)."""

from __future__ import annotations

import argparse

from certrl.agent import load
from certrl.attacks import ATTACKS, make_attack
from certrl.commands.common import (
    add_force,
    default_out,
    eps_arg,
    fmt,
    positive_int,
    set_threads,
    truncation_note,
)
from certrl.evaluate import (
    DEFAULT_EPISODES,
    EPS_SCALE_HELP,
    EpisodeRun,
    apply_eps_scale,
    episode_rng_seed,
    eps_scale_arg,
    run_episodes,
    summarize_episodes,
)
from certrl.records import check_out, eps_space_words
from certrl.threat import parse_norm


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="attacked return (pgd, pgd-ref, fgsm, mad, random)",
                       description="Attack an agent's observations at each step and report "
                                   "returns. eps is measured in the agent's threat-model space "
                                   "(network input: [0,1] pixels for Atari, normalized obs "
                                   "for MuJoCo). pgd: random start, best iterate (ours); "
                                   "pgd-ref: the references' PGD (10 steps of 0.1 eps, no "
                                   "random start). Writes one JSON line per episode; re-running "
                                   "with the same --out runs only the missing episodes.")
    p.add_argument("checkpoint", help="checkpoint file or shipped agent name")
    p.add_argument("--attack", choices=ATTACKS, default="pgd")
    p.add_argument("--eps", type=eps_arg, nargs="+", required=True,
                   help="one or more radii, e.g. --eps 0.01 0.05 or 3/255")
    p.add_argument("--steps", type=positive_int, default=10, help="attack iterations")
    p.add_argument("--step-size", type=float, default=None,
                   help="default 2.5 eps / steps (pgd), 0.1 eps (pgd-ref)")
    p.add_argument("--norm", default=None, help="inf or 2 (default: the agent's threat model)")
    p.add_argument("--objective", choices=("ce", "margin"), default="ce",
                   help="discrete agents: cross-entropy or Q-margin of the clean action")
    p.add_argument("--episodes", type=positive_int, default=DEFAULT_EPISODES,
                   help=f"seeded episodes (default {DEFAULT_EPISODES}, as RADIAL / CAR-DQN)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    p.add_argument("--eps-scale", type=eps_scale_arg, default="agent", metavar="SCALE",
                   help=EPS_SCALE_HELP)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="cut episodes after this many steps (rows say truncated: true)")
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    add_force(p)
    p.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.step_size is not None and not args.step_size > 0:
        raise ValueError(f"--step-size must be > 0; got {args.step_size}")
    out = check_out(args.out or default_out("attack", args.checkpoint, args.attack), "attack",
                    args.force)
    agent = apply_eps_scale(load(args.checkpoint), args.eps_scale)
    tm = agent.threat_model
    if args.norm is not None:
        d = tm.to_dict()
        d["norm"] = parse_norm(args.norm)
        tm = type(tm).from_dict(d)
    norm = tm.to_dict()["norm"]
    objective = "mad" if agent.action_space_kind == "continuous" else args.objective
    run_ = EpisodeRun("attack", args.episodes, tuple(args.eps), args.attack, norm, args.seed,
                      args.max_steps, True,
                      1 if args.attack in ("fgsm", "random") else args.steps,
                      args.step_size, objective)

    def attack_for(eps: float, episode: int):
        return make_attack(args.attack, agent.forward, tm.with_eps(eps), eps, args.steps,
                           args.step_size, episode_rng_seed(args.seed, episode),
                           agent.action_space_kind, args.objective)

    def fields(eps: float) -> dict:
        return {"eps": eps, "norm": norm, "attack": args.attack,
                "attack_steps": run_.attack_steps, "step_size": args.step_size,
                "objective": objective, "threat_model": tm.with_eps(eps).to_dict()}

    rows = run_episodes(agent, str(args.checkpoint), run_, out, fields, attack_for,
                        fresh=args.force)
    how = " (MAD objective)" if agent.action_space_kind == "continuous" else ""
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}: {args.attack}{how} "
          f"(l_{norm if args.norm is None else args.norm}, {args.steps} steps, "
          f"eps in {eps_space_words(tm)}), {args.episodes} episodes")
    for eps, s in summarize_episodes(rows).items():
        extra = (f", actions changed {100 * s['action_change_rate']:.1f}%"
                 if "action_change_rate" in s else "")
        print(f"  eps {eps:.4g}: return {fmt(s['mean'])} +- {fmt(s['std'])}{extra}"
              f"{truncation_note(s)}")
    print(f"results: {out}")
    return 0
