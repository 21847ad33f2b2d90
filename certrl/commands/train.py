"""certrl train: train a DQN or PPO agent, with periodic checkpoints and --resume.

Output folder layout::

    DIR/agent.pt                 final agent (no training state; what you load); with
                                 --eval-every the best evaluated weights, final ones in
                                 DIR/final.pt and the best so far in checkpoints/best.pt
    DIR/checkpoints/latest.pt    agent + training state (what --resume reads)
    DIR/checkpoints/step_N.pt    periodic agent snapshots
    DIR/train.jsonl              one record per training episode + a summary
    DIR/command.json             the command line and resolved config (+ each resume)
    DIR/metrics.csv              one row of training metrics per --log-every steps
                                 (TensorBoard scalars too with --tensorboard TBDIR)

Resume is exact: ``--resume`` after a kill ends with the same weights as the
uninterrupted run of the same seed and settings. latest.pt holds everything the rest
of the run depends on (see ``certrl.algos.base.Algorithm``); DQN checkpoints at the
first episode end after each ``--checkpoint-every`` interval, PPO after the first
update past it (mid-episode: each env is rebuilt by replaying its current episode's
actions from the episode's derived reset seed). Checkpoints never change training.
Anything that makes a run deviate from exact is listed in the summary's ``resume``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from certrl.algos import ALGOS
from certrl.algos.base import coerce_field, resolve_init
from certrl.algos.selection import SELECTS
from certrl.commands.common import eps_arg, nonneg_int, positive_int, set_threads
from certrl.device import add_device_arg, configure_determinism, device_label, resolve_device
from certrl.envs import env_family, env_version
from certrl.io import CheckpointError, library_versions, load_checkpoint
from certrl.losses import LOSS_NAMES, make_loss, sortnet_q_spec
from certrl.losses.common import SOLVERS
from certrl.records import write_jsonl
from certrl.telemetry import (
    EVAL_EPISODES,
    MetricsLogger,
    TrainTelemetry,
    summary_writer_class,
)


# Deliberate parallel (duplicates lists it): every command's argparse block stays its own
# (flags, defaults and help differ per command), so their shapes repeat.
def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DQN or PPO agent",
                       description="Train an agent; writes DIR/agent.pt and DIR/train.jsonl.")
    p.add_argument("--env", help="env id, e.g. CartPole-v1, ALE/Pong-v5, Hopper-v5")
    p.add_argument("--algo", choices=sorted(ALGOS), help="dqn (discrete) or ppo")
    p.add_argument("--steps", type=positive_int, help="total env steps")
    p.add_argument("--seed", type=int, default=0, help="run seed (an integer >= 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoints/latest.pt (up to --steps if given)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="env steps between checkpoints (default: steps / 10)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set lr=1e-3 --set hidden=64,64")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default 1 for MLPs, torch's default for Atari); "
                        "resume with the same count for bit-identical results")
    add_device_arg(p)
    p.add_argument("--replay-cap-mb", type=positive_int, default=None,
                   help="DQN: save no replay buffer at all when it is larger (a resume is "
                        "then not exact; default: no cap)")
    p.add_argument("--replay-every", type=positive_int, default=None, metavar="K",
                   help="DQN: a buffer over 16 MB goes to checkpoints/replay.pt, written every "
                        "K-th checkpoint (1: exact resume from any; default: at the end only)")
    # test hook: SIGKILL this process right after the Nth latest.pt is written
    p.add_argument("--kill-after-checkpoint", type=positive_int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--num-envs", type=positive_int, default=None, metavar="N",
                   help="DQN: act in N envs at once (one batched forward pass per N env "
                        "steps; the update schedule stays in env steps; default 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_telemetry_flags(p)
    _add_finetune_flags(p)
    _add_robust_flags(p)


def _add_robust_flags(p) -> None:
    """--loss, --train-eps, the solver and each loss's constants, the eps schedule."""
    r = p.add_argument_group("robust training (see docs/robust-training.md)")
    r.add_argument("--loss", choices=LOSS_NAMES, default="vanilla",
                   help="robust loss (sortnet: DQN with a SortNet Q-network)")
    r.add_argument("--train-eps", type=eps_arg, default=None,
                   help="target eps of the robust loss (recorded as the agent's threat model)")
    r.add_argument("--solver", choices=SOLVERS, default=None,
                   help="inner solver: ibp, crown-ibp (beta 1 -> 0) or pgd (loss default)")
    r.add_argument("--pgd-steps", type=positive_int, default=None, help="PGD steps (solver pgd)")
    r.add_argument("--kappa", type=float, default=None, help="SA / WocaR / SortNet hinge weight")
    r.add_argument("--kappa-end", type=float, default=None,
                   help="RADIAL / WocaR final TD weight; CAR: the TD weight of the "
                        "reference's --trades form (default: none, the soft max alone)")
    r.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="CAR softmax temperature (0 = hard max)")
    r.add_argument("--reg", type=float, default=None, help="SA-PPO / WocaR-PPO weight")
    r.add_argument("--hinge-c", dest="c", type=float, default=None, help="hinge cap c")
    r.add_argument("--worst-weight", type=float, default=None, help="WocaR r")
    r.add_argument("--kl-coef", type=float, default=None, help="CAR-PPO KL weight")
    r.add_argument("--warmup", type=float, default=None,
                   help="fraction of steps with eps = 0 (default 0.2)")
    r.add_argument("--ramp", type=float, default=None,
                   help="fraction of steps of the eps ramp (default 0.4)")
    r.add_argument("--sigma", type=float, default=None,
                   help="noise: std of the Gaussian observation noise N(0, sigma^2 I) in the "
                        "network-input space (recorded as the agent's smoothing sigma)")
    r.add_argument("--noise-next", action="store_true", default=None,
                   help="noise (DQN): also put noise on s' in the TD target (default: clean)")
    r.add_argument("--sortnet-hidden", type=positive_int, default=64)
    r.add_argument("--sortnet-depth", type=positive_int, default=2)
    r.add_argument("--sortnet-scale", type=float, default=10.0,
                   help="Lipschitz constant s of the SortNet Q-network (Q = s * f)")


def _add_telemetry_flags(p) -> None:
    """--tensorboard, --log-every, --log-eval-every, --log-eval-episodes."""
    t = p.add_argument_group("telemetry (DIR/metrics.csv always; see docs/training.md)")
    t.add_argument("--tensorboard", metavar="TBDIR", default=None,
                   help="also write the metrics as TensorBoard scalars to TBDIR "
                        "(needs the tensorboard package: pip install -e .[tensorboard])")
    t.add_argument("--log-every", type=positive_int, default=None, metavar="N",
                   help="env steps between metrics rows (default: steps / 100, at least 1)")
    t.add_argument("--log-eval-every", type=nonneg_int, default=0, metavar="N",
                   help="every N env steps also log a greedy evaluation's natural return and "
                        "its ACR (CROWN) at the agent's eps (0: off, the default)")
    t.add_argument("--log-eval-episodes", type=positive_int, default=None, metavar="M",
                   help=f"episodes per telemetry evaluation (default {EVAL_EPISODES})")


def _telemetry(args: argparse.Namespace, out: Path, algo) -> TrainTelemetry:
    """The run's telemetry: DIR/metrics.csv (appended on --resume) and --tensorboard."""
    start = algo.global_step
    logger = MetricsLogger(out / "metrics.csv", args.tensorboard,
                           resume_step=start if args.resume else None)
    every = args.log_every or max(1, algo.cfg.total_steps // 100)
    return TrainTelemetry(logger, every, start_step=start, eval_every=args.log_eval_every,
                          eval_episodes=args.log_eval_episodes or EVAL_EPISODES)


def _warn_no_updates(algo) -> None:
    """A stderr warning when DQN takes no gradient step in the whole run: updates come at
    steps t > learning_starts with t % train_freq == 0."""
    cfg = algo.cfg
    starts = getattr(cfg, "learning_starts", None)
    if starts is None:
        return
    freq = getattr(cfg, "train_freq", 1)
    first = (starts // freq + 1) * freq
    if starts >= cfg.total_steps:
        why = f"learning_starts ({starts}) >= total steps ({cfg.total_steps})"
    elif first > cfg.total_steps:
        why = (f"the first update would be at step {first} (learning_starts {starts}, "
               f"train_freq {freq}), after the last step ({cfg.total_steps})")
    else:
        return
    print(f"certrl train: warning: no gradient step will be taken: {why}; lower it with "
          f"--set learning_starts=N", file=sys.stderr)


def _add_finetune_flags(p) -> None:
    """--init-from, --eval-every, --eval-episodes, --eps-scale (DQN)."""
    f = p.add_argument_group("fine-tuning and best checkpoint (DQN; see docs/training.md)")
    f.add_argument("--init-from", metavar="AGENT", default=None,
                   help="start from this agent's Q weights (checkpoint path, run folder or "
                        "shipped name, e.g. cartpole-dqn-vanilla) with the fine-tuning "
                        "defaults (--set overrides them; --env/--algo/--steps optional)")
    f.add_argument("--eval-every", type=nonneg_int, default=None, metavar="N",
                   help="evaluate the greedy agent every N env steps and keep the best "
                        "weights as DIR/agent.pt (0: off; fine-tuning default 1000)")
    f.add_argument("--eval-episodes", type=positive_int, default=None, metavar="M",
                   help="episodes per evaluation (default 5)")
    f.add_argument("--select", choices=SELECTS, default="natural",
                   help="best-checkpoint score: natural (mean return), robust (min of the "
                        "mean natural and the mean GWC-CROWN return at --select-eps, default "
                        "--train-eps), robust-pgd (also min with the mean return under PGD "
                        "at that eps) or smoothed (mean return of the smoothed agent at the "
                        "noise loss's --sigma; certrl.algos.selection)")
    f.add_argument("--select-eps", type=eps_arg, default=None, metavar="E",
                   help="eps of --select robust / robust-pgd (default: --train-eps)")
    f.add_argument("--eps-scale", choices=("none", "std"), default=None,
                   help="std: scale eps per observation dimension by its std on the init "
                        "agent's greedy trajectories (needs --init-from; default none)")


def _robust_loss(args: argparse.Namespace, algo: str):
    """The RobustLoss the flags ask for (None for vanilla)."""
    params = {k: getattr(args, k) for k in ("kappa", "kappa_end", "lam", "reg", "c",
                                             "worst_weight", "kl_coef", "pgd_steps",
                                             "warmup", "ramp", "solver")}
    noise = {"sigma": getattr(args, "sigma", None), "noise_next": getattr(args, "noise_next", None)}
    if args.loss == "noise":
        return _noise_loss(args, algo, params, noise)
    if any(v is not None for v in noise.values()):
        raise ValueError("--sigma and --noise-next belong to --loss noise")
    if args.loss == "vanilla":
        given = sorted(k for k, v in params.items() if v is not None)
        if given:
            raise ValueError(f"--loss vanilla takes no robust-loss flags (got {given})")
        return None
    if args.loss == "sortnet" and algo != "dqn":
        raise ValueError("--loss sortnet is a DQN agent (use --algo dqn)")
    if not args.train_eps:
        raise ValueError(f"--loss {args.loss} needs --train-eps > 0 (the eps it trains for)")
    return make_loss(algo, args.loss, **params)


def _noise_loss(args: argparse.Namespace, algo: str, params: dict, noise: dict):
    """--loss noise: Gaussian noise augmentation at --sigma (no --train-eps needed)."""
    sigma = noise["sigma"]
    if sigma is None or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"--loss noise needs --sigma > 0 (the noise std); got {sigma}")
    if noise["noise_next"] and algo != "dqn":
        raise ValueError("--noise-next is a DQN option (the TD target's next state)")
    extra = sorted(k for k, v in params.items() if v is not None
                   and k not in ("warmup", "ramp"))
    if extra:
        raise ValueError(f"--loss noise takes --sigma, --noise-next, --warmup and --ramp "
                         f"(got {extra})")
    return make_loss(algo, "noise", sigma=sigma, noise_next=noise["noise_next"],
                     warmup=params["warmup"], ramp=params["ramp"])


def _record_sigma(algo) -> None:
    """A noise-trained agent's metadata "smoothing_sigma": the sigma it trained at."""
    rl = algo.robust_loss
    if rl is not None and rl.name == "noise":
        algo.agent_obj.metadata["smoothing_sigma"] = float(rl.cfg.sigma)


def _overrides(cfg_cls, items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = coerce_field(cfg_cls, k.strip(), v.strip())
    return out


def _resume_algo(args: argparse.Namespace, latest: Path):
    """The algorithm rebuilt from latest.pt (robust loss from its config), flags checked."""
    if not latest.exists():
        raise CheckpointError(f"--resume: no checkpoint at {latest}")
    head = load_checkpoint(latest)  # CheckpointError for truncated / pickled / foreign
    algo_name = head.get("algo")
    if algo_name not in ALGOS or not isinstance(head.get("train_state"), dict):
        raise CheckpointError(f"{latest} is not a certrl training checkpoint")
    if args.algo and args.algo != algo_name:
        raise ValueError(f"--algo {args.algo} but {latest} holds a {algo_name} run")
    if args.env and args.env != head.get("env_id"):
        raise ValueError(f"--env {args.env} but {latest} holds a {head.get('env_id')} run")
    algo_cls, cfg_cls = ALGOS[algo_name]
    over = _overrides(cfg_cls, args.set)
    if args.steps:
        over["total_steps"] = args.steps
    _num_envs_flag(args, algo_name, over)
    _threads(args, head["env_id"])
    with warnings.catch_warnings():  # caveats are printed as one-line notes below
        warnings.simplefilter("ignore", RuntimeWarning)
        algo = algo_cls.resume(head, **over)
    for c in algo.resume_caveats:
        print(f"certrl train: note: resume not exact: {c}", file=sys.stderr)
    return algo


def _finetune_flags(args: argparse.Namespace, over: dict) -> None:
    """--eval-every / --eval-episodes / --eps-scale into the overrides (DQN only)."""
    flags = {"eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
             "eps_scale": args.eps_scale}
    given = {k: v for k, v in flags.items() if v is not None}
    if args.algo != "dqn" and (given or args.init_from):
        raise ValueError("--init-from, --eval-every, --eval-episodes and --eps-scale are "
                         f"DQN options (got --algo {args.algo})")
    if given.get("eps_scale") == "std" and not args.init_from:
        raise ValueError("--eps-scale std measures the observation std on the init agent's "
                         "trajectories: it needs --init-from")
    over.update(given)


def _num_envs_flag(args: argparse.Namespace, algo: str, over: dict) -> None:
    """--num-envs N into the overrides (DQN only; PPO's is --set num_envs=N)."""
    if args.num_envs is None:
        return
    if algo != "dqn":
        raise ValueError(f"--num-envs is a DQN option (got --algo {algo}); PPO sets its "
                         "number of envs with --set num_envs=N")
    if over.get("num_envs", args.num_envs) != args.num_envs:
        raise ValueError(f"--num-envs {args.num_envs} but --set num_envs={over['num_envs']}")
    over["num_envs"] = args.num_envs


def _init_agent(args: argparse.Namespace):
    """The --init-from agent (None without it); fills in --env and --algo from it."""
    if not args.init_from:
        return None
    agent, _ = resolve_init(args.init_from)
    if args.env and args.env != agent.env_id:
        raise ValueError(f"--env {args.env} but the init agent {args.init_from} is a "
                         f"{agent.env_id} agent")
    if agent.algo != "dqn" or (args.algo and args.algo != "dqn"):
        raise ValueError(f"--init-from fine-tunes a DQN agent with DQN; {args.init_from} is "
                         f"a {agent.algo} agent" + (f" and --algo is {args.algo}"
                                                    if args.algo else ""))
    args.env, args.algo = agent.env_id, "dqn"
    return agent


def _new_algo(args: argparse.Namespace, out: Path, latest: Path):
    """A fresh algorithm from the flags (config, threat eps, robust loss beside it)."""
    init = _init_agent(args)
    if not (args.env and args.algo and (args.steps or init is not None)):
        raise ValueError("train needs --env, --algo and --steps (or --resume, or "
                         "--init-from AGENT)")
    if args.seed < 0 or args.seed >= 2**63:
        raise ValueError(f"--seed must be an integer in [0, 2**63); got {args.seed}")
    env_family(args.env)  # unknown env -> clear error before anything is written
    if (out / "agent.pt").exists() or latest.exists():
        raise ValueError(f"{out} already holds a run; use --resume or another --out")
    algo_cls, cfg_cls = ALGOS[args.algo]
    over = _overrides(cfg_cls, args.set)
    over["seed"] = args.seed
    if args.steps:
        over["total_steps"] = args.steps
    _num_envs_flag(args, args.algo, over)
    _finetune_flags(args, over)
    rl = _robust_loss(args, args.algo)
    if args.train_eps is not None:
        over["threat"] = {**(over.get("threat") or {}), "eps": args.train_eps}
    if args.loss == "sortnet":
        over["q_spec"] = sortnet_q_spec(args.sortnet_hidden, args.sortnet_depth,
                                        args.sortnet_scale)
    _threads(args, args.env)
    if init is None:
        algo = algo_cls(cfg_cls.for_env(args.env, **over), robust_loss=rl)
    else:
        algo = algo_cls(cfg_cls.for_finetune(init, **over), robust_loss=rl, init_agent=init)
    _select(args, algo)
    return algo


def _select(args: argparse.Namespace, algo) -> None:
    """--select / --select-eps: the best-checkpoint score, fixed before training."""
    if args.select == "natural":
        if args.select_eps is not None:
            raise ValueError("--select-eps belongs to --select robust / robust-pgd")
        return
    if getattr(algo, "selection", None) is None:
        raise ValueError(f"--select {args.select} needs best-checkpoint selection "
                         "(--eval-every N > 0, the fine-tuning default)")
    if args.select == "smoothed":
        _select_smoothed(args, algo)
        return
    eps = args.select_eps if args.select_eps is not None else args.train_eps
    if not eps:
        raise ValueError(f"--select {args.select} needs an eps: --select-eps E or "
                         "--train-eps E")
    algo.selection.set_select(args.select, eps)


def _select_smoothed(args: argparse.Namespace, algo) -> None:
    """--select smoothed: the smoothed agent's mean return at the noise loss's sigma."""
    if args.select_eps is not None:
        raise ValueError("--select-eps belongs to --select robust / robust-pgd")
    rl = algo.robust_loss
    if rl is None or rl.name != "noise":
        raise ValueError("--select smoothed scores the smoothed agent at the training sigma: "
                         "it needs --loss noise --sigma S")
    algo.selection.set_select("smoothed", sigma=float(rl.cfg.sigma))


class _TrainRun:
    """The output folder of one ``certrl train`` run: progress bar, checkpoints, log."""

    def __init__(self, args: argparse.Namespace, out: Path, algo) -> None:
        self.args, self.out, self.algo = args, out, algo
        self.latest = out / "checkpoints" / "latest.pt"
        self.every = args.checkpoint_every or max(1, algo.cfg.total_steps // 10)
        self.start_step, self.t0 = algo.global_step, time.perf_counter()
        self.next_ckpt = (self.start_step // self.every + 1) * self.every
        self.last, self.saves, self.seen = self.start_step, 0, len(algo.episodes)
        self.evals = self.count_evals()
        self.bar = tqdm(total=algo.cfg.total_steps, initial=self.start_step,
                        disable=args.no_progress, unit="step",
                        desc=f"{algo.cfg.env_id} {algo.algo_name}", dynamic_ncols=True,
                        file=sys.stderr)

    def base(self) -> dict:
        """The fields every train.jsonl row carries."""
        cfg = self.algo.cfg
        return {"env_id": cfg.env_id, "env_version": env_version(cfg.env_id),
                "algo": self.algo.algo_name, "loss": self.algo.agent_obj.loss_name,
                "seed": cfg.seed}

    def write_log(self, final: bool) -> None:
        """train.jsonl: one row per episode and a summary."""
        algo, wall = self.algo, time.perf_counter() - self.t0
        steps_done = algo.global_step - self.start_step
        tm = algo.agent_obj.threat_model
        last = [e["return"] for e in algo.episodes[-20:]]
        summary = {"record": "summary", **self.base(), "steps": algo.global_step,
                   "episodes": len(algo.episodes),
                   "last20_return": sum(last) / len(last) if last else None,
                   "wall_s": wall, "steps_per_s": steps_done / wall if wall > 0 else None,
                   "update_share": algo.update_time / wall if wall > 0 else None,
                   "eps": tm.eps, "norm": tm.to_dict()["norm"], "eps_space": tm.space,
                   "attack": None, "finished": final, "config": algo.training_config(),
                   "run_group": algo.run_group, "resume": _resume_info(algo),
                   "init_agent": algo.init_info or None,
                   "selection": None if algo.selection is None else
                   algo.selection.info("best"),
                   "versions": {**library_versions(),
                                "device": device_label(algo.agent_obj.device)}}
        rows = [{"record": "episode", **self.base(), **e} for e in algo.episodes]
        write_jsonl(self.out / "train.jsonl", [*rows, summary])

    def checkpoint(self) -> None:
        """latest.pt (with training state), a step_N.pt snapshot and the log so far."""
        algo = self.algo
        algo.save(self.latest)
        algo.save(self.out / "checkpoints" / f"step_{algo.global_step}.pt",
                  with_train_state=False)
        self.save_best()
        self.write_log(final=False)
        while self.next_ckpt <= algo.global_step:
            self.next_ckpt += self.every
        self.saves += 1
        if self.args.kill_after_checkpoint and self.saves >= self.args.kill_after_checkpoint:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die as a real kill would

    def callback(self, algo) -> bool:
        """After each step / update: progress, and a checkpoint once the interval has
        passed and the algorithm is at a checkpoint-ready point."""
        self.bar.update(algo.global_step - self.last)
        self.last = algo.global_step
        if len(algo.episodes) > self.seen or self.evals != self.count_evals():
            self.seen, self.evals = len(algo.episodes), self.count_evals()
            self.bar.set_postfix(self.postfix(), refresh=False)
        if algo.global_step >= self.next_ckpt and algo.checkpoint_ready:
            self.checkpoint()
        return True

    def count_evals(self) -> int:
        sel = self.algo.selection
        return 0 if sel is None else len(sel.history)

    def postfix(self) -> dict:
        """Progress-bar fields: last training return, last and best evaluation score."""
        algo, out = self.algo, {}
        if algo.episodes:
            out["ret"] = f"{algo.episodes[-1]['return']:.1f}"
        if algo.selection is not None and algo.selection.history:
            out["eval"] = f"{algo.selection.last_score:.1f}"
            out["best"] = f"{algo.selection.best_score:.1f}@{algo.selection.best_step}"
        return out

    def save_best(self) -> None:
        """checkpoints/best.pt: the best evaluated weights so far (with selection on)."""
        if self.algo.selection is not None and self.algo.selection.history:
            self.algo.best_agent.save(self.out / "checkpoints" / "best.pt")

    def finish(self) -> None:
        """Final latest.pt, agent.pt (the best weights with selection on, and then the
        final weights in final.pt), log and the summary lines."""
        algo, out = self.algo, self.out
        algo.save(self.latest)
        if algo.selection is not None:
            self.save_best()
            algo.save(out / "final.pt", with_train_state=False)
            algo.best_agent.save(out / "agent.pt")
        else:
            algo.save(out / "agent.pt", with_train_state=False)
        self.write_log(final=True)
        wall = time.perf_counter() - self.t0
        last = [e["return"] for e in algo.episodes[-20:]]
        avg = f"{sum(last) / len(last):.1f}" if last else "n/a"
        print(f"trained {algo.algo_name} on {algo.cfg.env_id} (seed {algo.cfg.seed}): "
              f"{algo.global_step} steps, {len(algo.episodes)} episodes, "
              f"mean return of last {len(last)} episodes {avg}, "
              f"{(algo.global_step - self.start_step) / max(wall, 1e-9):.0f} steps/s")
        print(f"agent: {out / 'agent.pt'}   log: {out / 'train.jsonl'}")
        sel = algo.selection
        if sel is not None and sel.history:
            print(f"agent.pt holds the best evaluated weights (step {sel.best_step}, "
                  f"{sel.info('best')['metric']} {sel.best_score:.1f} over {sel.episodes} "
                  f"episodes); final weights: {out / 'final.pt'}")
        for c in algo.resume_caveats:
            print(f"note: resume not exact: {c}")


def run(args: argparse.Namespace) -> int:
    """certrl train: build or resume the algorithm, learn with checkpoints, write the run."""
    out = Path(args.out)
    latest = out / "checkpoints" / "latest.pt"
    if args.resume and args.init_from:
        raise ValueError("--init-from starts a new run; --resume continues one (drop one)")
    if args.resume and (args.select != "natural" or args.select_eps is not None):
        raise ValueError("--select is fixed when a run starts; --resume keeps the run's rule")
    device = resolve_device(args.device)  # ValueError (exit 2) before anything is written
    configure_determinism(device)  # bit-identical --resume on a GPU too
    algo = _resume_algo(args, latest) if args.resume else _new_algo(args, out, latest)
    _to_device(algo, device, args.device)
    _record_sigma(algo)
    if args.replay_cap_mb is not None:
        algo.max_replay_bytes = args.replay_cap_mb * 2**20
    if args.replay_every is not None and hasattr(algo, "replay_every"):
        algo.replay_every = args.replay_every
    if args.tensorboard is not None:
        summary_writer_class()  # a missing tensorboard package fails before any write
    _write_command(out, args, algo)
    _warn_no_updates(algo)
    tr = _TrainRun(args, out, algo)
    tel = _telemetry(args, out, algo)
    try:
        algo.learn(algo.cfg.total_steps, callback=tr.callback, telemetry=tel)
        tel.finish(algo)
    finally:
        tel.logger.close()
        tr.bar.close()
    tr.finish()
    return 0


def _to_device(algo, device, asked: str) -> None:
    """Train on ``device``. PPO goes to a GPU only when asked by name (``--device cuda``):
    its small MLPs gain little there and its GPU path is not yet checked on a GPU, so
    ``auto`` keeps it on the CPU."""
    if device.type != "cpu" and algo.algo_name != "dqn" and asked == "auto":
        return
    algo.to(device)


def _resume_info(algo) -> dict:
    """The summary's ``resume`` entry: is this run identical to an uninterrupted one?"""
    caveats = list(algo.resume_caveats)
    cap = algo.max_replay_bytes
    if cap is not None and algo.replay_nbytes() > cap:
        caveats.append(f"the replay buffer ({algo.replay_nbytes() / 2**20:.0f} MB) is over "
                       f"--replay-cap-mb and not in latest.pt: a resume from it is not exact")
    return {"exact": not caveats, "caveats": caveats}


def _write_command(out: Path, args: argparse.Namespace, algo) -> None:
    """command.json (a resume appends itself to ``resumes``); one-line errors, and no
    folder left behind when it cannot be written."""
    entry = {"argv": getattr(args, "argv", None), "config": algo.training_config()}
    if algo.init_info:  # --init-from: name, identity (weights hash), run group, reward scale
        entry["init_agent"] = dict(algo.init_info)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "command.json"
        if args.resume and path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = None
            if isinstance(data, dict):
                resumes = data.setdefault("resumes", [])
                resumes.append({**entry, "from_step": algo.global_step})
                entry = data
        path.write_text(json.dumps(entry, indent=2) + "\n")
    except OSError as e:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise ValueError(f"cannot write the run folder {str(out)!r}: "
                         f"{e.strerror or e}") from None


def _threads(args, env_id: str) -> None:
    if args.threads is not None:
        set_threads(args.threads)
    elif env_family(env_id) != "atari":
        set_threads(1)
