"""How often PGD flips the greedy action of the table's vanilla CartPole agents, and the return.

    .venv/bin/python benchmarks/diagnostics/cartpole_pgd_flips.py [runs/robust_dqn]

One episode (env seed 1000) per agent and eps; prints the return under PGD (10 steps), the
fraction of steps whose action PGD changed and the median |Q0 - Q1| on the visited states.
"""

import sys

import numpy as np
import torch

from certrl.agent import load
from certrl.attacks import make_attack
from certrl.rollout import acting, play


def main(root: str = "runs/robust_dqn") -> None:
    torch.set_num_threads(1)
    for seed in range(5):
        agent = load(f"{root}/CartPole-v1/vanilla/seed{seed}/train")
        out = []
        for eps in (0.05, 0.1):
            atk = make_attack("pgd", agent.forward, agent.threat_model, eps=eps, steps=10,
                              seed=seed)
            flips, gaps = [], []

            def look(i, s, gaps=gaps, flips=flips):
                q = agent.forward(s.x)[0].detach()
                gaps.append(float((q[0] - q[1]).abs()))
                flips.append(int(s.action[0]) != int(q.argmax()))

            end = play(agent, [0], 1000, lambda i, atk=atk: acting(agent, atk), None, look)[0]
            out.append(f"eps {eps}: return {end.ret:.0f}, flip rate {np.mean(flips):.2f}, "
                       f"median gap {np.median(gaps):.2f}")
        print("seed", seed, " | ".join(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
