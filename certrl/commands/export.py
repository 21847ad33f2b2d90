"""certrl export: an agent as ONNX, or as a VNN-LIB benchmark (ONNX + one property per state)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from certrl.agent import load
from certrl.commands.common import add_force, eps_arg, positive_int
from certrl.evaluate import EPS_SCALE_HELP, apply_eps_scale, eps_scale_arg

INPUT_HELP = ("raw: the ONNX input is the raw observation, the agent's preprocessing "
              "(pixel scaling, observation normalization) folded in (default); network: "
              "the network input, the space eps is measured in")


# Deliberate parallel (duplicates lists it): every command's argparse block stays its own
# (flags, defaults and help differ per command), so their shapes repeat.
def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export an agent as ONNX or as a VNN-LIB benchmark",
        description="Export an agent's acting network (its bounded form) for other tools: "
                    "'onnx' writes one ONNX file; 'vnnlib' writes a VNN-COMP style folder "
                    "(onnx/, vnnlib/prop_<i>.vnnlib per state, instances.csv) whose "
                    "properties are unsat exactly when the state's greedy action is "
                    "robust on the agent's l_inf threat set. See docs/export.md.")
    fmt = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = fmt.add_parser("onnx", help="the acting network as ONNX")
    o.add_argument("checkpoint", help="checkpoint file, training folder or shipped agent name")
    o.add_argument("--out", required=True, help="ONNX file to write, e.g. net.onnx")
    o.add_argument("--input", choices=("raw", "network"), default="raw", help=INPUT_HELP)
    add_force(o)
    v = fmt.add_parser("vnnlib", help="ONNX + VNN-LIB properties + instances.csv")
    v.add_argument("checkpoint", help="checkpoint file, training folder or shipped agent name")
    v.add_argument("--eps", type=eps_arg, required=True,
                   help="radius in the agent's threat-model space (e.g. 0.02 or 1/255)")
    v.add_argument("--states", default=None, metavar="FILE.npy",
                   help="raw observations (N, *obs_shape); default: states of seeded episodes")
    v.add_argument("--episodes", type=positive_int, default=1,
                   help="episodes whose visited states are exported (default 1)")
    v.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    v.add_argument("--max-steps", type=positive_int, default=None, help="cut episodes")
    v.add_argument("--eps-scale", type=eps_scale_arg, default="agent", metavar="SCALE",
                   help=EPS_SCALE_HELP)
    v.add_argument("--input", choices=("raw", "network"), default="raw", help=INPUT_HELP)
    v.add_argument("--timeout", type=float, default=60.0,
                   help="per-instance timeout in instances.csv (seconds, default 60)")
    v.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    add_force(v)
    v.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        return run_onnx(args)
    return run_vnnlib(args)


def run_onnx(args: argparse.Namespace) -> int:
    from certrl.onnx_agent import export_onnx

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"--out {out} exists; use --force to overwrite it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
    agent = load(args.checkpoint)
    export_onnx(agent, out, args.input)
    print(f"wrote {out} ({agent.env_id} {agent.algo}/{agent.loss_name}, input: {args.input})")
    return 0


def episode_states(agent, episodes: int, seed: int, max_steps: int | None,
                   progress: bool) -> np.ndarray:
    """Raw observations of the states the agent visits in seeded episodes (episode i:
    env seed seed + i), the same states ``certrl certify`` certifies."""
    from tqdm import tqdm

    from certrl.rollout import acting, play

    states: list[np.ndarray] = []
    bar = tqdm(total=episodes, disable=not progress, desc="episodes", unit="ep",
               file=sys.stderr)
    try:
        play(agent, list(range(episodes)), seed, lambda i: acting(agent), max_steps,
             on_step=lambda i, s: states.append(np.asarray(s.obs)),
             on_end=lambda e: bar.update(1))
    finally:
        bar.close()
    return np.stack(states)


def run_vnnlib(args: argparse.Namespace) -> int:
    from certrl.vnnlib import write_benchmark

    agent = apply_eps_scale(load(args.checkpoint), args.eps_scale)
    if args.states is not None:
        try:
            obs = np.load(args.states, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--states {args.states}: cannot read a .npy array ({e})") from None
        if obs.ndim != len(agent.obs_shape) + 1 or len(obs) == 0:
            raise ValueError(f"--states {args.states}: need a non-empty array (N, "
                             f"{', '.join(map(str, agent.obs_shape))}); got {obs.shape}")
    else:
        obs = episode_states(agent, args.episodes, args.seed, args.max_steps,
                             not args.no_progress)
    m = write_benchmark(agent, obs, args.eps, args.out, args.timeout, args.input,
                        progress=not args.no_progress, force=args.force)
    print(f"wrote {len(m['labels'])} properties at eps {args.eps:g} "
          f"({agent.threat_model.with_eps(args.eps).describe()}) and {m['onnx']} to {args.out}")
    return 0
