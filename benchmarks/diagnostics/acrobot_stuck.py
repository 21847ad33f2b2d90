"""Why greedy Acrobot agents return -500: the action and velocities of the last 200 steps.

    .venv/bin/python benchmarks/diagnostics/acrobot_stuck.py radial:1 sa:0 [--root runs/robust_dqn]

For each METHOD:SEED of the table: the 10 natural returns (env seeds 1000..1009), the action
frequencies over the last 200 steps of the -500 episodes, and how many of those end at rest
(every |angular velocity| < 1 over the last 200 steps).
"""

import argparse

import numpy as np
import torch

from certrl.agent import load
from certrl.rollout import acting, play


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="METHOD:SEED")
    p.add_argument("--root", default="runs/robust_dqn")
    args = p.parse_args()
    torch.set_num_threads(1)
    for spec in args.runs:
        method, seed = spec.split(":")
        agent = load(f"{args.root}/Acrobot-v1/{method}/seed{seed}/train")
        steps = {ep: [] for ep in range(10)}
        ends = play(agent, list(steps), 1000, lambda ep: acting(agent), None,
                    lambda ep, s: steps[ep].append(s))
        returns, freqs, at_rest = [e.ret for e in ends], [], 0
        for e in ends:
            if e.ret <= -500:
                last = np.array([int(s.action[0]) for s in steps[e.index][-200:]])
                freqs.append(np.bincount(last, minlength=3) / len(last))
                states = np.array([s.obs for s in steps[e.index][-200:]])
                at_rest += int(np.abs(states[:, 4:]).max() < 1.0)
        freq = np.round(np.mean(freqs, 0), 2) if freqs else None
        print(method, seed, "returns", returns, "| -500 episodes: last-200 action freq", freq,
              "| of them at rest:", at_rest, flush=True)


if __name__ == "__main__":
    main()
