"""bounds.verify (input-splitting branch and bound) vs the MILP on a shipped CartPole agent.

For N states (seeded, CartPole-like scales) with the agent's greedy action as
the label, per state:
  * the CROWN radius (bisection on bounds.margin_lower) and the exact radius
    (bisection with bounds.verify: the verified lower end and the falsified
    upper end, which carries a checked counterexample);
  * at eps = 1.5 x the CROWN radius (a ball CROWN cannot certify), the time and
    answer of bounds.verify and of bounds.milp_margin, which must agree.
Prints the table and the totals, incl. verify throughput (domains/s).

With ``--relu N``: instead, N random 40-input MLPs (40-W-W-3, W = --width) with a
margin spec at --eps-factor (1.25) x the CROWN radius; per instance the MILP (preact="crown")
and verify with ReLU splitting (default; without the beta optimization; with MILP
leaves at <= 16 free unstable ReLUs) and with input splitting, each with --timeout;
solved counts, agreement with the MILP,
times and domains/s.

    .venv/bin/python benchmarks/verify_speed.py [--agent cartpole-dqn-vanilla] [--states 10]
    .venv/bin/python benchmarks/verify_speed.py --relu 20 [--width 16] [--timeout 30]
        [--eps-factor 1.25]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import bounds

warnings.filterwarnings("ignore")
SCALE = torch.tensor([[0.5, 0.5, 0.08, 0.5]])  # cart pos, cart vel, pole angle, pole vel


def crown_radius(net, x, label, hi=2.0, iters=14):
    lo = 0.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = bounds.certified(bounds.margin_lower(net, bounds.LpBall(x, mid), [label]))
        lo, hi = (mid, hi) if bool(ok) else (lo, mid)
    return lo


def exact_radius(net, x, C, lo, hi=2.0, iters=10, timeout=20.0):
    """(verified lower end, falsified upper end, domains, seconds) by bisection."""
    doms, t = 0, time.perf_counter()
    for _ in range(iters):
        mid = (lo + hi) / 2
        r = bounds.verify(net, bounds.LpBall(x, mid), C, timeout_s=timeout)
        doms += r.stats["domains"]
        if r.status == "verified":
            lo = mid
        elif r.status == "falsified":
            hi = mid
        else:
            break
    return lo, hi, doms, time.perf_counter() - t


def random_mlp(seed: int, din: int, width: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Linear(din, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).eval()


RELU_RUNS = {"relu": dict(split="relu"),
             "relu(no beta)": dict(split="relu", beta_iterations=0),
             "relu(leaf<=16)": dict(split="relu", leaf_relus=16),
             "input": dict(split="input")}


def relu_section(n: int, width: int, timeout: float, factor: float = 1.25) -> None:
    """verify with ReLU / input splitting vs the MILP on random 40-input MLPs."""
    tot = {k: {"solved": 0, "agree": 0, "t": 0.0, "d": 0} for k in (*RELU_RUNS, "milp")}
    print("inst  eps    milp(s) min      | " + " | ".join(f"{k}: status s domains"
                                                   for k in RELU_RUNS))
    for i in range(n):
        net = random_mlp(i, 40, width)
        x = torch.randn(1, 40, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            label = int(net(x).argmax(1))
        eps = factor * crown_radius(net, x, label, hi=1.0)  # a ball CROWN cannot certify
        C = bounds.margin_spec(torch.tensor([label]), 3)[0][torch.arange(3) != label]
        t = time.perf_counter()
        m = bounds.milp_margin(net, x, eps, [label], preact="crown", time_limit=timeout)
        tm = time.perf_counter() - t
        mv = float(m.values[0][torch.arange(3) != label].min())
        ok = all(s in ("optimal", "label") for s in m.status[0])
        want = ("verified" if mv > 0 else "falsified") if ok else "unknown"
        tot["milp"]["solved"] += ok
        tot["milp"]["t"] += tm
        cells = []
        for k, kw in RELU_RUNS.items():
            t = time.perf_counter()
            r = bounds.verify(net, bounds.LpBall(x, eps), C, timeout_s=timeout, **kw)
            tv = time.perf_counter() - t
            tot[k]["solved"] += r.status != "unknown"
            tot[k]["agree"] += r.status == want
            tot[k]["t"] += tv
            tot[k]["d"] += r.stats["domains"]
            cells.append(f"{r.status:9s} {tv:6.2f} {r.stats['domains']:6d}")
        print(f"{i:4d}  {eps:.3f} {tm:7.2f} {mv:+.4f} | " + " | ".join(cells))
    for k, v in tot.items():
        extra = "" if k == "milp" else \
            f", agree with MILP {v['agree']}, {v['d'] / max(v['t'], 1e-9):.0f} domains/s"
        print(f"{k}: solved {v['solved']}/{n} in {v['t']:.1f} s{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="cartpole-dqn-vanilla")
    ap.add_argument("--states", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--relu", type=int, default=0, help="random 40-input MLP instances")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--eps-factor", type=float, default=1.25, help="eps / CROWN radius")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.relu:
        relu_section(args.relu, args.width, args.timeout, args.eps_factor)
        return
    import certrl  # the agent only

    net = certrl.load(args.agent).bounded_form().eval()
    xs = torch.randn(args.states, 4, generator=torch.Generator().manual_seed(0)) * SCALE
    print("state  crown_r  exact_lo  exact_hi | eps  verify(s) status  domains  milp(s) milp")
    tot = {"v": 0.0, "m": 0.0, "d": 0, "agree": 0}
    for b in range(args.states):
        x = xs[b:b + 1]
        with torch.no_grad():
            out = net(x)
        label = int(out.argmax(1))
        K = out.shape[1]
        C = bounds.margin_spec(torch.tensor([label]), K)[0][torch.arange(K) != label]
        rc = crown_radius(net, x, label)
        elo, ehi, _, _ = exact_radius(net, x, C, rc)
        eps = max(1.5 * rc, 1e-3)
        t = time.perf_counter()
        r = bounds.verify(net, bounds.LpBall(x, eps), C, timeout_s=60)
        tv = time.perf_counter() - t
        t = time.perf_counter()
        m = bounds.milp_margin(net, x, eps, [label], time_limit=60)
        tm = time.perf_counter() - t
        mv = float(m.values[0][torch.arange(K) != label].min())
        milp = "verified" if mv > 0 else "falsified"
        tot["v"] += tv
        tot["m"] += tm
        tot["d"] += r.stats["domains"]
        tot["agree"] += r.status == milp
        print(f"{b:5d}  {rc:.4f}   {elo:.4f}    {ehi:.4f}   | {eps:.4f} {tv:8.3f}  "
              f"{r.status:9s} {r.stats['domains']:6d}  {tm:7.3f}  {milp} ({mv:+.4f})")
    print(f"total: verify {tot['v']:.2f} s ({tot['d'] / max(tot['v'], 1e-9):.0f} domains/s), "
          f"MILP {tot['m']:.2f} s, agreement {tot['agree']}/{args.states}")


if __name__ == "__main__":
    main()
