"""certrl attack: returns under an observation attack at one or several eps."""

from __future__ import annotations

import argparse

from certrl.agent import load
from certrl.attacks import ATTACKS, make_attack
from certrl.commands._common import default_out, eps_arg, fmt, positive_int, set_threads
from certrl.evaluate import evaluate
from certrl.records import agent_fields, write_jsonl
from certrl.threat import parse_norm


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="attacked return (pgd, fgsm, mad, random)",
                       description="Attack an agent's observations at each step and report "
                                   "returns. eps is measured in the agent's threat-model space "
                                   "(network input: [0,1] pixels for Atari, normalized obs "
                                   "for MuJoCo).")
    p.add_argument("checkpoint", help="checkpoint file or shipped agent name")
    p.add_argument("--attack", choices=ATTACKS, default="pgd")
    p.add_argument("--eps", type=eps_arg, nargs="+", required=True,
                   help="one or more radii, e.g. --eps 0.01 0.05 or 3/255")
    p.add_argument("--steps", type=positive_int, default=10, help="attack iterations")
    p.add_argument("--step-size", type=float, default=None, help="default 2.5 eps / steps")
    p.add_argument("--norm", default=None, help="inf or 2 (default: the agent's threat model)")
    p.add_argument("--objective", choices=("ce", "margin"), default="ce",
                   help="discrete agents: cross-entropy or Q-margin of the clean action")
    p.add_argument("--episodes", type=positive_int, default=10)
    p.add_argument("--seed", type=int, default=0, help="episode i uses env seed SEED + i")
    p.add_argument("--max-steps", type=positive_int, default=None)
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    p.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.step_size is not None and not args.step_size > 0:
        raise ValueError(f"--step-size must be > 0; got {args.step_size}")
    agent = load(args.checkpoint)
    tm = agent.threat_model
    if args.norm is not None:
        d = tm.to_dict()
        d["norm"] = parse_norm(args.norm)
        tm = type(tm).from_dict(d)
    rows, lines = [], []
    for eps in args.eps:
        threat = tm.with_eps(eps)
        atk = make_attack(args.attack, agent.forward, threat, eps, args.steps, args.step_size,
                          args.seed, agent.action_space_kind, args.objective)
        res = evaluate(agent, args.episodes, args.seed, atk, True, args.max_steps)
        common = {**agent_fields(agent, str(args.checkpoint)), "eps": eps,
                  "norm": threat.to_dict()["norm"], "attack": args.attack,
                  "attack_steps": 1 if args.attack in ("fgsm", "random") else args.steps,
                  "step_size": args.step_size,
                  "objective": "mad" if agent.action_space_kind == "continuous"
                  else args.objective,
                  "eval_seed": args.seed, "threat_model": threat.to_dict()}
        rows += [{"record": "episode", "episode": i, "episode_seed": s, "return": r,
                  "length": n, **common}
                 for i, (r, n, s) in enumerate(zip(res.returns, res.lengths, res.seeds))]
        rows.append({"record": "summary", "episodes": len(res.returns), "mean": res.mean,
                     "std": res.std, "returns": res.returns, **res.extra, **common})
        extra = (f", actions changed {100 * res.extra['action_change_rate']:.1f}%"
                 if "action_change_rate" in res.extra else "")
        lines.append(f"  eps {eps:.4g}: return {fmt(res.mean)} +- {fmt(res.std)}{extra}")
    path = write_jsonl(args.out or default_out("attack", args.checkpoint, args.attack), rows)
    how = " (MAD objective)" if agent.action_space_kind == "continuous" else ""
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}: {args.attack}{how} "
          f"(l_{tm.to_dict()['norm'] if args.norm is None else args.norm}, {args.steps} steps, "
          f"eps in {tm.space}), {args.episodes} episodes")
    print("\n".join(lines))
    print(f"results: {path}")
    return 0
