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
from certrl.envs import make_env


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="METHOD:SEED")
    p.add_argument("--root", default="runs/robust_dqn")
    args = p.parse_args()
    torch.set_num_threads(1)
    for spec in args.runs:
        method, seed = spec.split(":")
        agent = load(f"{args.root}/Acrobot-v1/{method}/seed{seed}/train")
        env = make_env("Acrobot-v1", 0)
        returns, freqs, at_rest = [], [], 0
        for ep in range(10):
            obs, _ = env.reset(seed=1000 + ep)
            done, total, acts, states = False, 0.0, [], []
            while not done:
                a = int(agent.predict(obs))
                acts.append(a)
                states.append(obs)
                obs, r, term, trunc, _ = env.step(a)
                total += r
                done = term or trunc
            returns.append(total)
            if total <= -500:
                last = np.array(acts[-200:])
                freqs.append(np.bincount(last, minlength=3) / len(last))
                at_rest += int(np.abs(np.array(states[-200:])[:, 4:]).max() < 1.0)
        freq = np.round(np.mean(freqs, 0), 2) if freqs else None
        print(method, seed, "returns", returns, "| -500 episodes: last-200 action freq", freq,
              "| of them at rest:", at_rest, flush=True)


if __name__ == "__main__":
    main()
