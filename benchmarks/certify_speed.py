"""States certified per second per method, and the tightness ladder vs exact MILP.

Usage: .venv/bin/python benchmarks/certify_speed.py [--quick] [--threads 1]

1. Speed on the shipped CartPole MLP (4-64-64-2, one episode of states) and on a
   Nature-DQN CNN (4x84x84 -> 6, random weights, a handful of states for the
   slow methods): `certify_states` at one eps without the radius search, and
   with it (bracketing + bisection) for the cheap methods. Only the action
   certificate (margins) is timed (``q_values=False``).
2. Tightness ladder on small random ReLU MLPs: mean min-margin lower bound and
   mean certified radius per method (IBP, CROWN-IBP, CROWN, alpha-CROWN, exact
   MILP). Sound methods can only be below the MILP.
Speeds are noisy on shared machines: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Deliberate parallel (duplicates lists it): this benchmark and tests/test_certify_state.py
# import the same certify API.
import bounds  # noqa: E402
from certrl.certify import (  # noqa: E402
    CertifyOptions,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    certify_states,
    rollout,
)
from certrl.nets import build_network  # noqa: E402


def timed(fn, warm) -> float:
    warm()  # warm-up on one state
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed_rows(name, net, x_all, eps, plan, kind="discrete"):
    rows = []
    for method, n_states, radius, extra in plan:
        x = x_all[:n_states]
        opts = CertifyOptions(radius=RadiusConfig(rtol=0.01) if radius else False,
                              q_values=False, **extra)
        kw = dict(options=opts)
        try:
            dt = timed(lambda: certify_states(net, x, eps, method, kind=kind, **kw),
                       lambda: certify_states(net, x[:1], eps, method, kind=kind, **kw))
            rows.append((name, method + (" + radius" if radius else ""), n_states,
                         f"{dt:.3f}", f"{n_states / dt:,.1f}"))
        except ValueError as e:
            rows.append((name, method, n_states, "refused", str(e).split(";")[0][:70]))
        print(" | ".join(map(str, rows[-1])), file=sys.stderr)
    return rows


def ladder(seed: int, din: int, width: int, dout: int, n: int, eps: float):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(din, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, dout)).eval()
    x = torch.randn(n, din, generator=torch.Generator().manual_seed(seed))
    rc = RadiusConfig(init=eps, rtol=0.02, max_iter=8)
    out = []
    for m in ("ibp", "crown-ibp", "crown", "alpha-crown", "exact"):
        t0 = time.perf_counter()
        opts = CertifyOptions(radius=rc, q_values=False, exact=ExactConfig(max_relus=4 * width))
        c = certify_states(net, x, eps, m, options=opts)[0]
        dt = time.perf_counter() - t0
        out.append((f"{din}-{width}-{width}-{dout}", m, f"{np.mean(c.min_margin_lower):.4f}",
                    f"{c.certified.mean():.2f}", f"{np.mean(c.radius):.4f}", f"{dt:.2f}"))
        print(" | ".join(out[-1]), file=sys.stderr)
    return out


def md(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def bind_vs_per_call(net, xs, methods=("ibp", "crown"), per_state=40,
                     rounds=5) -> list[tuple]:
    """Radius search as certify runs it now (network bound once with ``bounds.bind``,
    per-step balls derived from one validated ball) vs the former per-call path
    (``ThreatModel.ball`` + one-shot ``bounds.margin_lower``, re-parsing the network
    on every bisection step), same run, same states; the radii must be identical.
    Batched (one episode) and state by state; ``rounds`` alternating timings of each
    (after one warm-up round), the fastest of each reported, in process CPU time (one
    torch thread: other jobs on a shared machine do not inflate it as they do wall time)."""
    from certrl.certify import methods as cert_methods
    from certrl.certify.state import RadiusVerifier, certified_radius

    prop, bound_prepare = cert_methods.BoundPropagation, cert_methods.BoundPropagation.prepare
    new_ball = RadiusVerifier.ball

    def old_ball(self, idx, eps):  # the former path: a fully validated ball per step
        return self.threat.ball(self.x[idx], torch.as_tensor(eps, dtype=self.x.dtype,
                                                             device=self.x.device))
    with torch.no_grad():
        lab = net(xs).argmax(dim=1)
    opts = CertifyOptions(radius=RadiusConfig(rtol=0.01), q_values=False)

    def search(method, one_by_one):
        t0 = time.process_time()
        if one_by_one:
            r = np.concatenate([certified_radius(net, xs[i:i + 1], lab[i:i + 1], method,
                                                 options=opts)[0] for i in range(per_state)])
        else:
            r = certified_radius(net, xs, lab, method, options=opts)[0]
        return time.process_time() - t0, r

    def per_call():
        prop.prepare = lambda self, n, o: n  # per-call: margins binds on every call
        RadiusVerifier.ball = old_ball

    def bound_once():
        prop.prepare, RadiusVerifier.ball = bound_prepare, new_ball

    rows = []
    for method in methods:
        for one_by_one in (False, True):
            t_old, t_new = [], []
            for i in range(rounds + 1):  # alternating; round 0 warms up; min resists load
                per_call()
                t, r_old = search(method, one_by_one)
                t_old += [t] if i else []
                bound_once()
                t, r_new = search(method, one_by_one)
                t_new += [t] if i else []
                if not np.array_equal(r_old, r_new):
                    raise AssertionError(f"{method}: bind changed the radii")
            rows.append((method, f"{per_state} states one by one" if one_by_one
                         else f"{len(xs)} states batched", f"{min(t_old):.3f}",
                         f"{min(t_new):.3f}", f"{min(t_old) / min(t_new):.2f}x"))
    bound_once()
    return rows


def bind_table(mlp, xs, quick: bool) -> str:
    """The radius-search section: bind once vs parse per call, as markdown."""
    rows = bind_vs_per_call(mlp, xs, per_state=20 if quick else 40)
    head = ("method", "states", "per-call s", "bind s", "speed-up")
    return ("\n## Radius search: bind once vs parse per call (shipped CartPole agent; "
            "fastest of 5 alternating rounds, process CPU time)\n\n" + md(head, rows))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu",
                    help="cpu | cuda[:N] | auto: the device of the networks and states (the "
                         "exact MILP rows solve on the CPU whatever this says)")
    ap.add_argument("--only", choices=("bind",), default=None,
                    help="run one section: bind = the radius search, bind vs per-call parse")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import certrl
    from certrl.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise SystemExit(f"certify_speed: {e}") from None
    print(f"device {device}")
    agent = certrl.load("cartpole-dqn-vanilla")
    ep = rollout(agent, 1, seed=0, max_steps=100 if args.quick else None)[0]
    mlp, xs = agent.bounded_form().to(device), ep.x.to(device)
    if args.only == "bind":
        print(bind_table(mlp, xs, args.quick))
        return 0
    B = xs.shape[0]
    sm = {"smoothing": SmoothingConfig(sigma=0.1, n0=100, n=1000)}
    plan = [("ibp", B, False, {}), ("crown-ibp", B, False, {}), ("crown", B, False, {}),
            ("alpha-crown", min(B, 100), False, {}), ("smoothing", B, False, sm),
            ("exact", 5, False, {}), ("ibp", B, True, {}), ("crown", B, True, {}),
            ("exact", 2, True, {})]
    rows = speed_rows("CartPole MLP 4-64-64-2", mlp, xs, 0.01, plan)
    lip = bounds.LipschitzMLP(4, 2, hidden=64, depth=3).eval().to(device)
    rows += speed_rows("SortNet 4-64-64-2 (random)", lip, xs, 0.01,
                       [("lipschitz", B, False, {}), ("lipschitz", B, True, {})])
    torch.manual_seed(0)
    cnn = build_network({"type": "q", "body": {"kind": "cnn", "in_shape": [4, 84, 84]},
                         "n_out": 6, "dueling": False}).bounded_form().eval().to(device)
    xc = torch.rand(32, 4, 84, 84, generator=torch.Generator().manual_seed(0)).to(device)
    smc = {"smoothing": SmoothingConfig(sigma=0.1, n0=20, n=100, batch_size=500)}
    cplan = [("ibp", 32, False, {}), ("crown-ibp", 32 if not args.quick else 8, False, {}),
             ("crown", 1, False, {}), ("smoothing", 4, False, smc), ("exact", 1, False, {})]
    if not args.quick:
        cplan.insert(3, ("alpha-crown", 1, False, {"alpha_iterations": 5}))
    rows += speed_rows("Nature CNN 4x84x84-6 (random)", cnn, xc, 1 / 255, cplan)
    print("## Speed (certify_states at one eps; states per second)\n")
    print(md(("network", "method", "states", "seconds", "states/s or note"), rows))
    print(bind_table(mlp, xs, args.quick))
    lad = ladder(0, 4, 16, 3, 8 if args.quick else 16, 0.05)
    if not args.quick:
        lad += ladder(1, 8, 24, 4, 12, 0.02)
    print("\n## Tightness ladder (mean min-margin LB, certified fraction, mean radius)\n")
    print(md(("MLP", "method", "mean margin LB", "certified", "mean radius", "seconds"), lad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
