"""certrl evaluate: natural returns of an agent over N seeded episodes (resumable)."""

from __future__ import annotations

import argparse

from certrl.agent import load

# Deliberate parallel (duplicates lists it): evaluate and attack import the same CLI helpers.
from certrl.commands.common import (
    add_force,
    default_out,
    fmt,
    positive_int,
    set_threads,
    truncation_note,
)
from certrl.device import add_device_arg, configure_determinism, resolve_device
from certrl.evaluate import (
    DEFAULT_EPISODES,
    EPS_SCALE_HELP,
    EpisodeRun,
    apply_eps_scale,
    eps_scale_arg,
    run_episodes,
    summarize_episodes,
)
from certrl.records import check_out
from certrl.smoothed import DEFAULT_SAMPLES, DEFAULT_SIGMA, MODES, smoothed


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="natural return over N seeded episodes",
                       description="Evaluate an agent (checkpoint path or shipped name). "
                                   "Writes one JSON line per episode; re-running with the "
                                   "same --out runs only the missing episodes.")
    p.add_argument("checkpoint", help="checkpoint file or shipped agent name")
    add_episode_flags(p)
    p.add_argument("--stochastic", action="store_true", help="sample actions")
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    add_force(p)
    p.add_argument("--threads", type=int, default=1)
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_smoothing_flags(p)



def add_episode_flags(p) -> None:
    """--episodes, --seed, --eps-scale, --max-steps: the seeded episodes (evaluate; attack
    runs the same episodes)."""
    p.add_argument("--episodes", type=positive_int, default=DEFAULT_EPISODES,
                   help=f"seeded episodes (default {DEFAULT_EPISODES}, as RADIAL / CAR-DQN)")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    p.add_argument("--eps-scale", type=eps_scale_arg, default="agent", metavar="SCALE",
                   help=EPS_SCALE_HELP)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="cut episodes after this many steps (rows say truncated: true)")


def add_smoothing_flags(p) -> None:
    """--smoothed, --sigma, --samples, --smoothing-mode, --noise-seed (evaluate; attack may
    add them too and wrap its agent with ``smoothed_from_args``)."""
    s = p.add_argument_group("smoothed agent (DQN; see docs/smoothing.md)")
    s.add_argument("--smoothed", action="store_true",
                   help="evaluate the smoothed agent: majority vote of the base agent over "
                        "--samples noisy copies x + N(0, sigma^2 I) per step")
    s.add_argument("--sigma", type=float, default=None,
                   help="noise std (default: the agent's training sigma, else "
                        f"{DEFAULT_SIGMA})")
    s.add_argument("--samples", type=positive_int, default=DEFAULT_SAMPLES,
                   help=f"noise samples per step (default {DEFAULT_SAMPLES}, as S-DQN)")
    s.add_argument("--smoothing-mode", choices=MODES, default="vote",
                   help="vote (S-DQN / Cohen) or mean-q (CROP's smoothed Q, unclipped)")
    s.add_argument("--noise-seed", type=int, default=0, help="seed of the smoothing noise")


def smoothed_from_args(agent, args: argparse.Namespace):
    """The agent itself, or with --smoothed its ``SmoothedAgent`` (smoothing flags
    without --smoothed are an error)."""
    if not args.smoothed:
        if args.sigma is not None or args.samples != DEFAULT_SAMPLES or \
                args.smoothing_mode != "vote" or args.noise_seed != 0:
            raise ValueError("--sigma, --samples, --smoothing-mode and --noise-seed need "
                             "--smoothed")
        return agent
    if getattr(args, "stochastic", False):
        raise ValueError("--smoothed evaluates the deterministic smoothed policy; drop "
                         "--stochastic")
    return smoothed(agent, args.sigma, args.samples, args.smoothing_mode, args.noise_seed)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)  # ValueError (exit 2) before anything is written
    configure_determinism(device)
    out = check_out(args.out or default_out("evaluate", args.checkpoint), "evaluate",
                    args.force)
    agent = smoothed_from_args(apply_eps_scale(load(args.checkpoint, device), args.eps_scale),
                               args)
    run_ = EpisodeRun("evaluate", args.episodes, seed=args.seed, max_steps=args.max_steps,
                      deterministic=not args.stochastic,
                      norm=agent.threat_model.to_dict()["norm"])
    rows = run_episodes(agent, str(args.checkpoint), run_, out,
                        lambda eps: {"eps": 0.0, "attack": "none", "attack_steps": 0},
                        fresh=args.force, progress=not args.no_progress)
    s = summarize_episodes(rows)[0.0]
    what = "" if not args.smoothed else (
        f" smoothed ({agent.smoothing.mode}, sigma {agent.smoothing.sigma:g}, "
        f"{agent.smoothing.samples} samples)")
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}{what}: natural return "
          f"{fmt(s['mean'])} +- {fmt(s['std'])} over {s['episodes']} episodes"
          f"{truncation_note(s)}")
    print(f"results: {out}")
    return 0
