"""certrl certify: state and trajectory certificates along seeded episodes (resumable)."""

from __future__ import annotations

import argparse
import math

import numpy as np

from certrl.agent import load
from certrl.certify import (
    METHODS,
    BabConfig,
    CertifySettings,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    get_method,
    method_names,
    run_certify,
)
from certrl.commands.common import add_force, default_out, eps_arg, positive_int, set_threads
from certrl.device import add_device_arg, configure_determinism, resolve_device
from certrl.evaluate import DEFAULT_EPISODES, EPS_SCALE_HELP, apply_eps_scale, eps_scale_arg
from certrl.records import check_out
from certrl.smoothed import resolve_sigma


def methods_by_kind() -> str:
    """'ibp, ... (sound); smoothing, ... (probabilistic); gwc (heuristic, ...)', from
    the registry."""
    parts = []
    for kind in ("sound", "exact", "probabilistic", "heuristic"):
        names = [n for n, m in METHODS.items() if m.kind == kind]
        note = ", not a certificate" if kind == "heuristic" else ""
        if names:
            parts.append(f"{', '.join(names)} ({kind}{note})")
    return "; ".join(parts)


# Deliberate parallel (duplicates lists it): every command's argparse block stays its own
# (flags, defaults and help differ per command), so their shapes repeat.
def add_parser(sub) -> None:
    p = sub.add_parser(
        "certify", help="certify actions along episodes (ACR, radius, bounds)",
        description="Roll out seeded episodes with the agent and certify every visited state "
                    "at each eps with each method. Writes one JSON line per state and per "
                    "episode; re-running with the same --out skips finished "
                    "(episode, eps, method) units (and refuses a file of other results; "
                    "--force overwrites it). eps is measured in the agent's "
                    f"threat-model space (network input). Methods: {methods_by_kind()}.")
    p.add_argument("checkpoint", help="checkpoint file, training folder or shipped agent name")
    p.add_argument("--eps", type=eps_arg, nargs="+", required=True,
                   help="one or more radii, e.g. --eps 0.01 0.02 or 1/255")
    p.add_argument("--method", nargs="+", default=["crown"], metavar="METHOD",
                   help=f"one or more of {', '.join(method_names())} (default crown)")
    p.add_argument("--episodes", type=positive_int, default=DEFAULT_EPISODES,
                   help=f"seeded episodes (default {DEFAULT_EPISODES}, as RADIAL / CAR-DQN)")
    p.add_argument("--obs", default=None, metavar="FILE.npy",
                   help="certify these raw observations (N, *obs_shape) instead of episodes")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    p.add_argument("--eps-scale", type=eps_scale_arg, default="agent", metavar="SCALE",
                   help=EPS_SCALE_HELP)
    p.add_argument("--max-steps", type=positive_int, default=None, help="cut episodes")
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    add_force(p)
    p.add_argument("--backend", choices=("auto", "native", "lirpa"), default="auto")
    p.add_argument("--no-radius", action="store_true", help="skip the certified-radius search")
    p.add_argument("--radius-rtol", type=float, default=0.01,
                   help="bisection stops when (hi - lo) <= rtol * hi")
    p.add_argument("--radius-iters", type=positive_int, default=12,
                   help="max bisection steps after bracketing")
    p.add_argument("--sigma", type=float, default=None,
                   help="smoothing noise std (default: the agent's training sigma if it was "
                        "noise-trained, else 0.1; a warning when another is given)")
    p.add_argument("--n0", type=positive_int, default=100, help="smoothing selection samples")
    p.add_argument("--n", type=positive_int, default=1000, help="smoothing estimation samples")
    p.add_argument("--alpha", type=float, default=0.001,
                   help="smoothing / policy-smoothing failure probability")
    p.add_argument("--ps-episodes", type=positive_int, default=100,
                   help="smoothed episodes for policy-smoothing / S-DQN bounds")
    p.add_argument("--return-min", type=float, default=None,
                   help="lower bound of any episode return (policy-smoothing)")
    p.add_argument("--milp-time-limit", type=float, default=30.0, help="seconds per MILP")
    p.add_argument("--max-relus", type=positive_int, default=200,
                   help="exact: largest network (ReLU neurons) accepted")
    p.add_argument("--bab-timeout", type=float, default=10.0,
                   help="bab: seconds per branch-and-bound query (past it: unknown, not "
                        "certified)")
    p.add_argument("--no-state-rows", action="store_true",
                   help="write only per-episode rows (smaller files)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=1)
    add_device_arg(p)


def settings_from_args(args: argparse.Namespace) -> CertifySettings:
    """Validated settings (ValueError on bad numbers)."""
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma > 0):
        raise ValueError(f"--sigma must be positive; got {args.sigma}")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha must lie in (0, 1); got {args.alpha}")
    if not (math.isfinite(args.radius_rtol) and 0 < args.radius_rtol < 1):
        raise ValueError(f"--radius-rtol must lie in (0, 1); got {args.radius_rtol}")
    if not (math.isfinite(args.milp_time_limit) and args.milp_time_limit > 0):
        raise ValueError("--milp-time-limit must be positive")
    if not (math.isfinite(args.bab_timeout) and args.bab_timeout > 0):
        raise ValueError(f"--bab-timeout must be positive; got {args.bab_timeout}")
    if args.return_min is not None and not math.isfinite(args.return_min):
        raise ValueError(f"--return-min must be a finite number; got {args.return_min}")
    return CertifySettings(
        seed=args.seed, max_steps=args.max_steps, backend=args.backend,
        radius=RadiusConfig(enabled=not args.no_radius, rtol=args.radius_rtol,
                            max_iter=args.radius_iters),
        smoothing=SmoothingConfig(sigma=0.1 if args.sigma is None else args.sigma, n0=args.n0,
                                  n=args.n, alpha=args.alpha),
        exact=ExactConfig(time_limit=args.milp_time_limit, max_relus=args.max_relus),
        bab=BabConfig(timeout_s=args.bab_timeout),
        ps_episodes=args.ps_episodes, ps_return_min=args.return_min,
        state_rows=not args.no_state_rows)


def print_summary(agent, res: dict, out) -> None:
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}: "
          f"{res['written']} units certified, {res['skipped']} already in {out}")
    for (method, eps), a in sorted(res["summary"].items()):
        if "certified_return" in a:
            # non-finite bounds come back from the file as strings ("-inf")
            print(f"  {method:12s} eps {eps:<8.4g} ({a['kind']}, n={a['episodes']}) certified "
                  f"expected return {float(a['certified_return']):.1f}, median bound "
                  f"{float(a['median_return_bound']):.1f}")
            continue
        if a["acr"] is None:
            rets = [r for r in a["returns"] if r is not None]
            mean = sum(rets) / len(rets) if rets else float("nan")
            print(f"  {method:12s} eps {eps:<8.4g} ({a['kind']}) mean return {mean:.1f} "
                  f"over {a['episodes']} episodes")
            continue
        print(f"  {method:12s} eps {eps:<8.4g} ACR {a['acr']:.3f}  certified trajectories "
              f"{a['certified_trajectories']}/{a['episodes']}  ({a['kind']})")


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)  # ValueError (exit 2) before anything is written
    configure_determinism(device)
    settings = settings_from_args(args)
    for m in args.method:
        get_method(m)  # ValueError naming the known methods
    out = check_out(args.out or default_out("certify", args.checkpoint), "certify", args.force)
    agent = apply_eps_scale(load(args.checkpoint, device), args.eps_scale)
    if any(get_method(m).kind == "probabilistic" for m in args.method):
        args.sigma = resolve_sigma(agent, args.sigma)  # the agent's training sigma by default
        settings = settings_from_args(args)
    obs = None
    if args.obs is not None:
        try:
            obs = np.load(args.obs, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--obs {args.obs}: cannot read a .npy array ({e})") from None
    res = run_certify(agent, str(args.checkpoint), list(args.eps), list(args.method),
                      args.episodes, out, settings, progress=not args.no_progress,
                      observations=obs, fresh=args.force)
    print_summary(agent, res, out)
    print(f"results: {out}")
    return 0
