"""Exact certified radii (``bab``) vs CROWN radii along whole trajectories of the shipped
CartPole DQN agents, through ``certrl.certify.certify_states`` as ``certrl certify`` runs it.

Per agent: one greedy episode (env seed 0, up to 500 states), the CROWN radius and the
``bab`` radius of every state (bracketing + bisection to 1 %, each step a complete
``bounds.verify`` query with its timeout), and the smallest radius at which ``bab``
found a counterexample (``radius_upper``: the exact radius lies in
[bab radius, radius_upper], up to the bisection tolerance). Also the throughput of
``bounds.verify`` (domains/s) on the queries at 1.5 x each state's CROWN radius.

    .venv/bin/python benchmarks/exact_radius.py [--agents a,b] [--max-steps 500]
        [--timeout 10] [--threads 1] [--out benchmarks/results/exact_radius.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bounds  # noqa: E402
import certrl  # noqa: E402
from certrl.certify import BabConfig, CertifyOptions, certify_states, rollout  # noqa: E402
from certrl.identity import agent_identity  # noqa: E402

AGENTS = ("cartpole-dqn-vanilla", "cartpole-dqn-sa", "cartpole-dqn-radial",
          "cartpole-dqn-wocar", "cartpole-dqn-car")


def throughput(net, x, labels, radius, threat, timeout) -> tuple[int, float, dict]:
    """Domains and seconds of verify on each state's ball at 1.5 x its CROWN radius."""
    doms, secs, answers = 0, 0.0, {"verified": 0, "falsified": 0, "unknown": 0}
    K = int(net(x[:1]).shape[1])
    for b in range(x.shape[0]):
        if radius[b] <= 0:
            continue
        lab = int(labels[b])
        C = (torch.eye(K)[lab] - torch.eye(K))[torch.arange(K) != lab]
        ball = threat.ball(x[b:b + 1], float(1.5 * radius[b]))
        res = bounds.verify(net, ball, C, timeout_s=timeout)
        doms += res.stats["domains"]
        secs += res.stats["time_s"]
        answers[res.status] += 1
    return doms, secs, answers


def one_agent(name: str, max_steps: int, timeout: float) -> dict:
    agent = certrl.load(name)
    ep = rollout(agent, 1, seed=0, max_steps=max_steps)[0]
    net, x = agent.bounded_form(), ep.x
    opts = CertifyOptions(q_values=False, bab=BabConfig(timeout_s=timeout))
    t0 = time.perf_counter()
    crown = certify_states(net, x, 0.001, "crown", threat=agent.threat_model, options=opts)[0]
    t_crown, t0 = time.perf_counter() - t0, time.perf_counter()
    bab = certify_states(net, x, 0.001, "bab", threat=agent.threat_model, options=opts)[0]
    t_bab = time.perf_counter() - t0
    rc, rb, up = crown.radius, bab.radius, bab.extra["radius_upper"]
    if (rb < rc).any():
        raise AssertionError(f"{name}: a bab radius below CROWN's")
    pos = rb > 0
    closed = np.isfinite(up) & (up <= rb * 1.02 + 1e-9)
    doms, secs, answers = throughput(net, x, crown.action, rc, agent.threat_model, timeout)
    return {"agent": name, "agent_id": agent_identity(agent)[:12], "states": int(len(x)),
            "threat_model": agent.threat_model.describe(),
            "crown_mean": float(rc.mean()), "exact_mean": float(rb.mean()),
            "refuted": float(np.isfinite(up).mean()),
            "upper_over_exact": float(np.median((up / np.maximum(rb, 1e-12))[np.isfinite(up)
                                                                             & pos]))
            if (np.isfinite(up) & pos).any() else float("nan"),
            "ratio_median": float(np.median(rc[pos] / rb[pos])),
            "ratio_min": float((rc[pos] / rb[pos]).min()),
            "closed": float(closed.mean()), "crown_s": t_crown, "bab_s": t_bab,
            "domains": doms, "verify_s": secs, "answers": answers}


def table(rows: list[dict]) -> str:
    head = ("| agent (id) | states | mean CROWN radius | mean exact radius (verified) | "
            "refuted (share, median refuted / exact) | CROWN / exact (median, min) | "
            "bracket within 2 % | "
            "CROWN s | bab s | verify domains/s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['agent']} ({r['agent_id']}) | {r['states']} | {r['crown_mean']:.4f} | "
            f"{r['exact_mean']:.4f} | {r['refuted']:.2f}, {r['upper_over_exact']:.3f} | "
            f"{r['ratio_median']:.2f}, "
            f"{r['ratio_min']:.2f} | {r['closed']:.2f} | {r['crown_s']:.1f} | "
            f"{r['bab_s']:.1f} | {r['domains'] / max(r['verify_s'], 1e-9):,.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", default=",".join(AGENTS))
    ap.add_argument("--max-steps", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.agents.split(","):
        rows.append(one_agent(name, args.max_steps, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(
            f"Command: `.venv/bin/python benchmarks/exact_radius.py {' '.join(sys.argv[1:])}` "
            f"(torch {torch.__version__}, {args.threads} thread(s), CPU)\n\n{text}\n"
            f"\nJSON rows:\n\n```\n" + "\n".join(json.dumps(r) for r in rows) + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
