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
from certrl.envs import make_env


def main(root: str = "runs/robust_dqn") -> None:
    torch.set_num_threads(1)
    for seed in range(5):
        agent = load(f"{root}/CartPole-v1/vanilla/seed{seed}/train")
        env = make_env("CartPole-v1", 0)
        out = []
        for eps in (0.05, 0.1):
            atk = make_attack("pgd", agent.forward, agent.threat_model, eps=eps, steps=10,
                              seed=seed)
            obs, _ = env.reset(seed=1000)
            flips = n = 0
            total, done, gaps = 0.0, False, []
            while not done:
                x = agent.preprocess(obs[None].astype(np.float32))
                q = agent.forward(x)[0].detach()
                gaps.append(float((q[0] - q[1]).abs()))
                a_adv = int(agent.forward(atk(x)).argmax(1))
                flips += int(a_adv != int(q.argmax()))
                n += 1
                obs, r, term, trunc, _ = env.step(a_adv)
                total += r
                done = term or trunc
            out.append(f"eps {eps}: return {total:.0f}, flip rate {flips / n:.2f}, "
                       f"median gap {np.median(gaps):.2f}")
        print("seed", seed, " | ".join(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
