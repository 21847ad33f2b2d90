"""Branch and bound: ``bounds.verify`` (input splits or ReLU splits).

The property is  C f(x) > d  for every x in an l_inf ball (a box, clipped to
its domain), in every row (``mode="all"``) or in at least one row
(``mode="any"``). With ``split="input"`` domains are sub-boxes. Each round takes
the ``batch`` domains with the lowest bound, bounds them all at once with CROWN
(one batched call), drops the verified ones, attacks the others (a few
signed-gradient steps from the domain centre, PGD) and bisects each remaining
box along the input dimension with the largest |d objective / d x_j| * width_j.
With ``split="relu"`` domains are ReLU split decisions on the whole box
(``bounds.verify_relu``): the same rounds with CROWN on the clamped relaxation,
PGD from the box vertex minimizing each domain's linear bound (and from the
ball's centre), a BaBSR-style
branching score, and leaves (few free unstable ReLUs left, or too deep) decided
exactly by an LP / MILP over the domain's polytope. ``split="auto"``: ReLU splits
above AUTO_RELU_DIM input entries (ReLU nets), else input splits. The answer is
"verified" when no domain is left, "falsified" with a counterexample whose
forward pass violates the property (checked before returning), and "unknown"
when the time or domain budget runs out, or when a point of the ball has an
objective in (0, allowance]: no sound bound less the rounding allowance can
ever be > 0 there, and no point below 0 was found (stats["reason"]). Never a
guess.

Soundness: a domain is verified only when CROWN's lower bound (or a leaf
program's optimum), less the rounding allowance of
``bounds.api.rounding_allowance`` (float32: 1e-5 relative to the output scale),
is > 0. Completeness: input splitting shrinks boxes until every ReLU of a
piecewise-linear net is stable on them, where CROWN is exact (fine for RL's
low-dimensional inputs); ReLU splitting ends in exact leaf programs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from bounds.api import bind, rounding_allowance
from bounds.perturbation import LpBall
from bounds.verify_relu import ReluSetup, bound_domains, branch, leaf_minimum, optimize_domains

__all__ = ["AUTO_RELU_DIM", "VerifyResult", "verify"]

AUTO_RELU_DIM = 16  # split="auto": ReLU splits above this many input entries


@dataclass
class VerifyResult:
    """status: "verified", "falsified" or "unknown". counterexample: (*in_shape) point of
    the ball with C f(x) - d violating the property (falsified only); value: the
    objective there (min over rows for "all", max for "any"); lower: a proven lower
    bound of the objective: over the domains still open ("unknown"), or over the whole
    ball once verified (the smallest bound of the domains that closed, > 0)."""

    status: str
    counterexample: torch.Tensor | None = None
    value: float | None = None
    lower: float = float("-inf")
    stats: dict = field(default_factory=dict)


def _objective(out: torch.Tensor, C: torch.Tensor, d: torch.Tensor, mode: str):
    """min_i (or max_i for "any") of (C f(x) - d)_i; out: (N, K)."""
    v = out @ C.T - d
    return v.amin(1) if mode == "all" else v.amax(1)


def _check_args(ball: LpBall, C: torch.Tensor, d, mode: str) -> tuple:
    if not isinstance(ball, LpBall):
        raise TypeError(f"ball must be a bounds.LpBall, got {type(ball).__name__}")
    if ball.norm != float("inf") or ball.batch_size != 1:
        raise ValueError("verify: needs an l_inf ball (input splitting) with batch size 1")
    if mode not in ("all", "any"):
        raise ValueError(f"verify: mode must be 'all' or 'any', got {mode!r}")
    C = torch.as_tensor(C, dtype=ball.center.dtype, device=ball.center.device)
    C = C.reshape(-1, C.shape[-1])
    d = torch.zeros(C.shape[0], dtype=C.dtype, device=C.device) if d is None else \
        torch.as_tensor(d, dtype=C.dtype, device=C.device).reshape(-1)
    if d.shape[0] != C.shape[0]:
        raise ValueError(f"verify: d has {d.shape[0]} entries but C has {C.shape[0]} rows")
    return C, d


def _attack(net, C, d, mode, lo, hi, steps: int = 5, start=None):
    """Signed-gradient descent on the objective from ``start`` (default: the centres of
    the boxes (N, *shape)); returns (points, objective values), points inside the boxes."""
    x = ((lo + hi) / 2 if start is None else start).detach()
    step = (hi - lo) / 4
    for _ in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            g, = torch.autograd.grad(_objective(net(x).flatten(1), C, d, mode).sum(), x)
        x = torch.minimum(torch.maximum(x.detach() - step * g.sign(), lo), hi)
        step = step * 0.6
    with torch.no_grad():
        return x, _objective(net(x).flatten(1), C, d, mode)


def _lower(bound, C, d, mode, lo, hi, allowance):
    """Sound lower bound of the objective on each box (N,), less the rounding slack."""
    ball = LpBall.trusted((lo + hi) / 2, (hi - lo) / 2, float("inf"))
    N = lo.shape[0]
    lb, _ = bound.compute(ball, "crown", C.expand(N, *C.shape), bound_upper=False)
    lb = lb - d
    v = lb.amin(1) if mode == "all" else lb.amax(1)
    return v - allowance


def _split(net, C, d, mode, lo, hi):
    """Bisect each box along argmax_j |grad_j| * width_j (at the centre)."""
    x = ((lo + hi) / 2).detach().requires_grad_(True)
    with torch.enable_grad():
        g, = torch.autograd.grad(_objective(net(x).flatten(1), C, d, mode).sum(), x)
    w = (hi - lo).flatten(1)
    score = (g.abs().flatten(1) + 1e-12) * w
    j = score.argmax(1)
    rows = torch.arange(lo.shape[0], device=lo.device)
    mid = ((lo + hi) / 2).flatten(1)[rows, j]
    hi1, lo2 = hi.flatten(1).clone(), lo.flatten(1).clone()
    hi1[rows, j], lo2[rows, j] = mid, mid
    shape = lo.shape[1:]
    return (torch.cat([lo, lo2.reshape(-1, *shape)]),
            torch.cat([hi1.reshape(-1, *shape), hi]))


def _found(net, C, d, mode, x, v, lo0, hi0, stats):
    """A falsified result if some point violates the property (re-checked)."""
    bad = (v <= 0).nonzero().flatten()
    if bad.numel() == 0:
        return None
    p = torch.minimum(torch.maximum(x[bad[:1]], lo0), hi0)
    with torch.no_grad():
        val = float(_objective(net(p).flatten(1), C, d, mode)[0])
    if val > 0:
        return None
    return VerifyResult("falsified", p[0].detach(), val, stats=stats)


def _resolve_split(split: str, ball: LpBall) -> str:
    if split not in ("input", "relu", "auto"):
        raise ValueError(f"verify: split must be 'input', 'relu' or 'auto', got {split!r}")
    if split == "auto":
        return "relu" if ball.center[0].numel() > AUTO_RELU_DIM else "input"
    return split


def verify(net: nn.Module, ball: LpBall, C, d=None, mode: str = "all",
           timeout_s: float = 30.0, batch: int = 512,
           max_domains: int = 10**7, split: str = "input",
           max_depth: int = 24, leaf_relus: int = 8,
           beta_iterations: int = 10) -> VerifyResult:
    """Decide C f(x) > d on every x of ``ball`` (all rows, or at least one for "any").

    ``C``: (m, K) (or (1, m, K)); ``d``: (m,) or None (zeros). Complete branch and
    bound with batched CROWN bounds and PGD on open domains, over input splits
    (``split="input"``) or ReLU splits (``"relu"``: a domain with at most ``leaf_relus``
    free unstable ReLUs, or ``max_depth`` splits, is decided exactly by an LP / MILP over
    its polytope; open split domains get ``beta_iterations`` steps of alpha / beta
    optimization of their final bound); ``"auto"``: ReLU splits when the
    input has more than AUTO_RELU_DIM entries and every activation is a ReLU. Returns
    "unknown" when ``timeout_s`` or ``max_domains`` runs out. See the module docstring.
    """
    C, d = _check_args(ball, C, d, mode)
    mode_split = _resolve_split(split, ball)
    t0 = time.perf_counter()
    with torch.no_grad():
        allowance = float(rounding_allowance(net(ball.center).flatten(1)))
    if mode_split == "relu":
        try:
            setup = ReluSetup(net, ball)
            setup.iterations = beta_iterations
        except ValueError:
            if split == "relu":
                raise
        else:
            return _verify_relu(net, setup, ball, (C, d, mode), (timeout_s, batch,
                                max_domains, max_depth, leaf_relus), t0, allowance)
    return _verify_input(net, ball, C, d, mode, timeout_s, batch, max_domains, t0,
                         allowance)


def _verify_input(net, ball, C, d, mode, timeout_s, batch, max_domains, t0, allowance):
    """Branch and bound over input splits (see the module docstring)."""
    bound = bind(net, "native")
    lo0, hi0 = ball.box()
    lo, hi = lo0.clone(), hi0.clone()
    stats = {"domains": 0, "rounds": 0}
    lows = torch.full((1,), float("-inf"), dtype=lo.dtype, device=lo.device)
    proven = float("inf")  # min lower bound over the domains verified so far
    while lo.shape[0]:
        stats["time_s"] = time.perf_counter() - t0
        if stats["time_s"] > timeout_s or stats["domains"] > max_domains:
            return VerifyResult("unknown", lower=float(lows.min()), stats=stats)
        order = lows.argsort()
        take, keep = order[:batch], order[batch:]
        blo, bhi = lo[take], hi[take]
        lo, hi, lows = lo[keep], hi[keep], lows[keep]
        with torch.no_grad():
            lb = _lower(bound, C, d, mode, blo, bhi, allowance)
        stats["domains"] += blo.shape[0]
        stats["rounds"] += 1
        open_ = lb <= 0
        if not open_.all():
            proven = min(proven, float(lb[~open_].min()))
        blo, bhi, lb = blo[open_], bhi[open_], lb[open_]
        if blo.shape[0] == 0:
            continue
        x, v = _attack(net, C, d, mode, blo, bhi)
        res = _found(net, C, d, mode, x, v, lo0, hi0, stats)
        if res is not None:
            res.stats["time_s"] = time.perf_counter() - t0
            return res
        if (v <= allowance).any():  # 0 < f(x) <= allowance: no bound can ever close it
            stats.update(time_s=time.perf_counter() - t0, reason="within rounding allowance")
            return VerifyResult("unknown", lower=float(torch.cat([lows, lb]).min()),
                                stats=stats)
        nlo, nhi = _split(net, C, d, mode, blo, bhi)
        lo, hi = torch.cat([lo, nlo]), torch.cat([hi, nhi])
        lows = torch.cat([lows, lb.repeat(2)])
    stats["time_s"] = time.perf_counter() - t0
    return VerifyResult("verified", lower=proven, stats=stats)


# --------------------------------------------------------------------------- ReLU splitting
def _take(q: dict, sel: torch.Tensor) -> dict:
    """The domains ``sel`` of the queue q (splits, bounds, depth, lows)."""
    return {"splits": {k: s[sel] for k, s in q["splits"].items()},
            "bounds": {k: (b[0][sel], b[1][sel]) for k, b in q["bounds"].items()},
            "depth": q["depth"][sel], "lows": q["lows"][sel]}


def _cat(a: dict, b: dict) -> dict:
    return {"splits": {k: torch.cat([s, b["splits"][k]]) for k, s in a["splits"].items()},
            "bounds": {k: (torch.cat([v[0], b["bounds"][k][0]]),
                           torch.cat([v[1], b["bounds"][k][1]]))
                       for k, v in a["bounds"].items()},
            "depth": torch.cat([a["depth"], b["depth"]]),
            "lows": torch.cat([a["lows"], b["lows"]])}


def _children(setup, q: dict, layer, idx) -> dict:
    """Two children per domain of q: neuron (layer, idx) active (first) / inactive."""
    n = q["lows"].shape[0]
    rows = torch.arange(n, device=idx.device)
    splits = {}
    for j, k in enumerate(setup.relus):
        s = q["splits"][k].flatten(1)
        s2 = torch.cat([s, s]).clone()
        r = rows[layer == j]
        s2[r, idx[r]] = 1
        s2[r + n, idx[r]] = -1
        splits[k] = s2.reshape(2 * n, *q["splits"][k].shape[1:])
    return {"splits": splits,
            "bounds": {k: (torch.cat([b[0], b[0]]), torch.cat([b[1], b[1]]))
                       for k, b in q["bounds"].items()},
            "depth": q["depth"].repeat(2) + 1, "lows": q["lows"].repeat(2)}


def _leaves(net, setup, q, spec, lo0, hi0, allowance, deadline, stats):
    """Decide the domains of q exactly (``leaf_minimum``). Returns (a VerifyResult that
    ends the search or None, the smallest proven bound of the closed leaves)."""
    C, d, mode = spec
    proven = float("inf")
    for i in range(q["lows"].shape[0]):
        if time.perf_counter() > deadline:
            stats["reason"] = "time limit"
            return VerifyResult("unknown", lower=-float("inf"), stats=stats), proven
        act = {k: (b[0][i], b[1][i]) for k, b in q["bounds"].items()}
        sp = {k: s[i] for k, s in q["splits"].items()}
        st, val, x = leaf_minimum(setup, lo0, hi0, act, sp, C, d, mode,
                                  deadline - time.perf_counter())
        stats["leaves"] += 1
        if st == "unknown":
            stats["reason"] = "leaf program not solved (time limit)"
            return VerifyResult("unknown", lower=-float("inf"), stats=stats), proven
        if val - allowance > 0:
            proven = min(proven, val - allowance)
            continue
        p = torch.as_tensor(x, dtype=lo0.dtype, device=lo0.device).reshape(lo0.shape)
        with torch.no_grad():
            res = _found(net, C, d, mode, p, _objective(net(p).flatten(1), C, d, mode),
                         lo0, hi0, stats)
        if res is not None:
            return res, proven
        stats["reason"] = "within rounding allowance"
        return VerifyResult("unknown", lower=val - allowance, stats=stats), proven
    return None, proven


def _bound_round(net, setup, q, spec, lo0, hi0, allowance, stats):
    """Bound the domains of q; returns (open domains with their bounds, rows, start
    points for the attack, proven bound of the closed ones)."""
    C, d, mode = spec
    with torch.no_grad():
        lb, act, lam, A = bound_domains(setup, C, q["splits"], q["bounds"])
    v = ((lb - d).amin(1) if mode == "all" else (lb - d).amax(1)) - allowance
    tune = ((v <= 0) & (q["depth"] > 0)).nonzero().flatten()
    if tune.numel() and setup.iterations > 0:  # beta-CROWN-style, on split open domains
        sub = {k: (b[0][tune], b[1][tune]) for k, b in act.items()}
        lb = lb.index_copy(0, tune, optimize_domains(
            setup, C, sub, {k: s[tune] for k, s in q["splits"].items()}, lb[tune],
            setup.iterations))
    lb = lb - d
    v = (lb.amin(1) if mode == "all" else lb.amax(1)) - allowance
    stats["domains"] += v.shape[0]
    stats["rounds"] += 1
    closed = v > 0
    proven = float(v[closed].min()) if closed.any() else float("inf")
    q = dict(q, bounds=act, lows=v)
    row = lb.argmin(1) if mode == "all" else lb.argmax(1)
    rows = torch.arange(v.shape[0], device=v.device)
    grad = A[rows, row].reshape(v.shape[0], *lo0.shape[1:])
    start = torch.where(grad > 0, lo0, hi0)  # the box vertex minimizing the linear bound
    keep = (~closed).nonzero().flatten()
    lam = {k: t if t.shape[0] == 1 else t[keep] for k, t in lam.items()}
    return _take(q, keep), lam, row[keep], start[keep], proven


def _verify_relu(net, setup, ball, spec, budget, t0, allowance) -> VerifyResult:
    """Best-first branch and bound over ReLU splits (see bounds.verify_relu)."""
    C, d, mode = spec
    timeout_s, batch, max_domains, max_depth, leaf_relus = budget
    lo0, hi0 = ball.box()
    dev = lo0.device
    q = {"splits": {k: torch.zeros(1, *b[0].shape[1:], dtype=torch.int8, device=dev)
                    for k, b in setup.root.items()},
         "bounds": dict(setup.root), "depth": torch.zeros(1, dtype=torch.long, device=dev),
         "lows": torch.full((1,), -float("inf"), dtype=lo0.dtype, device=dev)}
    stats = {"domains": 0, "rounds": 0, "leaves": 0, "split": "relu"}
    proven = float("inf")
    while q["lows"].shape[0]:
        stats["time_s"] = time.perf_counter() - t0
        if stats["time_s"] > timeout_s or stats["domains"] > max_domains:
            return VerifyResult("unknown", lower=float(q["lows"].min()), stats=stats)
        order = q["lows"].argsort()
        cur, q = _take(q, order[:batch]), _take(q, order[batch:])
        cur, lam, row, start, p = _bound_round(net, setup, cur, spec, lo0, hi0,
                                               allowance, stats)
        proven = min(proven, p)
        if cur["lows"].shape[0] == 0:
            continue
        start = torch.cat([start, (lo0 + hi0) / 2])  # + the centre of the ball
        x, v = _attack(net, C, d, mode, lo0.expand_as(start), hi0.expand_as(start),
                       start=start)
        res = _found(net, C, d, mode, x, v, lo0, hi0, stats)
        if res is None and (v <= allowance).any():
            stats["reason"] = "within rounding allowance"
            res = VerifyResult("unknown", lower=float(cur["lows"].min()), stats=stats)
        if res is not None:
            res.stats["time_s"] = time.perf_counter() - t0
            return res
        layer, idx, n_free = branch(setup, cur["bounds"], lam, cur["splits"], row)
        leaf = (n_free <= leaf_relus) | (cur["depth"] >= max_depth)
        res, p = _leaves(net, setup, _take(cur, leaf.nonzero().flatten()), spec, lo0, hi0,
                         allowance, t0 + timeout_s, stats)
        proven = min(proven, p)
        if res is not None:
            res.stats["time_s"] = time.perf_counter() - t0
            return res
        inner = (~leaf).nonzero().flatten()
        q = _cat(q, _children(setup, _take(cur, inner), layer[inner], idx[inner]))
    stats["time_s"] = time.perf_counter() - t0
    return VerifyResult("verified", lower=proven, stats=stats)
