"""certrl evaluate: natural returns of an agent over N seeded episodes."""

from __future__ import annotations

import argparse

from certrl.agent import load
from certrl.commands._common import default_out, fmt, positive_int, set_threads
from certrl.evaluate import evaluate
from certrl.records import agent_fields, write_jsonl


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="natural return over N seeded episodes",
                       description="Evaluate an agent (checkpoint path or shipped name).")
    p.add_argument("checkpoint", help="checkpoint file or shipped agent name")
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="cut episodes after this many steps")
    p.add_argument("--stochastic", action="store_true", help="sample actions")
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    p.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    agent = load(args.checkpoint)
    res = evaluate(agent, args.episodes, args.seed, None, not args.stochastic, args.max_steps)
    common = {**agent_fields(agent, str(args.checkpoint)), "eps": 0.0, "attack": "none",
              "attack_steps": 0, "deterministic": not args.stochastic,
              "eval_seed": args.seed}
    rows = [{"record": "episode", "episode": i, "episode_seed": s, "return": r,
             "length": n, **common}
            for i, (r, n, s) in enumerate(zip(res.returns, res.lengths, res.seeds))]
    rows.append({"record": "summary", "episodes": len(res.returns), "mean": res.mean,
                 "std": res.std, "returns": res.returns, **common})
    path = write_jsonl(args.out or default_out("evaluate", args.checkpoint), rows)
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}: natural return "
          f"{fmt(res.mean)} +- {fmt(res.std)} over {len(res.returns)} episodes")
    print(f"results: {path}")
    return 0
