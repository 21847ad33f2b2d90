"""Native bound engine vs auto_LiRPA on the same networks and inputs, one run.

Prints, per (network, batch, method): best-of-N wall time of each backend
(calls interleaved, so both see the same machine load), the
speed-up native/lirpa, the cost relative to a plain forward pass, and the
largest disagreement between the two backends' bounds (must be ~1e-6).

    .venv/bin/python benchmarks/bounds_speed.py [--repeats 5] [--threads 2]
        [--only mlp|cnn|cnn-crown|alpha-cnn|verify] [--cpu-time]

``--only verify`` prints ``bounds.verify`` throughput (domains/s, input splitting, the
default) on the shipped CartPole agent and a random 4-64-64-2 MLP: 8 seeded states per
net, eps = 1.1x and 1.3x the state's CROWN radius (so branching is needed), 10 s timeout.

``--only alpha-cnn`` prints the alpha-CROWN tightness table of issue 16 instead:
native alpha-CROWN (every layer) vs auto_LiRPA's CROWN-Optimized, same iterations and
learning rate, on random CNNs of the shape of auto_LiRPA's mnist_a_adv model.

Targets (issue 2): native CROWN >= 10x faster than lirpa CROWN on the MLP;
native CROWN-IBP >= 3x faster than lirpa on the CNN; native IBP <= 3x forward.
Full CROWN on the CNN is timed once after a warm-up (about 10 s a call for
either backend).
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

import bounds

warnings.filterwarnings("ignore")


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)
    )


def nature_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, 6),
    )


def mnist_a(seed: int) -> nn.Module:
    """The shape of auto_LiRPA's mnist_a_adv example model (random weights)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10),
    ).eval()


# Deliberate parallel (duplicates lists it): each benchmark model is its own architecture.
def small_cnn(seed: int) -> nn.Module:
    """2 conv + 2 linear on 1x8x8 (auto_LiRPA-test size)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4),
    ).eval()


def alpha_cnn_table(seeds: int, iterations: int) -> None:
    """Mean bound width (ub - lb over all outputs) of CROWN, native alpha-CROWN and
    auto_LiRPA alpha-CROWN, and output 7's (or the last output's) upper bound."""
    print(f"alpha-CROWN on random CNNs, {iterations} iterations, lr 0.25, one input in "
          f"[0, 1] per net, l_inf ball clipped to [0, 1]")
    print("| net | seed | eps | CROWN width | native alpha width | lirpa alpha width | "
          "native/lirpa | ub[7] native | ub[7] lirpa | native s | lirpa s |")
    print("|" + "---|" * 11)
    cases = [("1x8x8 2conv+2fc", small_cnn, (1, 8, 8), 0.1),
             ("mnist_a shape 1x28x28", mnist_a, (1, 28, 28), 0.02),
             ("mnist_a shape 1x28x28", mnist_a, (1, 28, 28), 0.05)]
    for name, make, shape, eps in cases:
        for seed in range(seeds):
            net = make(seed)
            x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(seed))
            ball = bounds.LpBall(x, eps, lower=0.0, upper=1.0)
            with torch.no_grad():
                cr = bounds.compute(net, ball, "crown")
                t0 = time.perf_counter()
                nat = bounds.compute(net, ball, "alpha-crown", alpha_iterations=iterations)
                t1 = time.perf_counter()
                lir = bounds.compute(net, ball, "alpha-crown", alpha_iterations=iterations,
                                     backend="lirpa")
                t2 = time.perf_counter()
            w = [float((b[1] - b[0]).mean()) for b in (cr, nat, lir)]
            j = min(7, nat[1].shape[1] - 1)
            print(f"| {name} | {seed} | {eps:g} | {w[0]:.5f} | {w[1]:.5f} | {w[2]:.5f} | "
                  f"{w[1] / w[2]:.4f} | {float(nat[1][0, j]):.5f} | "
                  f"{float(lir[1][0, j]):.5f} | {t1 - t0:.1f} | {t2 - t1:.1f} |", flush=True)


def crown_radius(net: nn.Module, x: torch.Tensor, label: int, hi: float = 2.0) -> float:
    """Largest eps (bisection, 14 steps) at which CROWN certifies ``label`` at ``x``."""
    lo = 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        ok = bool(bounds.certified(bounds.margin_lower(net, bounds.LpBall(x, mid), [label])))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def verify_table(states: int = 8, factors=(1.1, 1.3), timeout: float = 10.0) -> None:
    """Domains per second of ``bounds.verify`` (all calls of a net together)."""
    import certrl  # the shipped agent only

    torch.manual_seed(0)
    rand = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 2)).eval()
    nets = [("CartPole DQN (shipped vanilla)",
             certrl.load("cartpole-dqn-vanilla").bounded_form().eval()),
            ("random MLP 4-64-64-2", rand)]
    scale = torch.tensor([[0.5, 0.5, 0.08, 0.5]])
    xs = torch.randn(states, 4, generator=torch.Generator().manual_seed(0)) * scale
    print(f"bounds.verify (split=input), {states} states, eps = factor x CROWN radius, "
          f"timeout {timeout:g} s")
    print("| net | factor | verified | falsified | unknown | domains | seconds | domains/s |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, net), factor in ((n, f) for n in nets for f in factors):
        count = {"verified": 0, "falsified": 0, "unknown": 0}
        doms, secs = 0, 0.0
        for b in range(states):
            x = xs[b:b + 1]
            with torch.no_grad():
                label = int(net(x).argmax(1))
            C = bounds.margin_spec(torch.tensor([label]), 2)[0][torch.arange(2) != label]
            eps = max(factor * crown_radius(net, x, label), 1e-4)
            t0 = time.perf_counter()
            r = bounds.verify(net, bounds.LpBall(x, eps), C, timeout_s=timeout)
            secs += time.perf_counter() - t0
            doms += r.stats["domains"]
            count[r.status] += 1
        print(f"| {name} | {factor:g} | {count['verified']} | {count['falsified']} | "
              f"{count['unknown']} | {doms} | {secs:.2f} | {doms / max(secs, 1e-9):.0f} |",
              flush=True)


def timeit(fns, repeats: int, warmup: bool = True,
           clock=time.perf_counter) -> tuple[list[float], list[object]]:
    """Best-of-``repeats`` wall time of each function, calls interleaved.

    Interleaving gives every contender the same machine conditions, and the
    minimum is the estimate least affected by other load on a shared machine.
    """
    outs = [fn() if warmup else None for fn in fns]  # warm-up (auto_LiRPA traces)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = clock()
            outs[i] = fn()
            best[i] = min(best[i], clock() - t0)
    return best, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None,
                    choices=("mlp", "cnn", "cnn-crown", "alpha-cnn", "verify"),
                    help="one section only (alpha-cnn: the alpha-CROWN tightness table)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by process CPU time (steadier on a loaded machine; use with "
                         "--threads 1) instead of wall time")
    ap.add_argument("--device", default="cpu",
                    help="cpu | cuda[:N] | auto: where the MLP / CNN rows run (both backends; "
                         "CUDA timings synchronize the device); alpha-cnn / verify stay on CPU")
    ap.add_argument("--alpha-seeds", type=int, default=2)
    ap.add_argument("--alpha-iterations", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from certrl.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"bounds_speed: {e}") from None
    if args.only == "verify":
        verify_table()
        return
    if args.only == "alpha-cnn":
        alpha_cnn_table(args.alpha_seeds, args.alpha_iterations)
        return
    torch.manual_seed(args.seed)
    cases = [
        ("MLP 8-256-256-4", mlp(), (8,), 1024, ["ibp", "crown-ibp", "crown"], 0.05, None,
         "crown"),
        ("Nature-CNN 4x84x84->6", nature_cnn(), (4, 84, 84), 32, ["ibp", "crown-ibp"],
         1 / 255, (0.0, 1.0), "crown-ibp"),
        ("Nature-CNN 4x84x84->6", nature_cnn(), (4, 84, 84), 4, ["crown"], 1 / 255, (0.0, 1.0),
         None),
    ]
    keep = {"mlp": [0], "cnn": [1, 2], "cnn-crown": [2]}.get(args.only, [0, 1, 2])
    cases = [c for i, c in enumerate(cases) if i in keep]
    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, repeats "
          f"{args.repeats} (best of, interleaved), seed {args.seed}"
          f"{', CPU time' if args.cpu_time else ''}")
    header = ("| network | batch | method | forward ms | native ms | lirpa ms | "
              "lirpa/native | native/forward | max abs diff |")
    print(header)
    print("|" + "---|" * 9)
    def synced(fn):  # CUDA runs asynchronously: time until the device is done
        if device.type != "cuda":
            return fn
        return lambda: (fn(), torch.cuda.synchronize(device))[0]

    for name, net, shape, batch, methods, eps, clip, margins in cases:
        net = net.to(device)
        x = torch.rand((batch, *shape)).to(device)
        kw = {} if clip is None else {"lower": clip[0], "upper": clip[1]}
        ball = bounds.LpBall(x, eps, **kw)
        with torch.no_grad():
            for m in methods:
                slow = m == "crown" and len(shape) > 1  # full CROWN on the CNN: ~10 s a call
                reps = 1 if slow else args.repeats
                (t_fwd, t_nat, t_lir), (_, (ln, un), (ll, ul)) = timeit(
                    [synced(f) for f in (
                        lambda: net(x),
                        lambda: bounds.compute(net, ball, m),
                        lambda: bounds.compute(net, ball, m, backend="lirpa"),
                    )],
                    reps,
                    warmup=True,
                    clock=time.process_time if args.cpu_time else time.perf_counter,
                )
                diff = max((ln - ll).abs().max().item(), (un - ul).abs().max().item())
                print(f"| {name} | {batch} | {m} | {t_fwd * 1e3:.1f} | {t_nat * 1e3:.1f} | "
                      f"{t_lir * 1e3:.1f} | {t_lir / t_nat:.1f}x | {t_nat / t_fwd:.1f}x | "
                      f"{diff:.1e} |", flush=True)
            if margins:
                # what certification calls: lower bounds of the K-1 margins only
                labels = net(x).argmax(1)
                m = margins
                (t_fwd, t_nat, t_lir), (_, ln, ll) = timeit(
                    [synced(f) for f in (
                        lambda: net(x),
                        lambda: bounds.margin_lower(net, ball, labels, m),
                        lambda: bounds.margin_lower(net, ball, labels, m, backend="lirpa"),
                    )],
                    args.repeats,
                )
                fin = torch.isfinite(ln)
                diff = (ln[fin] - ll[fin]).abs().max().item()
                print(f"| {name} | {batch} | {m} margin_lower | {t_fwd * 1e3:.1f} | "
                      f"{t_nat * 1e3:.1f} | {t_lir * 1e3:.1f} | {t_lir / t_nat:.1f}x | "
                      f"{t_nat / t_fwd:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
