"""Training speed: env steps/s of DQN and PPO, and the share of time in network updates.

    .venv/bin/python benchmarks/train_speed.py            # full (about 2 minutes)
    .venv/bin/python benchmarks/train_speed.py --quick    # smoke run

For each (algorithm, env) it trains for a fixed number of env steps (DQN after
its replay warm-up, so every step carries one update) and reports steps/s,
the share of wall time in gradient updates, and the ratio to a random-action
rollout of the same env (the env's own cost). DQN needs discrete actions, so
Hopper is PPO-only; DQN's second env is Atari Pong (Nature CNN).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from certrl.algos import DQN, PPO, DQNConfig, PPOConfig
from certrl.envs import make_env


def random_rollout_speed(env_id: str, steps: int) -> float:
    env = make_env(env_id, 0)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def bench_dqn(env_id: str, steps: int, **over) -> dict:
    warm = over.pop("learning_starts", 500)
    cfg = DQNConfig.for_env(env_id, total_steps=warm + steps, learning_starts=warm, **over)
    algo = DQN(cfg)
    algo.learn(warm)  # fill the replay buffer (no updates yet)
    algo.update_time = 0.0
    t0 = time.perf_counter()
    algo.learn(warm + steps)
    wall = time.perf_counter() - t0
    return {"steps_per_s": steps / wall, "update_share": algo.update_time / wall}


def bench_ppo(env_id: str, steps: int, **over) -> dict:
    cfg = PPOConfig.for_env(env_id, total_steps=steps, **over)
    algo = PPO(cfg)
    t0 = time.perf_counter()
    algo.learn()
    wall = time.perf_counter() - t0
    return {"steps_per_s": algo.global_step / wall, "update_share": algo.update_time / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k = 0.1 if args.quick else 1.0
    n = lambda s: max(64, int(s * k))  # noqa: E731
    cases = [
        ("dqn", "CartPole-v1", lambda: bench_dqn("CartPole-v1", n(5000))),
        ("dqn", "ALE/Pong-v5", lambda: bench_dqn("ALE/Pong-v5", n(500), buffer_size=2000,
                                                 learning_starts=200)),
        ("ppo", "CartPole-v1", lambda: bench_ppo("CartPole-v1", n(16384))),
        ("ppo", "Hopper-v5", lambda: bench_ppo("Hopper-v5", n(16384))),
    ]
    print(f"# train_speed: torch {torch.__version__}, {args.threads} torch thread(s), "
          f"python {platform.python_version()}, {'quick' if args.quick else 'full'} run")
    print("| algo | env | env steps/s | update share | random-policy env steps/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for algo, env_id, fn in cases:
        res = fn()
        rnd = random_rollout_speed(env_id, n(5000))
        print(f"| {algo} | {env_id} | {res['steps_per_s']:.0f} | "
              f"{100 * res['update_share']:.0f}% | {rnd:.0f} | "
              f"{res['steps_per_s'] / rnd:.3f} |", flush=True)
    print("DQN: batch 64 (Atari 32), one update per env step (Atari: every 4 steps); "
          "PPO: CleanRL defaults (CartPole 4x128, 4 epochs; Hopper 4x512, 10 epochs, 32 "
          "minibatches). DQN on Hopper: n/a (continuous actions).")


if __name__ == "__main__":
    main()
