"""ReLU-split domains for ``bounds.verify(split="relu")``: bounding, branching, leaves.

A domain is the input box plus split decisions s_k,i in {-1, 0, 1} on ReLU inputs
z_k,i (1: z >= 0, "active"; -1: z <= 0, "inactive"; 0: free). Its set is
D = {x in box : the decisions hold}.

Bounding (``bound_domains``): pre-activation bounds are recomputed layer by layer by
CROWN (``bounds.linear.backward``) with the earlier layers' bounds of the same domain,
intersected with the parent domain's bounds (valid on a superset of D, so on D) and
then clamped on split neurons ([max(l, 0), u] active, [l, min(u, 0)] inactive), which
makes the ReLU relaxation exact there (identity / zero). Every relaxation used holds
on D, so the linear lower bound A x + b <= C f(x) holds on D, and its minimum over the
whole box is a sound lower bound on D. The split constraints are not in that minimum
(no beta-CROWN multipliers), so a domain whose ReLUs are all fixed is not decided by
CROWN; ``leaf_minimum`` decides it exactly by an LP (a MILP when some ReLUs are still
free) over the polytope, through ``bounds.exact.relu_program``.

Branching (``branch``): BaBSR-style score from the final backward pass. With
lambda_i the coefficient of ReLU output i in the lower bound of the decisive row (the
lowest row for "all", the highest for "any"): a negative lambda uses the upper chord,
whose intercept costs lambda u (-l) / (u - l); a positive one uses the lower line, off
by at most min(u, -l). score = max(-lambda, 0) u (-l) / (u - l)
+ 0.25 max(lambda, 0) min(u, -l), plus 1e-9 u (-l) / (u - l) so that every unstable
neuron is eligible. Deviation from BaBSR (Bunel et al. 2020): no backup score, no
intercept-shift term of the previous layer.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from bounds import graph
from bounds.exact import relu_chain, relu_program
from bounds.linear import activation_bounds, ascent_step, backward, relu_relaxation
from bounds.perturbation import LpBall

__all__ = ["ReluSetup", "bound_domains", "branch", "leaf_minimum", "optimize_domains"]


class ReluSetup:
    """The parsed network for ReLU splitting: folded ball (batch 1), remaining layers,
    the indices of their ReLU layers, the root bounds (CROWN's tight intermediates on
    the whole box) and the dense float64 chain for leaf programs."""

    def __init__(self, net, ball: LpBall):
        layers = graph.parse(net, ball.in_shape)
        with torch.no_grad():
            self.folded, self.rest, root = activation_bounds(layers, ball, "crown")
        acts = [k for k, layer in enumerate(self.rest) if layer.rule.role == "activation"]
        if any(self.rest[k].kind != "relu" for k in acts):
            raise ValueError("verify: split='relu' needs a network whose activations are ReLU")
        self.relus = acts
        self.root = {k: (root[k][0].detach(), root[k][1].detach()) for k in acts}
        self.Ws, self.bs = relu_chain(net, tuple(ball.in_shape))
        if len(self.Ws) - 1 != len(acts):
            raise ValueError("verify: the ReLU layers do not match the affine chain")

    def ball(self, n: int) -> LpBall:
        """The folded ball repeated n times (every domain has the whole box)."""
        f = self.folded

        def rep(t):
            return None if t is None else t.expand(n, *f.center.shape[1:])

        return LpBall.trusted(rep(f.center), rep(f.eps_full()), f.norm, rep(f.lower),
                              rep(f.upper))


def _clamp(l, u, s):
    """Bounds on the sub-domain where the split decisions s hold (never l > u)."""
    on, off = s > 0, s < 0
    l = torch.where(on, l.clamp_min(0), l)
    u = torch.where(on, torch.maximum(u, l), u)
    u = torch.where(off, u.clamp_max(0), u)
    l = torch.where(off, torch.minimum(l, u), l)
    return l, u


def _refine(setup: ReluSetup, k: int, ball: LpBall, act: dict, l, u):
    """CROWN bounds of the input of ReLU layer k (neurons unstable in some domain),
    intersected with (l, u)."""
    N = l.shape[0]
    lf, uf = l.reshape(N, -1), u.reshape(N, -1)
    idx = ((lf < 0) & (uf > 0)).any(0).nonzero().flatten()
    if idx.numel() == 0:
        return l, u
    n = lf.shape[1]
    eye = torch.zeros(idx.numel(), n, dtype=l.dtype, device=l.device)
    eye[torch.arange(idx.numel()), idx] = 1.0
    eye = eye.reshape(1, idx.numel(), *l.shape[1:])
    A_in, bias = backward(setup.rest[:k], torch.cat([eye, -eye], 1), act)
    val = ball.concretize(A_in.expand(N, *A_in.shape[1:]), sign=-1.0) + bias
    r = idx.numel()
    lf = lf.index_copy(1, idx, torch.maximum(lf[:, idx], val[:, :r]))
    uf = uf.index_copy(1, idx, torch.minimum(uf[:, idx], -val[:, r:]))
    return lf.reshape(l.shape), uf.reshape(u.shape)


def bound_domains(setup: ReluSetup, C: torch.Tensor, splits: dict, parent: dict):
    """Lower bounds of the rows of C f on each domain (N, m), the domains' pre-activation
    bounds {k: (l, u)}, the coefficients of each ReLU output in those lower bounds
    {k: (N or 1, m, *shape)} and of the (folded) input, (N, m, *folded shape).
    ``splits[k]``: (N, *shape) decisions; ``parent[k]``: bounds valid on a superset of
    each domain."""
    N = next(iter(splits.values())).shape[0] if splits else 1
    ball = setup.ball(N)
    act: dict = {}
    for j, k in enumerate(setup.relus):
        l, u = parent[k]
        if j > 0:
            l, u = _refine(setup, k, ball, act, l, u)
        act[k] = _clamp(l, u, splits[k])
    A = C.reshape(1, C.shape[0], *setup.rest[-1].out_shape)
    bias = torch.zeros(1, C.shape[0], dtype=C.dtype, device=C.device)
    lam = {}
    for k in range(len(setup.rest) - 1, -1, -1):
        if k in act:
            lam[k] = A
        A, b = backward([setup.rest[k]], A, {0: act[k]} if k in act else {})
        bias = bias + b
    A = A.expand(N, *A.shape[1:])
    return ball.concretize(A, sign=-1.0) + bias, act, lam, A


def branch(setup: ReluSetup, act: dict, lam: dict, splits: dict, row: torch.Tensor):
    """The neuron to split in each domain (layer list position, flat index) by the score
    of the module docstring, and the number of free unstable neurons of each domain."""
    scores, free_n = [], 0
    N = row.shape[0]
    ar = torch.arange(N, device=row.device)
    for k in setup.relus:
        l, u = (t.reshape(N, -1) for t in act[k])
        lm = lam[k].expand(N, *lam[k].shape[1:])[ar, row].reshape(N, -1)
        free = (l < 0) & (u > 0) & (splits[k].reshape(N, -1) == 0)
        free_n = free_n + free.sum(1)
        gap = (u * -l / (u - l).clamp_min(1e-30)).clamp_min(0)
        s = lm.clamp(max=0).neg() * gap + 0.25 * lm.clamp(min=0) * torch.minimum(u, -l)
        s = s + 1e-9 * gap + 1e-30
        scores.append(torch.where(free, s, torch.zeros_like(s)))
    flat = torch.cat(scores, 1)
    best = flat.argmax(1)
    sizes = [s.shape[1] for s in scores]
    offs = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], device=best.device)
    layer = torch.bucketize(best, offs, right=True) - 1
    return layer, best - offs[layer], free_n


def leaf_minimum(setup: ReluSetup, lo, hi, act: dict, split: dict, C, d, mode: str,
                 time_limit: float):
    """Exact minimum over one domain of the objective (min over rows of (C f - d) for
    "all", max for "any"), in float64 with the pre-activation bounds widened by the
    float32 rounding of their computation. Returns (status, lower bound, point):
    "optimal", "infeasible" (empty domain: +inf) or "unknown" (time limit or solver
    failure). The point (numpy, flat) minimizes the program (None if none)."""
    import cvxpy as cp

    pres, phases = [], []
    for k in setup.relus:
        l = act[k][0].detach().reshape(-1).double().cpu().numpy()
        u = act[k][1].detach().reshape(-1).double().cpu().numpy()
        pres.append((l - 1e-5 * (1 + np.abs(l)), u + 1e-5 * (1 + np.abs(u))))
        phases.append(split[k].reshape(-1).cpu().numpy())
    lo = lo.detach().reshape(-1).double().cpu().numpy()
    hi = hi.detach().reshape(-1).double().cpu().numpy()
    xv, cons, h, has_int = relu_program(setup.Ws, setup.bs, lo, hi, pres, False, phases)
    Cn = C.double().cpu().numpy() @ setup.Ws[-1]
    off = C.double().cpu().numpy() @ setup.bs[-1] - d.double().cpu().numpy()
    rows = range(Cn.shape[0]) if mode == "all" else [None]
    best = (math.inf, None)
    for i in rows:
        if i is None:
            t = cp.Variable()
            prob = cp.Problem(cp.Minimize(t), [*cons, t >= Cn @ h + off])
        else:
            prob = cp.Problem(cp.Minimize(Cn[i] @ h), cons)  # no constant: the MILP
        st, val = _solve(prob, has_int, time_limit)       # dual bound omits it
        val = val if i is None else val + off[i]
        if st != "optimal":
            if st == "infeasible":
                return "infeasible", math.inf, None
            return "unknown", -math.inf, None
        if val < best[0]:
            best = (val, np.asarray(xv.value, dtype=np.float64))
    return "optimal", best[0], best[1]


def _solve(prob, has_int: bool, time_limit: float):
    """(status, sound lower bound) of one HiGHS solve (MILP: min(value, dual bound))."""
    import cvxpy as cp

    opts = {"time_limit": max(float(time_limit), 0.05)}
    if has_int:
        opts.update(mip_rel_gap=1e-9, mip_abs_gap=1e-9)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prob.solve(solver=cp.HIGHS, **opts)
    except cp.error.SolverError:
        return "unknown", -math.inf
    if prob.status == cp.INFEASIBLE:
        return "infeasible", math.inf
    if prob.status != cp.OPTIMAL:
        return "unknown", -math.inf
    val = float(prob.value)
    info = prob.solver_stats.extra_stats if prob.solver_stats else None
    if has_int and info is not None:
        dual = float(getattr(info, "mip_dual_bound", -math.inf))
        if math.isfinite(dual):
            val = min(val, dual)
    return "optimal", val


def _final_pass(setup: ReluSetup, C, act: dict, splits: dict, alphas: dict, betas: dict):
    """Lower bounds (N, m) of C f on the domains with ReLU lower slopes ``alphas`` and
    split multipliers ``betas`` >= 0: the bound of C f - sum_k beta_k s_k z_k, which is
    <= C f on the domain (s_k z_k >= 0 there)."""
    N = next(iter(act.values()))[0].shape[0]
    A = C.reshape(1, C.shape[0], *setup.rest[-1].out_shape)
    bias = torch.zeros(1, C.shape[0], dtype=C.dtype, device=C.device)
    for k in range(len(setup.rest) - 1, -1, -1):
        if k in act:
            A, b = backward([setup.rest[k]], A, {0: act[k]}, {0: alphas[k]})
            A = A - betas[k].clamp_min(0) * splits[k].unsqueeze(1).to(A.dtype)
        else:
            A, b = backward([setup.rest[k]], A, {})
        bias = bias + b
    return setup.ball(N).concretize(A.expand(N, *A.shape[1:]), sign=-1.0) + bias


def optimize_domains(setup: ReluSetup, C, act: dict, splits: dict, lb: torch.Tensor,
                     iterations: int = 10, lr: float = 0.2) -> torch.Tensor:
    """beta-CROWN-style tightening of the final bound of each domain (Wang et al. 2021,
    final layer only): Adam on the lower slopes alpha in [0, 1] (per row and neuron) and
    on multipliers beta >= 0 of the split constraints s z >= 0, from CROWN's slopes and
    beta = 0. Every iterate is a sound bound; the elementwise best (with ``lb``) is
    returned. The intermediate bounds stay CROWN's (not optimized)."""
    m = C.shape[0]
    alphas, betas = {}, {}
    for k in setup.relus:
        l, u = act[k]
        lo_d = relu_relaxation(l, u)[2]
        alphas[k] = lo_d.unsqueeze(1).expand(-1, m, *lo_d.shape[1:]).clone()
        betas[k] = torch.zeros_like(alphas[k])
    params = [*alphas.values(), *betas.values()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    best = lb
    with torch.enable_grad():
        for _ in range(iterations):
            val = _final_pass(setup, C, act, splits, alphas, betas)
            best = torch.maximum(best, val.detach())
            ascent_step(opt, list(alphas.values()), val, list(betas.values()))
    with torch.no_grad():
        return torch.maximum(best, _final_pass(setup, C, act, splits, alphas, betas))
