"""Exact worst-case margins of small ReLU networks by mixed-integer programming.

For a ReLU MLP f, a state x, a label a and the set
X = {x' : ||x' - x||_inf <= eps} intersected with the box [lower, upper],
``milp_margin`` computes, for every other output j,

    m_j = min_{x' in X} f_a(x') - f_j(x')

exactly (one MILP per j, solved by HiGHS through cvxpy). Every unstable ReLU
(pre-activation bounds l < 0 < u) gets a binary variable d and the big-M
encoding  h >= 0, h >= z, h <= u d, h <= z - l (1 - d);  stable ReLUs are
linear (h = z when l >= 0, h = 0 when u <= 0). The pre-activation bounds come
from interval arithmetic (IBP) computed here, optionally intersected with the
native CROWN bounds of ``bounds.api``. ``lp_margin`` solves the LP (triangle)
relaxation h <= u (z - l) / (u - l) instead: a sound lower bound <= the MILP.

When a MILP hits its time limit the value reported is the solver's *dual*
bound (a lower bound of the true minimum), never the incumbent, so the answer
stays sound.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bounds.flatten import affine_chain

__all__ = ["ExactResult", "milp_margin", "lp_margin", "relu_chain", "relu_program"]

INF = float("inf")


@dataclass
class ExactResult:
    """Worst-case margins over the l_inf ball, per state and output.

    values[b, j]: a lower bound of min_{x' in ball} f_{label_b}(x') - f_j(x'),
    equal to the minimum (up to the solver tolerance ~1e-6) when
    status[b][j] == "optimal" and method == "milp"; +inf at j = label_b
    (``bounds.margin_lower`` convention). upper[b, j]: f_label - f_j evaluated
    (float64 forward pass) at the best input found, ``witness[b, j]``; so the
    true minimum lies in [values, upper]. status: "optimal", "time_limit",
    "error" (values fall back to the interval bound) or "label".
    """

    values: torch.Tensor  # (B, K) float64
    upper: torch.Tensor  # (B, K) float64 (nan when no feasible point was returned)
    status: list[list[str]]
    solve_time: torch.Tensor  # (B, K) float64 seconds
    num_unstable: torch.Tensor  # (B,) long
    witness: torch.Tensor  # (B, K, *in_shape) float64 (nan when none)
    method: str
    eps: torch.Tensor
    kind: str = "sound"

    @property
    def certified(self) -> torch.Tensor:
        """(B,) bool: every margin lower bound is > 0."""
        return (self.values > 0).all(dim=1)


def relu_chain(net: nn.Module, in_shape) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Write ``net`` as A_L o ReLU o ... o ReLU o A_0 with dense float64 affine maps.

    Supported: Linear, ReLU, Flatten, Identity, Dropout (eval), bounds.Normalize
    (and Conv1d/Conv2d, unrolled). Returns (Ws, bs), lists of numpy arrays.
    """
    try:
        Ws, bs, _ = affine_chain(net, tuple(in_shape), (nn.ReLU,), "exact")
    except ValueError as e:
        raise ValueError(f"{e} (exact handles ReLU networks only)") from None
    return [W.numpy() for W in Ws], [b.numpy() for b in bs]


def _ibp(Ws, bs, lo: np.ndarray, hi: np.ndarray):
    """Pre-activation intervals [l_k, u_k] of every ReLU layer, and of the output."""
    pre = []
    for k, (W, b) in enumerate(zip(Ws, bs)):
        c, r = (hi + lo) / 2, (hi - lo) / 2
        zc = W @ c + b
        zr = np.abs(W) @ r
        # widen by a few ulps: float64 rounding of the interval arithmetic itself
        slack = 1e-12 * (np.abs(W) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(b) + 1.0)
        l, u = zc - zr - slack, zc + zr + slack
        pre.append((l, u))
        if k < len(Ws) - 1:
            lo, hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return pre


def _prepare(net, x, eps, label, lower, upper):
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, *in_shape); got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64).cpu()
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf values")
    B = x.shape[0]
    eps_t = torch.as_tensor(eps, dtype=torch.float64).cpu()
    if not torch.isfinite(eps_t).all() or (eps_t < 0).any():
        raise ValueError(f"eps must be finite and >= 0; got {eps}")
    try:
        eps_full = eps_t.expand_as(x) if eps_t.dim() <= x.dim() else None
    except RuntimeError:
        eps_full = None
    if eps_full is None:
        raise ValueError(f"eps of shape {tuple(eps_t.shape)} does not broadcast to x")
    lo, hi = x - eps_full, x + eps_full
    if lower is not None:
        lo = torch.maximum(lo, torch.as_tensor(lower, dtype=torch.float64).cpu().expand_as(x))
    if upper is not None:
        hi = torch.minimum(hi, torch.as_tensor(upper, dtype=torch.float64).cpu().expand_as(x))
    if (lo > hi).any():
        raise ValueError("the ball does not meet the [lower, upper] box (is x inside it?)")
    labels = torch.as_tensor(label).long().reshape(-1).cpu()
    if labels.numel() == 1 and B > 1:
        labels = labels.expand(B)
    if labels.shape[0] != B:
        raise ValueError(f"label has {labels.shape[0]} entries but x has batch {B}")
    return x, eps_t, lo.reshape(B, -1).numpy(), hi.reshape(B, -1).numpy(), labels


def _crown_preact(net, x, eps_t, lower, upper):
    """Pre-activation bounds from the native CROWN engine (flattened per layer)."""
    from bounds.api import preactivation_bounds
    from bounds.perturbation import LpBall

    dev = next((p.device for p in net.parameters()), torch.device("cpu"))
    dt = next((p.dtype for p in net.parameters()), torch.get_default_dtype())
    ball = LpBall(x.to(dev, dt), eps_t.to(dev, dt), norm=INF,
                  lower=None if lower is None else torch.as_tensor(lower).to(dev, dt),
                  upper=None if upper is None else torch.as_tensor(upper).to(dev, dt))
    with torch.no_grad():
        pb = preactivation_bounds(net, ball, method="crown")
    B = x.shape[0]
    out = []
    for lb, ub in pb:
        lb = lb.detach().reshape(B, -1).double().cpu().numpy()
        ub = ub.detach().reshape(B, -1).double().cpu().numpy()
        # those bounds were computed in float32: widen by its rounding error
        out.append((lb - 1e-5 * (1 + np.abs(lb)), ub + 1e-5 * (1 + np.abs(ub))))
    return out


def _forward64(net: nn.Module):
    net64 = copy.deepcopy(net).cpu().double().eval()

    def fwd(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net64(z).reshape(z.shape[0], -1)

    return fwd


@dataclass
class SolveOptions:
    """How ``milp_margin`` / ``lp_margin`` solve: per-problem time limit (seconds), the
    largest number of unstable ReLUs accepted, pre-activation bounds ("ibp" or "crown"),
    LP relaxation instead of the MILP, the MILP's relative gap, solver output."""

    time_limit: float
    max_relus: int
    preact: str
    relax: bool
    mip_rel_gap: float
    verbose: bool

    def solver_args(self) -> dict:
        """Keyword arguments of HiGHS through cvxpy."""
        opts = {"time_limit": float(self.time_limit)}
        if not self.relax:
            opts["mip_rel_gap"] = float(self.mip_rel_gap)
            opts["mip_abs_gap"] = 1e-9
        return opts


@dataclass
class MarginProblem:
    """The checked query: inputs, boxes [lo, hi] (B, n), labels, the network as affine
    maps Ws, bs around its ReLUs, pre-activation bounds per state and unstable counts."""

    x: torch.Tensor
    eps: torch.Tensor
    lo: np.ndarray
    hi: np.ndarray
    labels: torch.Tensor
    Ws: list[np.ndarray]
    bs: list[np.ndarray]
    pres: list[list[tuple[np.ndarray, np.ndarray]]]
    num_unstable: list[int]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _preactivations(net, x, eps_t, lower, upper, Ws, bs, LO, HI, preact):
    """Per state, interval pre-activation bounds, intersected with CROWN's if asked."""
    nL = len(Ws) - 1
    pres = [_ibp(Ws, bs, LO[b], HI[b]) for b in range(x.shape[0])]
    if preact == "crown" and nL > 0:
        cr = _crown_preact(net, x, eps_t, lower, upper)
        if len(cr) != nL:
            raise RuntimeError("exact: CROWN pre-activation bounds do not match the ReLU layers")
        for b in range(x.shape[0]):
            for k in range(nL):
                l, u = pres[b][k]
                pres[b][k] = (np.maximum(l, cr[k][0][b]), np.minimum(u, cr[k][1][b]))
    elif preact not in ("ibp", "crown"):
        raise ValueError(f"preact must be 'ibp' or 'crown'; got {preact!r}")
    return pres


def _count_unstable(pres, nL: int, max_relus: int) -> list[int]:
    """Unstable ReLUs (l < 0 < u) per state; ValueError above ``max_relus``."""
    n_unst = []
    for b, pre in enumerate(pres):
        n = int(sum(((l < 0) & (u > 0)).sum() for l, u in pre[:nL]))
        n_unst.append(n)
        if n > max_relus:
            raise ValueError(
                f"exact: network too large for an exact answer: state {b} has {n} unstable "
                f"ReLUs > max_relus={max_relus} (use a smaller eps or net, raise max_relus, "
                "or use a bound method such as crown)"
            )
    return n_unst


def _build(net, x, eps, label, lower, upper, opts: SolveOptions) -> MarginProblem:
    """Check the arguments and prepare the query (no solver call yet)."""
    x, eps_t, LO, HI, labels = _prepare(net, x, eps, label, lower, upper)
    Ws, bs = relu_chain(net, tuple(x.shape[1:]))
    K = Ws[-1].shape[0]
    if (labels < 0).any() or (labels >= K).any():
        raise ValueError(f"labels must lie in [0, {K})")
    pres = _preactivations(net, x, eps_t, lower, upper, Ws, bs, LO, HI, opts.preact)
    n_unst = _count_unstable(pres, len(Ws) - 1, opts.max_relus)
    return MarginProblem(x, eps_t, LO, HI, labels, Ws, bs, pres, n_unst)


def relu_program(Ws, bs, lo: np.ndarray, hi: np.ndarray, pres, relax: bool = False,
                 phases=None):
    """cvxpy model of x in [lo, hi] through the ReLU layers of the chain (Ws, bs):
    h_k = relu(W_k h_{k-1} + b_k) with pre-activation bounds pres[k] = (l, u) valid on
    the modelled set. Stable ReLUs are linear, unstable ones exact (binary d, big-M:
    h >= z, h <= u d, h <= z - l (1 - d)) or, with ``relax``, the triangle h <= u (z - l)
    / (u - l). ``phases[k]`` (optional, values in {-1, 0, 1}): 1 adds z >= 0 and h = z,
    -1 adds z <= 0 and h = 0 (ReLU split decisions: the model is then the subset of the
    box where they hold). Returns (x variable, constraints, last hidden h, has binaries).
    """
    import cvxpy as cp

    xv = cp.Variable(lo.shape[0], bounds=[lo, hi])
    cons, prev, has_int = [], xv, False
    for k in range(len(Ws) - 1):
        l, u = pres[k]
        z = Ws[k] @ prev + bs[k]
        ph = np.zeros(len(l), dtype=np.int64) if phases is None else np.asarray(phases[k])
        on, off = np.flatnonzero(ph > 0), np.flatnonzero(ph < 0)
        act = np.flatnonzero((l >= 0) & (ph == 0))
        unst = np.flatnonzero((l < 0) & (u > 0) & (ph == 0))
        dead = np.flatnonzero((u <= 0) & (l < 0) & (ph == 0))
        h = cp.Variable(len(l), bounds=[np.zeros(len(l)), np.maximum(u, 0.0)])
        lin = np.concatenate([act, on])
        if lin.size:
            cons.append(h[lin] == z[lin])
        if on.size:
            cons.append(z[on] >= 0)
        if off.size:
            cons.append(z[off] <= 0)
        if dead.size or off.size:
            cons.append(h[np.concatenate([dead, off])] == 0)
        if unst.size:
            lu, uu = l[unst], u[unst]
            cons.append(h[unst] >= z[unst])
            if relax:
                cons.append(h[unst] <= cp.multiply(uu / (uu - lu), z[unst] - lu))
            else:
                d = cp.Variable(unst.size, boolean=True)
                has_int = True
                cons.append(h[unst] <= cp.multiply(uu, d))
                cons.append(h[unst] <= z[unst] - cp.multiply(lu, 1 - d))
        prev = h
    return xv, cons, prev, has_int


def _relu_model(p: MarginProblem, b: int, relax: bool):
    """cvxpy model of state b's ReLU layers: the input variable, the constraints, the
    last hidden layer, its box [lo_h, hi_h] and whether the model has binaries."""
    xv, cons, prev, has_int = relu_program(p.Ws, p.bs, p.lo[b], p.hi[b], p.pres[b], relax)
    lo_h, hi_h = p.lo[b], p.hi[b]
    if len(p.Ws) > 1:
        l, u = p.pres[b][len(p.Ws) - 2]
        lo_h, hi_h = np.maximum(l, 0.0), np.maximum(u, 0.0)
    return xv, cons, prev, lo_h, hi_h, has_int


def _mip_dual(info) -> float:
    """HiGHS's MIP dual bound, -inf when absent or not finite."""
    dual = -INF if info is None else float(getattr(info, "mip_dual_bound", -INF))
    return dual if math.isfinite(dual) else -INF


def _read_solution(prob, xv, off: float, ibp_lb: float, has_int: bool):
    """(status, lower bound, solution or None) after a solve that raised nothing."""
    import cvxpy as cp

    st, lb, xs = "error", ibp_lb, None
    info = prob.solver_stats.extra_stats if prob.solver_stats else None
    if prob.status == cp.OPTIMAL:
        st = "optimal"
        lb = float(prob.value)
        if has_int and info is not None:
            dual = float(getattr(info, "mip_dual_bound", -INF))
            if math.isfinite(dual):
                lb = min(lb, dual)
        lb += off
    elif prob.status == cp.USER_LIMIT:
        st = "time_limit"
        lb = max(_mip_dual(info) + off, ibp_lb)
    if xv.value is not None and st != "error":
        xs = np.asarray(xv.value, dtype=np.float64)
    return st, lb, xs


def _solve_one(prob, xv, off: float, ibp_lb: float, has_int: bool, opts: SolveOptions):
    """Solve one margin problem: (status, value, solution or None, seconds)."""
    import cvxpy as cp

    t0 = time.perf_counter()
    st, lb, xs = "error", ibp_lb, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "may be inaccurate" at limits
            prob.solve(solver=cp.HIGHS, verbose=opts.verbose, **opts.solver_args())
        st, lb, xs = _read_solution(prob, xv, off, ibp_lb, has_int)
    except cp.error.SolverError:
        st = "time_limit" if time.perf_counter() - t0 >= 0.9 * opts.time_limit else "error"
    seconds = time.perf_counter() - t0
    return st, (max(lb, ibp_lb) if st == "optimal" else lb), xs, seconds


def _empty_result(p: MarginProblem, relax: bool) -> ExactResult:
    """The result arrays before any solve (+inf values, label status everywhere)."""
    B, K = p.x.shape[0], p.Ws[-1].shape[0]
    return ExactResult(
        values=torch.full((B, K), INF, dtype=torch.float64),
        upper=torch.full((B, K), INF, dtype=torch.float64),
        status=[["label"] * K for _ in range(B)],
        solve_time=torch.zeros((B, K), dtype=torch.float64),
        num_unstable=torch.as_tensor(p.num_unstable, dtype=torch.long),
        witness=torch.full((B, K, *p.in_shape), math.nan, dtype=torch.float64),
        method="lp" if relax else "milp",
        eps=p.eps,
    )


def _solve_state(p: MarginProblem, b: int, opts: SolveOptions, fwd, res: ExactResult) -> None:
    """Every margin f_label - f_j (j != label) of state b, written into ``res``."""
    import cvxpy as cp

    lab = int(p.labels[b])
    WL, bL = p.Ws[-1], p.bs[-1]
    xv, cons, prev, lo_h, hi_h, has_int = _relu_model(p, b, opts.relax)
    c = cp.Parameter(WL.shape[1])
    prob = cp.Problem(cp.Minimize(c @ prev), cons)
    for j in range(WL.shape[0]):
        if j == lab:
            continue
        cvec = WL[lab] - WL[j]
        off = float(bL[lab] - bL[j])
        ibp_lb = float(np.maximum(cvec, 0) @ lo_h + np.minimum(cvec, 0) @ hi_h) + off
        c.value = cvec
        st, value, xs, seconds = _solve_one(prob, xv, off, ibp_lb, has_int, opts)
        res.solve_time[b, j] = seconds
        res.values[b, j] = value
        res.status[b][j] = st
        if xs is not None and np.all(np.isfinite(xs)):
            xt = torch.as_tensor(np.clip(xs, p.lo[b], p.hi[b])).reshape(1, *p.in_shape)
            out = fwd(xt)[0]
            res.upper[b, j] = float(out[lab] - out[j])
            res.witness[b, j] = xt[0]
        else:
            res.upper[b, j] = math.nan


def _solve_margins(net, x, eps, label, lower, upper, opts: SolveOptions) -> ExactResult:
    """Build the query, then solve every margin of every state (MILP or LP)."""
    p = _build(net, x, eps, label, lower, upper, opts)
    fwd = _forward64(net)
    res = _empty_result(p, opts.relax)
    for b in range(p.x.shape[0]):
        _solve_state(p, b, opts, fwd, res)
    return res


def milp_margin(
    net: nn.Module,
    x: torch.Tensor,
    eps,
    label,
    lower=None,
    upper=None,
    time_limit: float = 60.0,
    max_relus: int = 200,
    preact: str = "ibp",
    mip_rel_gap: float = 1e-6,
    verbose: bool = False,
) -> ExactResult:
    """Exact min over ||x' - x||_inf <= eps (and lower <= x' <= upper) of f_label - f_j.

    One MILP per state b and output j != label_b (HiGHS via cvxpy, big-M from
    interval pre-activation bounds, intersected with native CROWN bounds when
    ``preact="crown"``). ``time_limit`` (seconds) applies to each MILP; a MILP
    stopped by it reports the solver's dual bound (status "time_limit"), which
    is still a sound lower bound. eps: scalar or broadcastable to x (per
    dimension). Raises ValueError for unsupported layers or when a state has
    more than ``max_relus`` unstable ReLUs.
    """
    opts = SolveOptions(time_limit, max_relus, preact, False, mip_rel_gap, verbose)
    return _solve_margins(net, x, eps, label, lower, upper, opts)


# Deliberate parallel (duplicates lists it): lp_margin takes milp_margin's arguments.
def lp_margin(
    net: nn.Module,
    x: torch.Tensor,
    eps,
    label,
    lower=None,
    upper=None,
    time_limit: float = 60.0,
    max_relus: int = 2000,
    preact: str = "ibp",
    verbose: bool = False,
) -> ExactResult:
    """LP (triangle) relaxation of ``milp_margin``: a sound lower bound, <= the MILP optimum.

    Each unstable ReLU is relaxed to its convex hull on [l, u]:
    h >= 0, h >= z, h <= u (z - l) / (u - l). Same arguments and result layout
    as ``milp_margin`` (method "lp").
    """
    opts = SolveOptions(time_limit, max_relus, preact, True, 0.0, verbose)
    return _solve_margins(net, x, eps, label, lower, upper, opts)
