"""Linear relaxation based bounds: CROWN, CROWN-IBP and alpha-CROWN (native).

Each nonlinearity z = sigma(y) with pre-activation bounds l <= y <= u gets two
linear functions a_l y + b_l <= sigma(y) <= a_u y + b_u. Starting from the
specification C (rows c), a backward pass substitutes layer by layer and yields
c^T f(x') >= A x' + d for all x' in the set, then min_{x'} A x' is taken in
closed form (dual norm, or the clipped box). Upper bounds use -C.

* ReLU: upper = chord u/(u-l) (y - l); lower slope 1 if u > -l else 0
  ("adaptive", as in CROWN and auto_LiRPA); stable neurons are exact.
* Tanh: both lines use the chord slope s of [l, u]; the intercepts are the
  exact min / max of tanh(y) - s y on [l, u] (end points and the points where
  tanh'(y) = s), so the relaxation is sound by construction.
* CROWN computes the pre-activation bounds of every layer with the same
  backward pass; CROWN-IBP takes them from IBP; alpha-CROWN optimizes the ReLU
  lower slopes in [0, 1] (per output row) by projected gradient ascent, starting
  from CROWN's slopes and keeping the best bound seen, so it is never looser.
"""

from __future__ import annotations

import math

import torch

from bounds.graph import Layer
from bounds.interval import Interval, affine_on_ball, fold_input, ibp, spec_linear_interval
from bounds.perturbation import LpBall
from bounds.rules import PreBounds, crop, relu_relaxation, slope_ref, tanh_relaxation

__all__ = ["activation_bounds", "alpha_crown", "backward", "crown", "relu_relaxation",
           "tanh_relaxation"]

_CHUNK_ELEMENTS = 2**25  # max elements of one backward A tensor (memory cap)
_CHUNK_ELEMENTS_CONV = 2**20  # the same through convolutions (cache-sized: ~1.4x faster)
_FUSE_MAX_IN = 32
_SLOPE_FROM_RAW = True
_TWO_SLOPES = True
_INTERSECT_OUTPUT = True
_ALL_LAYERS_CONV_MAX = 2**24  # per-row intermediate slopes of a conv stack (entries)


# --------------------------------------------------------------------------- backward pass
def backward(
    layers: list[Layer],
    A: torch.Tensor,
    act_bounds: dict[int, Interval],
    alphas: dict[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower-bound rows of A z_K by a linear function of the (folded) input.

    ``A``: (B, m, *out_shape of layers[-1]) (batch dim may be 1 to broadcast).
    ``act_bounds[k]``: bounds of the input of activation layer k.
    Returns (A_in, bias) with A z_K >= A_in x + bias for all x in the set. Each
    layer's step is its rule's ``backward`` (``bounds.rules``); an activation
    after a narrow Linear with batch-shared rows takes its ``fused`` rule.
    """
    bias = torch.zeros(A.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
    k = len(layers) - 1
    while k >= 0:
        rule = layers[k].rule
        if _can_fuse(layers, k, A, alphas):
            A, bias = rule.fused(layers[k - 1].module, act_bounds[k], A[0], bias)
            k -= 2
            continue
        alpha = alphas.get(k) if alphas is not None else None
        A, bias = rule.backward(layers[k], A, bias, act_bounds.get(k), alpha)
        k -= 1
    return A, bias


def _fusable(layers: list[Layer], k: int) -> bool:
    """Activation k with a fused rule, preceded by a Linear of at most _FUSE_MAX_IN inputs."""
    return (
        k >= 1
        and layers[k].rule.fused is not None
        and layers[k - 1].kind == "linear"
        and layers[k - 1].module.in_features <= _FUSE_MAX_IN
    )


def _can_fuse(layers, k, A, alphas) -> bool:
    """``_fusable`` with A shared across the batch and no alpha slopes at k."""
    return A.shape[0] == 1 and _fusable(layers, k) and (alphas is None or k not in alphas)


# --------------------------------------------------------------------------- drivers
def _is_exact_by_ibp(prefix: list[Layer]) -> bool:
    """IBP is exact on an activation-free prefix with at most one linear/conv layer."""
    n_aff = 0
    for layer in prefix:
        if layer.rule.role == "activation":
            return False
        if layer.rule.role == "affine":
            n_aff += 1
    return n_aff <= 1


def _concretize_rows(
    layers: list[Layer],
    ball: LpBall,
    A: torch.Tensor,
    act_bounds: dict[int, Interval],
    alphas: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    A_in, bias = backward(layers, A, act_bounds, alphas)
    if A_in.shape[0] != ball.batch_size:
        A_in = A_in.expand(ball.batch_size, *A_in.shape[1:])
    if bias.shape[0] != ball.batch_size:
        bias = bias.expand(ball.batch_size, -1)
    return ball.concretize(A_in, sign=-1.0) + bias


def _peak_per_row(prefix: list[Layer], B: int) -> int:
    """Largest number of A entries per spec row during a backward pass from a
    batch-shared identity spec (follows the same fusion rule as ``backward``)."""
    shared, peak, k = True, 1, len(prefix) - 1
    while k >= 0:
        layer = prefix[k]
        if shared and _fusable(prefix, k):
            shared = False
            peak = max(peak, B * prefix[k - 1].module.in_features)
            k -= 2
            continue
        if layer.rule.role == "activation":
            shared = False
        peak = max(peak, (1 if shared else B) * math.prod(layer.in_shape))
        k -= 1
    return peak


def _window_backward(prefix, A, origin, act_bounds):
    """Backward pass on a spatial window only (receptive-field cropping).

    ``A``: (Bd, R, C, h, w) coefficients on the window of the last layer's
    output whose top-left corner is ``origin``. Every layer of ``prefix`` has a
    ``window`` rule (conv / activation / normalize / identity), so each step only
    touches the receptive field of the window; entries that fall on zero
    padding are dropped (padding is the constant 0). Same numbers as the full
    backward pass, at a fraction of the cost for early convolutions.
    """
    bias = torch.zeros(A.shape[0], A.shape[1], dtype=A.dtype, device=A.device)
    for k in range(len(prefix) - 1, -1, -1):
        layer = prefix[k]
        A, bias, origin = layer.rule.window(layer, A, bias, origin, act_bounds.get(k))
    return A, bias, origin


def _intermediate_crown_windowed(
    prefix: list[Layer], ball: LpBall, act_bounds: dict[int, Interval], rows: torch.Tensor
) -> Interval:
    """CROWN bounds of conv-stack outputs, one output pixel at a time."""
    C, H, W = prefix[-1].out_shape
    B = ball.batch_size
    lo_out = torch.empty(B, rows.numel(), dtype=ball.center.dtype, device=ball.center.device)
    up_out = torch.empty_like(lo_out)
    pos = rows % (H * W)
    chan = rows // (H * W)
    e = ball.eps_full()
    lower = None if ball.lower is None else ball.lower.expand_as(ball.center)
    upper = None if ball.upper is None else ball.upper.expand_as(ball.center)
    for p in torch.unique(pos).tolist():
        sel = (pos == p).nonzero().flatten()
        r = sel.numel()
        eye = torch.zeros(r, C, 1, 1, dtype=ball.center.dtype, device=ball.center.device)
        eye[torch.arange(r), chan[sel], 0, 0] = 1.0
        A = torch.cat([eye, -eye], 0).unsqueeze(0)
        A_in, bias, (oh, ow) = _window_backward(prefix, A, (p // W, p % W), act_bounds)
        h, w = A_in.shape[-2:]
        sub = LpBall.trusted(
            crop(ball.center, oh, ow, h, w),
            crop(e, oh, ow, h, w),
            ball.norm,
            None if lower is None else crop(lower, oh, ow, h, w),
            None if upper is None else crop(upper, oh, ow, h, w),
        )
        val = sub.concretize(A_in.expand(B, *A_in.shape[1:]), sign=-1.0) + bias
        lo_out[:, sel] = val[:, :r]
        up_out[:, sel] = -val[:, r:]
    return lo_out, up_out


def _intermediate_crown(
    prefix: list[Layer],
    ball: LpBall,
    act_bounds: dict[int, Interval],
    rows: torch.Tensor | None = None,
    alphas: dict[int, torch.Tensor] | None = None,
) -> Interval:
    """Bounds of the output of ``prefix`` by CROWN, chunked over neurons.

    With ``rows`` (flat neuron indices) only those neurons are bounded and
    (B, len(rows)) tensors are returned; otherwise the full output shape.
    ``alphas``: ReLU layer index -> lower slopes (B, 1 or 2 n, *shape), shared by every
    row or one per row of [I; -I] over this output's n neurons (alpha-CROWN on
    intermediate layers). With ``alphas`` a conv stack takes the full-size backward pass
    (the windowed pass reads the default slopes).
    """
    out_shape = prefix[-1].out_shape
    n = math.prod(out_shape)
    index = torch.arange(n, device=ball.center.device) if rows is None else rows
    if (
        not alphas
        and len(out_shape) == 3
        and out_shape[1] * out_shape[2] > 1
        and all(layer.rule.window is not None for layer in prefix)
        and ball.center.dim() == 4
    ):
        lo, up = _intermediate_crown_windowed(prefix, ball, act_bounds, index)
        if rows is not None:
            return lo, up
        B = ball.batch_size
        return lo.reshape(B, *out_shape), up.reshape(B, *out_shape)
    total = index.numel()
    B = ball.batch_size
    cap = _CHUNK_ELEMENTS_CONV if any(layer.kind == "conv" for layer in prefix) else _CHUNK_ELEMENTS
    chunk = max(1, min(total, cap // max(1, _peak_per_row(prefix, B) * 2)))
    lows, ups = [], []
    for start in range(0, total, chunk):
        sel = index[start : start + chunk]
        eye = torch.zeros(sel.numel(), n, dtype=ball.center.dtype, device=ball.center.device)
        eye[torch.arange(sel.numel(), device=sel.device), sel] = 1.0
        eye = eye.reshape(1, sel.numel(), *out_shape)
        A = torch.cat([eye, -eye], dim=1)
        sub = None
        if alphas:
            both = torch.cat([sel, sel + n])
            sub = {j: a if a.shape[1] == 1 else a[:, both]
                   for j, a in alphas.items() if j < len(prefix)}
        val = _concretize_rows(prefix, ball, A, act_bounds, sub or None)
        r = sel.numel()
        lows.append(val[:, :r])
        ups.append(-val[:, r:])
    lo = torch.cat(lows, 1)
    up = torch.cat(ups, 1)
    if rows is not None:
        return lo, up
    return lo.reshape(B, *out_shape), up.reshape(B, *out_shape)


def _intersect(a: Interval, b: Interval) -> Interval:
    """Elementwise intersection of two sound intervals of the same quantity."""
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _step(layer: Layer, prev: Interval | None, ball: LpBall) -> Interval:
    """The interval of one layer's output from the interval of its input (the first
    affine layer is bounded exactly on the ball)."""
    if prev is None:
        if layer.rule.on_ball is not None:
            return affine_on_ball(layer, ball)
        return layer.rule.ibp(layer, *ball.box())
    return layer.rule.ibp(layer, *prev)


def _plain(bounds_: dict[int, Interval]) -> dict[int, Interval]:
    """The same bounds without lower-slope references (slopes read on the bounds)."""
    return {k: (v[0], v[1]) for k, v in bounds_.items()}


def _slopes_differ(bounds_: dict[int, Interval]) -> bool:
    """Some unstable ReLU whose default lower slope read on its reference bounds differs
    from the one read on its (intersected) bounds: only then is a second pass useful."""
    for v in bounds_.values():
        ref = slope_ref(v)
        if ref is None:
            continue
        l, u = v
        unstable = (l < 0) & (u > 0)
        if ((unstable & ((ref[1] > -ref[0]) != (u > -l))).any()):
            return True
    return False


def _crown_two_slopes(prefix, ball, bounds_, rows=None, alphas=None) -> Interval:
    """``_intermediate_crown`` with the ReLU lower slopes read on the reference bounds
    and on the intersected bounds; the elementwise tighter of the two (both sound).
    The slope heuristic is not monotone in the bounds, so either choice alone can
    lose to the other (and to auto_LiRPA's) on some neurons. With ``alphas`` the lower
    slopes are those alphas (one pass)."""
    if alphas:
        return _intermediate_crown(prefix, ball, bounds_, rows, alphas)
    a = _intermediate_crown(prefix, ball, bounds_, rows)
    if not _TWO_SLOPES or not _slopes_differ(bounds_):
        return a
    b = _intermediate_crown(prefix, ball, _plain(bounds_), rows)
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _refine_unstable(prefix, ball, bounds_, step: Interval, alphas=None) -> PreBounds:
    """CROWN bounds for the neurons unstable under ``step`` in some batch element (a ReLU
    is exact on stable neurons whatever their bounds), intersected with ``step``. The
    un-intersected CROWN bounds are kept as the lower-slope reference (``PreBounds``)."""
    lo_i, up_i = step
    unstable = ((lo_i < 0) & (up_i > 0)).reshape(lo_i.shape[0], -1).any(0)
    idx = unstable.nonzero().flatten()
    if idx.numel() == 0:
        return PreBounds(lo_i, up_i)
    if idx.numel() == unstable.numel():
        raw = _crown_two_slopes(prefix, ball, bounds_, alphas=alphas)
        return PreBounds(*_intersect(raw, step), raw if _SLOPE_FROM_RAW else None)
    lo_c, up_c = _crown_two_slopes(prefix, ball, bounds_, idx, alphas)
    B = lo_i.shape[0]
    lo_f, up_f = lo_i.reshape(B, -1), up_i.reshape(B, -1)
    lo = lo_f.index_copy(1, idx, torch.maximum(lo_c, lo_f[:, idx]))
    up = up_f.index_copy(1, idx, torch.minimum(up_c, up_f[:, idx]))
    ref = (lo_f.index_copy(1, idx, lo_c).reshape(lo_i.shape),
           up_f.index_copy(1, idx, up_c).reshape(up_i.shape))
    return PreBounds(lo.reshape(lo_i.shape), up.reshape(up_i.shape),
                     ref if _SLOPE_FROM_RAW else None)


def activation_bounds(
    layers: list[Layer], ball: LpBall, intermediate: str
) -> tuple[LpBall, list[Layer], dict[int, Interval]]:
    """Fold the input, then bound the input of every activation layer.

    ``intermediate``: "ibp" (CROWN-IBP) or "crown" (full CROWN).
    Returns (folded ball, remaining layers, {layer index: (l, u)}).

    With "crown", each layer output keeps the tightest interval known: the
    one-layer interval step from the previous layer's (already tightened)
    interval, which is never looser than IBP from the input, intersected at
    every activation input with the CROWN bound. CROWN runs only on neurons that
    this interval leaves unstable (ReLU), or on all of them (Tanh).
    """
    folded, rest = fold_input(layers, ball)
    return folded, rest, bound_activations(rest, folded, intermediate)


def bound_activations(rest: list[Layer], folded: LpBall, intermediate: str,
                      alphas: dict[int, torch.Tensor] | None = None) -> dict[int, Interval]:
    """``activation_bounds`` on already folded layers. ``alphas[k]`` (for the CROWN pass
    bounding the input of activation layer k: ReLU layer index j < k -> lower slopes in
    [0, 1], see ``_intermediate_crown``) replace the default slopes (every alpha gives
    sound bounds)."""
    return bound_chain(rest, folded, intermediate, alphas)[0]


def bound_chain(rest: list[Layer], folded: LpBall, intermediate: str,
                alphas: dict[int, torch.Tensor] | None = None
                ) -> tuple[dict[int, Interval], Interval | None]:
    """:func:`bound_activations` plus the interval of the last layer's input from the same
    tightened chain (None when the last layer is the first): every layer's interval is
    the one-layer step from the previous (tightened) one, hence inside IBP's."""
    bounds_: dict[int, Interval] = {}
    prev: Interval | None = None
    for k, layer in enumerate(rest):
        if layer.rule.role == "activation":
            if k == 0:
                prev = folded.box()
            elif intermediate != "ibp" and not _is_exact_by_ibp(rest[:k]):
                a_k = alphas.get(k) if alphas else None
                if layer.rule.exact_when_stable:
                    prev = _refine_unstable(rest[:k], folded, bounds_, prev, a_k)
                else:
                    prev = _intersect(_intermediate_crown(rest[:k], folded, bounds_, None,
                                                          a_k), prev)
            bounds_[k] = prev
        if k == len(rest) - 1:
            return bounds_, (None if prev is None else (prev[0], prev[1]))
        prev = _step(layer, prev, folded)
    return bounds_, None


def _output_interval(rest: list[Layer], folded: LpBall, last_in: Interval | None,
                     C: torch.Tensor | None) -> Interval:
    """Interval bounds of C f (or f) over the ball from the tightened chain's interval of
    the last layer's input (never looser than IBP from the input); plain IBP when the
    chain has no such interval or the last layer is not a Linear."""
    last = rest[-1] if rest else None
    if last_in is None or last.kind != "linear" or last_in[0].dim() != 2:
        return ibp(rest, folded, C)[0]
    if C is not None:
        return spec_linear_interval(last, last_in[0], last_in[1], C)
    return last.rule.ibp(last, *last_in)


def _spec_rows(C: torch.Tensor | None, out_shape, ref: torch.Tensor) -> torch.Tensor:
    n = math.prod(out_shape)
    if C is None:
        eye = torch.eye(n, dtype=ref.dtype, device=ref.device).unsqueeze(0)
        return eye.reshape(1, n, *out_shape)
    return C.reshape(C.shape[0], C.shape[1], *out_shape)


def crown(
    layers: list[Layer],
    ball: LpBall,
    C: torch.Tensor | None = None,
    intermediate: str = "crown",
    upper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CROWN (intermediate="crown") or CROWN-IBP (intermediate="ibp") bounds of C f.

    With ``upper=False`` only the lower bound is computed (half the backward
    work) and None is returned in its place.
    """
    folded, rest = fold_input(layers, ball)
    act, last_in = bound_chain(rest, folded, intermediate)
    B = ball.batch_size
    spec = _spec_rows(C, layers[-1].out_shape, ball.center)
    m = spec.shape[1]
    A = torch.cat([spec, -spec], dim=1) if upper else spec
    if not rest:  # nothing but folding: f is an affine bijection of the input
        val = folded.concretize(A.expand(B, *A.shape[1:]), sign=-1.0)
    else:
        val = _concretize_rows(rest, folded, A, act)
        if intermediate != "ibp" and _TWO_SLOPES and _slopes_differ(act):
            val = torch.maximum(val, _concretize_rows(rest, folded, A, _plain(act)))
    lb, ub = val[:, :m], (-val[:, m:] if upper else None)
    if intermediate == "ibp" or not _INTERSECT_OUTPUT:
        return lb, ub
    # never looser than IBP: the tightened chain's interval of the output
    lb_i, ub_i = _output_interval(rest, folded, last_in, C)
    return torch.maximum(lb, lb_i), (torch.minimum(ub, ub_i) if upper else None)


def ascent_step(opt: torch.optim.Optimizer, params: list[torch.Tensor],
                val: torch.Tensor, nonneg: list[torch.Tensor] | tuple = ()) -> None:
    """One step of ``opt`` raising sum(val) over the slopes ``params`` and the multipliers
    ``nonneg`` (beta-CROWN's), then projected: slopes to [0, 1], multipliers to >= 0."""
    opt.zero_grad()
    both = [*params, *nonneg]
    # autograd.grad (not backward) so the network's .grad stays untouched
    grads = torch.autograd.grad(-val.sum(), both, allow_unused=True)
    for a, g in zip(both, grads):
        a.grad = torch.zeros_like(a) if g is None else g
    opt.step()
    with torch.no_grad():
        for a in params:
            a.clamp_(0, 1)
        for b in nonneg:
            b.clamp_(min=0)


def _optimize_alphas(rest, fb, A, act_d, alphas, best, best_alphas, iterations, lr):
    """Adam on the ReLU lower slopes ``alphas`` (in place), maximizing the concretized
    rows; returns the elementwise best rows and records their slopes in ``best_alphas``."""
    B, rows = next(iter(alphas.values())).shape[:2]
    params = [a.requires_grad_(True) for a in alphas.values()]
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for _ in range(iterations):
            ascent_step(opt, params, _concretize_rows(rest, fb, A, act_d, alphas))
            with torch.no_grad():
                val = _concretize_rows(rest, fb, A, act_d, alphas)
                better = val > best
                best = torch.where(better, val, best)
                for k, a in alphas.items():
                    mask = better.reshape(B, rows, *([1] * (a.dim() - 2)))
                    best_alphas[k] = torch.where(mask, a.detach(), best_alphas[k])
    return best


def _inner_alpha_size(rest: list[Layer]) -> int:
    """Entries of per-row intermediate slopes (per batch element): for every ReLU k bounded
    by CROWN, 2 n_k rows times the neurons of the ReLUs before it."""
    sizes = [(k, math.prod(layer.in_shape)) for k, layer in enumerate(rest)
             if layer.kind == "relu"]
    return sum(2 * n_k * sum(n_j for _, n_j in sizes[:i]) for i, (_, n_k) in
               enumerate(sizes))


def all_layers_pay(rest: list[Layer]) -> bool:
    """Intermediate slopes are optimized when some ReLU's input bounds come from CROWN (a
    ReLU after the first one): on fully connected nets always, on convolution stacks when
    the per-row intermediate slopes of one batch element fit in ``_ALL_LAYERS_CONV_MAX``
    entries (small CNNs: every step re-runs CROWN on each unstable intermediate neuron
    without the windowed pass, so Atari-size stacks keep CROWN's intermediate bounds)."""
    relus = [k for k, layer in enumerate(rest) if layer.kind == "relu"]
    if len(relus) <= 1:
        return False
    return conv_alphas_fit(rest, 1)


def conv_alphas_fit(rest: list[Layer], batch: int) -> bool:
    """No convolution, or the per-row intermediate slopes of ``batch`` elements fit in
    ``_ALL_LAYERS_CONV_MAX`` entries."""
    if all(layer.kind != "conv" for layer in rest):
        return True
    return batch * _inner_alpha_size(rest) <= _ALL_LAYERS_CONV_MAX


def _rows(best: torch.Tensor, m: int, upper: bool):
    return best[:, :m], (-best[:, m:] if upper else None)


def _optimize_all_alphas(rest, fb, A, act, alphas, best, iterations, lr, patience=5):
    """alpha-CROWN on every layer: Adam on the final rows' slopes ``alphas`` (per row)
    and, for each intermediate layer bounded by CROWN, on the slopes of the ReLUs before
    it (one per bounded neuron and side: rows of [I; -I]), the intermediate bounds
    recomputed from them at each step. Every iterate's bounds are sound, so the
    elementwise best over all iterates (from CROWN's ``best``) is returned; stops early
    after ``patience`` steps without a gain above 1e-6 relative."""
    relus = [k for k, layer in enumerate(rest) if layer.kind == "relu" and k in act]
    inner = {}
    for k in relus[1:]:  # the bounds of ReLU k's input, from the ReLUs j before it
        n = math.prod(act[k][0].shape[1:])
        inner[k] = {j: relu_relaxation(*act[j])[2].unsqueeze(1)
                    .expand(-1, 2 * n, *act[j][0].shape[1:]).clone() for j in relus if j < k}

    params = [a.requires_grad_(True) for a in (*alphas.values(),
                                               *(a for d in inner.values() for a in d.values()))]
    opt = torch.optim.Adam(params, lr=lr)
    stale = 0
    with torch.enable_grad():
        for it in range(iterations + 1):
            val = _concretize_rows(rest, fb, A, bound_activations(rest, fb, "crown", inner),
                                   alphas)
            gain = float((val.detach() - best).clamp_min(0).sum())
            best = torch.maximum(best, val.detach())
            stale = 0 if gain > 1e-6 * (1.0 + float(best.abs().sum())) else stale + 1
            if it == iterations or stale >= patience:
                break
            ascent_step(opt, params, val)
    return best


def alpha_crown(
    layers: list[Layer],
    ball: LpBall,
    C: torch.Tensor | None = None,
    iterations: int = 20,
    lr: float = 0.25,
    upper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """alpha-CROWN: optimize ReLU lower slopes.

    The slopes alpha in [0, 1] of the final backward pass (one per output row and
    neuron) are optimized by Adam on sum(lb) - sum(ub). Without autograd (certification)
    on fully connected nets, the slopes of the intermediate layers are optimized too
    (one per neuron, shared by the rows; ``_optimize_all_alphas``); otherwise (training,
    convolution stacks) the pre-activation bounds are CROWN's. The elementwise best bound
    over all iterations, including CROWN's start, is returned, hence never looser than
    CROWN. Every alpha gives a sound bound.
    """
    folded, rest, act = activation_bounds(layers, ball, "crown")
    B = ball.batch_size
    spec = _spec_rows(C, layers[-1].out_shape, ball.center)
    m = spec.shape[1]
    A = torch.cat([spec, -spec], dim=1) if upper else spec
    rows = A.shape[1]
    fb = folded  # fold_input already shaped it for rest[0]
    if not rest:
        val = folded.concretize(A.expand(B, *A.shape[1:]), sign=-1.0)
        return val[:, :m], (-val[:, m:] if upper else None)
    relus = {k: v for k, v in act.items() if rest[k].kind == "relu"}
    act_d = {k: (lv.detach(), uv.detach()) for k, (lv, uv) in act.items()}
    alphas = {}
    for k, (lv, uv) in relus.items():
        _, _, lo_d = relu_relaxation(lv.detach(), uv.detach())
        alphas[k] = lo_d.unsqueeze(1).expand(B, rows, *lo_d.shape[1:]).clone()
    with torch.no_grad():
        best = _concretize_rows(rest, fb, A, act_d)
    best_alphas = {k: a.clone() for k, a in alphas.items()}
    if (alphas and iterations > 0 and not torch.is_grad_enabled() and all_layers_pay(rest)
            and conv_alphas_fit(rest, B)):
        return _rows(_optimize_all_alphas(rest, fb, A, act_d, alphas, best, iterations, lr),
                     m, upper)
    if alphas and iterations > 0:
        best = _optimize_alphas(rest, fb, A, act_d, alphas, best, best_alphas, iterations, lr)
    if torch.is_grad_enabled():
        # Differentiable recomputation with the optimized slopes (for training).
        val = _concretize_rows(rest, fb, A, act, {k: a.detach() for k, a in best_alphas.items()})
        base = _concretize_rows(rest, fb, A, act)
        best = torch.maximum(val, base)
    return best[:, :m], (-best[:, m:] if upper else None)
