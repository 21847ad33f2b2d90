"""Training speed: env steps/s of DQN and PPO, and the share of time in network updates.

    .venv/bin/python benchmarks/train_speed.py            # full (about 2 minutes)
    .venv/bin/python benchmarks/train_speed.py --quick    # smoke run
    .venv/bin/python benchmarks/train_speed.py --only-pong --num-envs 1 4 --device cpu

For each (algorithm, env) it trains for a fixed number of env steps (DQN after
its replay warm-up, so every step carries one update) and reports steps/s,
the share of wall time in gradient updates, and the ratio to a random-action
rollout of the same env (the env's own cost). DQN needs discrete actions, so
Hopper is PPO-only; DQN's second env is Atari Pong (Nature CNN).

Pong row against a minimal loop (``--pong-steps``, default 3000, ~5 minutes here; 0 or
--quick skips it; ``--only-pong`` runs only this row): ``certrl train`` (the CLI path
with --no-progress: metrics.csv, checkpoints every steps/10 at episode ends with the default
replay-buffer policy, the final save) against ``minimal_pong_dqn`` below, a plain loop with the same
network (Nature CNN), preprocessing (``make_env``: 84x84 grey, frame skip 4, 4-frame
stack, /255), replay (stacked uint8 arrays), and update schedule (Adam 1e-4, batch 32,
an update every 4 steps after the same warm-up, double-DQN Huber targets, gradient
clipping 10, target copy every 1000 steps), timed in the same run, construction included.

``--num-envs 1 4``: the DQN rows (table and Pong row) once per number of envs (``certrl
train --num-envs N``, ``DQNConfig.num_envs``: N envs stepped together, one batched forward
pass per N env steps, the same updates per env step); the minimal loop acts in one env.
``--device auto|cpu|cuda[:N]`` (default cpu): where the networks train, for certrl
(``certrl train --device``, ``Algorithm.to``) and the minimal loop alike; CUDA timings
include synchronizing the device at the end of each run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_dqn(env_id: str, steps: int, device: torch.device, **over) -> dict:
    warm = over.pop("learning_starts", 500)
    cfg = DQNConfig.for_env(env_id, total_steps=warm + steps, learning_starts=warm, **over)
    algo = DQN(cfg).to(device)
    algo.learn(warm)  # fill the replay buffer (no updates yet)
    algo.update_time, start = 0.0, algo.global_step
    t0 = time.perf_counter()
    algo.learn(warm + steps)
    sync(device)
    wall = time.perf_counter() - t0
    return {"steps_per_s": (algo.global_step - start) / wall,
            "update_share": algo.update_time / wall}


def bench_ppo(env_id: str, steps: int, device: torch.device, **over) -> dict:
    cfg = PPOConfig.for_env(env_id, total_steps=steps, **over)
    algo = PPO(cfg).to(device)
    t0 = time.perf_counter()
    algo.learn()
    sync(device)
    wall = time.perf_counter() - t0
    return {"steps_per_s": algo.global_step / wall, "update_share": algo.update_time / wall}


PONG = dict(warm=1000, batch=32, train_freq=4, lr=1e-4, gamma=0.99, target_every=1000,
            buffer=100_000)


def minimal_pong_dqn(steps: int, device: torch.device, seed: int = 0) -> tuple[float, float]:
    """(env steps per wall second, per CPU second) of a bare DQN loop on Pong (the
    schedule of the module docstring), the networks on ``device``."""
    t0, c0 = time.perf_counter(), time.process_time()
    env = make_env("ALE/Pong-v5", seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(4, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2),
                             nn.ReLU(), nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 6))
    q, target = net().to(device), net().to(device)
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=PONG["lr"])
    n = min(PONG["buffer"], steps)
    obs_b, nxt_b = np.zeros((n, 4, 84, 84), np.uint8), np.zeros((n, 4, 84, 84), np.uint8)
    act_b, rew_b, done_b = np.zeros(n, np.int64), np.zeros(n, np.float32), np.zeros(n, np.float32)
    obs, _ = env.reset(seed=seed)
    for t in range(steps):
        eps = max(0.01, 1.0 - t / (0.1 * steps))
        if rng.random() < eps:
            a = int(rng.integers(6))
        else:
            with torch.no_grad():
                x = torch.as_tensor(obs[None], dtype=torch.float32, device=device) / 255.0
                a = int(q(x).argmax(1))
        nxt, r, term, trunc, _ = env.step(a)
        i = t % n
        obs_b[i], nxt_b[i], act_b[i], rew_b[i], done_b[i] = obs, nxt, a, r, float(term)
        obs = env.reset()[0] if term or trunc else nxt
        if t + 1 > PONG["warm"] and (t + 1) % PONG["train_freq"] == 0:
            idx = rng.integers(0, min(t + 1, n), PONG["batch"])
            x = torch.as_tensor(obs_b[idx], dtype=torch.float32, device=device) / 255.0
            x2 = torch.as_tensor(nxt_b[idx], dtype=torch.float32, device=device) / 255.0
            with torch.no_grad():
                a2 = q(x2).argmax(1, keepdim=True)
                y = torch.as_tensor(rew_b[idx], device=device) + PONG["gamma"] * (
                    1 - torch.as_tensor(done_b[idx], device=device)) * target(x2).gather(
                        1, a2).squeeze(1)
            qa = q(x).gather(1, torch.as_tensor(act_b[idx], device=device)[:, None]).squeeze(1)
            loss = F.huber_loss(qa, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(q.parameters(), 10.0)
            opt.step()
        if (t + 1) % PONG["target_every"] == 0:
            target.load_state_dict(q.state_dict())
    sync(device)
    return steps / (time.perf_counter() - t0), steps / (time.process_time() - c0)


def certrl_pong_dqn(steps: int, threads: int, num_envs: int = 1, device: str = "cpu",
                    checkpoint_every: int | None = None) -> tuple[float, float, int, int, int]:
    """(env steps per wall second, per CPU second, bytes of latest.pt, bytes of the
    end-of-run replay.pt, number of periodic checkpoints) of ``certrl train --num-envs N
    --device D`` on Pong with the minimal loop's schedule, default checkpointing (or
    ``--checkpoint-every``)."""
    from certrl.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["train", "--env", "ALE/Pong-v5", "--algo", "dqn", "--steps", str(steps),
                "--out", str(out), "--no-progress", "--threads", str(threads),
                "--set", f"learning_starts={PONG['warm']}", "--num-envs", str(num_envs),
                "--device", device]
        if checkpoint_every:
            argv += ["--checkpoint-every", str(checkpoint_every)]
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli_main(argv)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if rc not in (0, None):
            raise RuntimeError(f"certrl {' '.join(argv)} exited {rc}")
        ck = out / "checkpoints"
        latest = (ck / "latest.pt").stat().st_size
        replay = (ck / "replay.pt").stat().st_size if (ck / "replay.pt").exists() else 0
        saves = len(list(ck.glob("step_*.pt")))
    return steps / wall, steps / cpu, latest, replay, saves


def pong_row(steps: int, threads: int, num_envs: list[int], device: torch.device,
             checkpoint_every: int | None = None) -> None:
    """certrl (once per number of envs) vs the minimal loop on Pong, same run; prints the
    ratios per wall second and per CPU second of this process (the latter less sensitive
    to other jobs' load), and each N's speed relative to the first N."""
    mine = {n: certrl_pong_dqn(steps, threads, n, str(device), checkpoint_every)
            for n in num_envs}
    torch.set_num_threads(threads)
    ref = minimal_pong_dqn(steps, device)
    print(f"\nPong DQN on {device}, {steps} env steps (warm-up {PONG['warm']}, an update "
          f"every {PONG['train_freq']} env steps): minimal loop {ref[0]:.1f} steps/s wall, "
          f"{ref[1]:.1f} per CPU-s", flush=True)
    first = mine[num_envs[0]]
    for n, m in mine.items():
        print(f"  certrl train --num-envs {n}: {m[0]:.1f} steps/s wall, {m[1]:.1f} per CPU-s "
              f"({m[4]} checkpoints, latest.pt {m[2] / 2**20:.1f} MB, replay.pt "
              f"{m[3] / 2**20:.1f} MB); ratio to "
              f"the minimal loop {m[0] / ref[0]:.2f}x wall, {m[1] / ref[1]:.2f}x CPU; to "
              f"--num-envs {num_envs[0]}: {m[0] / first[0]:.2f}x wall, "
              f"{m[1] / first[1]:.2f}x CPU", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--pong-steps", type=int, default=None,
                    help="env steps of the Pong certrl-vs-minimal-loop row (default 3000, "
                         "skipped with --quick; 0: skip)")
    ap.add_argument("--only-pong", action="store_true", help="only the Pong row")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1], metavar="N",
                    help="DQN rows once per number of envs N (e.g. 1 4; default 1)")
    ap.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                    help="Pong row: certrl train --checkpoint-every K (default: certrl's, "
                         "steps/10; one-env DQN checkpoints at the next episode end)")
    ap.add_argument("--device", default="cpu",
                    help="auto, cpu, cuda or cuda:N: where the networks train (default cpu)")
    args = ap.parse_args()
    if any(n < 1 for n in args.num_envs):
        ap.error(f"--num-envs values must be positive integers; got {args.num_envs}")
    from certrl.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    k = 0.1 if args.quick else 1.0
    if args.pong_steps is None:
        args.pong_steps = 0 if args.quick else 3000
    n = lambda s: max(64, int(s * k))  # noqa: E731
    cases = []
    for ne in args.num_envs:
        tag = "" if ne == 1 else f" ({ne} envs)"
        cases += [
            ("dqn", "CartPole-v1", tag, lambda ne=ne: bench_dqn(
                "CartPole-v1", n(5000), device, num_envs=ne)),
            ("dqn", "ALE/Pong-v5", tag, lambda ne=ne: bench_dqn(
                "ALE/Pong-v5", n(500), device, buffer_size=2000, learning_starts=200,
                num_envs=ne))]
    cases += [("ppo", "CartPole-v1", "", lambda: bench_ppo("CartPole-v1", n(16384), device)),
              ("ppo", "Hopper-v5", "", lambda: bench_ppo("Hopper-v5", n(16384), device))]
    if args.only_pong:
        pong_row(args.pong_steps, args.threads, args.num_envs, device, args.checkpoint_every)
        return
    print(f"# train_speed: torch {torch.__version__}, device {device}, {args.threads} torch "
          f"thread(s), python {platform.python_version()}, "
          f"{'quick' if args.quick else 'full'} run")
    print("| algo | env | env steps/s | update share | random-policy env steps/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for algo, env_id, tag, fn in cases:
        res = fn()
        rnd = random_rollout_speed(env_id, n(5000))
        print(f"| {algo} | {env_id}{tag} | {res['steps_per_s']:.0f} | "
              f"{100 * res['update_share']:.0f}% | {rnd:.0f} | "
              f"{res['steps_per_s'] / rnd:.3f} |", flush=True)
    print("DQN: certrl's per-env defaults (DQNConfig.for_env; CartPole: batch 64, 128 "
          "updates every 256 env steps; Atari: batch 32, an update every 4 env steps); "
          "PPO: CleanRL defaults (CartPole 4x128, 4 epochs; Hopper 4x512, 10 epochs, 32 "
          "minibatches). DQN on Hopper: n/a (continuous actions).")
    if args.pong_steps > 0:
        pong_row(args.pong_steps, args.threads, args.num_envs, device, args.checkpoint_every)


if __name__ == "__main__":
    main()
