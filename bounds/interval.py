"""Interval bound propagation (IBP).

For every layer output z_k we compute elementwise l_k <= z_k(x') <= u_k over
the perturbation set. Affine layers use the center/radius form
(W mid + b, |W| rad); monotone activations (ReLU, Tanh) map the interval
endpoints. Leading reshapes and normalizations are folded into the ball, and
the first affine layer is bounded exactly on the ball itself (dual norm for
l_2 / l_1: W_i x + b -/+ ||W_i * eps||_q), which is the tightest interval of a
single affine map. With a specification matrix C the last Linear layer is
merged with C (W' = C W) before propagation, as auto_LiRPA does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bounds.graph import Layer
from bounds.perturbation import LpBall

Interval = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- folding
def fold_input(layers: list[Layer], ball: LpBall) -> tuple[LpBall, list[Layer]]:
    """Absorb leading Identity / Flatten / Normalize layers into the ball.

    Normalize is an elementwise bijection with positive scale, so it maps the
    l_p ellipsoid {||(x'-x)/eps||_p <= 1} ∩ [lo, up] exactly onto
    {||(y'-y)/(eps/s)||_p <= 1} ∩ [(lo-mu)/s, (up-mu)/s]; Flatten reshapes it.
    """
    i = 0
    c, e, lo, up = ball.center, ball.eps_full(), ball.lower, ball.upper
    while i < len(layers) and layers[i].kind in ("identity", "flatten", "normalize"):
        layer = layers[i]
        if layer.kind == "flatten":
            B = c.shape[0]
            c = c.reshape(B, -1)
            e = e.reshape(B, -1)
            lo = None if lo is None else lo.expand(ball.center.shape).reshape(B, -1)
            up = None if up is None else up.expand(ball.center.shape).reshape(B, -1)
        elif layer.kind == "normalize":
            mu, s = layer.module.mean, layer.module.std
            c = (c - mu) / s
            e = e / s
            lo = None if lo is None else (lo - mu) / s
            up = None if up is None else (up - mu) / s
        i += 1
        ball = LpBall.trusted(c, e, ball.norm, lo, up)
    return ball, layers[i:]


# --------------------------------------------------------------------------- affine maps
def affine(layer: Layer, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Apply the affine layer (optionally without its bias)."""
    m = layer.module
    if layer.kind == "linear":
        return F.linear(x, m.weight, m.bias if bias else None)
    if layer.kind == "conv":
        return F.conv2d(x, m.weight, m.bias if bias else None, m.stride, m.padding)
    if layer.kind == "normalize":
        return (x - m.mean) / m.std if bias else x / m.std
    raise AssertionError(layer.kind)


def abs_affine(layer: Layer, r: torch.Tensor) -> torch.Tensor:
    """|W| r for an affine layer (no bias)."""
    m = layer.module
    if layer.kind == "linear":
        return F.linear(r, m.weight.abs())
    if layer.kind == "conv":
        return F.conv2d(r, m.weight.abs(), None, m.stride, m.padding)
    if layer.kind == "normalize":
        return r / m.std
    raise AssertionError(layer.kind)


def interval_affine(layer: Layer, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """IBP through an affine layer: [W mid + b -/+ |W| rad]."""
    m = layer.module
    if layer.kind == "linear" and lo.dim() == 2:
        # the 1/2 of mid and rad folded into the GEMMs: fewer elementwise passes
        W = m.weight
        s, t = up + lo, up - lo
        c = torch.addmm(m.bias, s, W.t(), alpha=0.5) if m.bias is not None else (s @ W.t()) * 0.5
        d = t @ W.abs().t()
        return torch.sub(c, d, alpha=0.5), torch.add(c, d, alpha=0.5)
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = affine(layer, mid)
    d = abs_affine(layer, rad)
    return c - d, c + d


def affine_on_ball(layer: Layer, ball: LpBall) -> Interval:
    """Exact elementwise bounds of W x' + b over the ball (first affine layer)."""
    xl, xu = ball.box()
    box_l, box_u = interval_affine(layer, xl, xu)
    if ball.norm == float("inf"):
        return box_l, box_u
    m = layer.module
    c = affine(layer, ball.center)
    e = ball.eps_full()
    if ball.norm == 2.0:
        if layer.kind == "linear":
            dev = F.linear(e * e, m.weight * m.weight)
        else:
            dev = F.conv2d(e * e, m.weight * m.weight, None, m.stride, m.padding)
        dev = dev.clamp_min(0).sqrt()
    else:  # l1 ball: dual norm is l_inf, max_j |W_ij| eps_j
        if layer.kind == "linear":
            dev = (m.weight.abs().unsqueeze(0) * e.unsqueeze(1)).amax(-1)
        else:
            k = m.kernel_size
            cols = F.unfold(e, k, padding=m.padding, stride=m.stride)  # (B, C*k*k, L)
            w = m.weight.abs().reshape(m.out_channels, -1)  # (Cout, C*k*k)
            dev = (w.unsqueeze(0).unsqueeze(-1) * cols.unsqueeze(1)).amax(2)
            dev = dev.reshape(c.shape)
    ball_l, ball_u = c - dev, c + dev
    if ball.clipped:
        return torch.maximum(ball_l, box_l), torch.minimum(ball_u, box_u)
    return ball_l, ball_u


def interval_activation(layer: Layer, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """Monotone activations map interval endpoints; reshapes reshape them."""
    if layer.kind == "relu":
        return lo.clamp_min(0), up.clamp_min(0)
    if layer.kind == "tanh":
        return torch.tanh(lo), torch.tanh(up)
    if layer.kind == "flatten":
        return lo.flatten(1), up.flatten(1)
    if layer.kind == "identity":
        return lo, up
    raise AssertionError(layer.kind)


def apply_spec_interval(C: torch.Tensor, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """Bounds of C z for z in the box [lo, up]; C: (B, m, n), lo/up: (B, n)."""
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = torch.einsum("bmn,bn->bm", C, mid)
    d = torch.einsum("bmn,bn->bm", C.abs(), rad)
    return c - d, c + d


# --------------------------------------------------------------------------- IBP
def ibp(
    layers: list[Layer], ball: LpBall, C: torch.Tensor | None = None
) -> tuple[Interval, list[Interval | None]]:
    """Interval bounds of every layer output and of C f(x') (or f(x')).

    Returns ``((lb, ub), per_layer)`` where ``per_layer[k]`` is the interval of
    the output of ``layers[k]`` (None for layers folded into the ball).
    """
    ball, rest = fold_input(layers, ball)
    n_folded = len(layers) - len(rest)
    per_layer: list[Interval | None] = [None] * n_folded
    lo = up = None
    last = len(rest) - 1
    for k, layer in enumerate(rest):
        merge_spec = C is not None and k == last and layer.kind == "linear"
        if merge_spec:
            W = torch.matmul(C, layer.module.weight)  # (B, m, in)
            b = None if layer.module.bias is None else torch.matmul(C, layer.module.bias)
            if lo is None:  # the whole net is a single linear layer on the ball
                val_l = ball.concretize(W, sign=-1.0)
                val_u = ball.concretize(W, sign=1.0)
            else:
                mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
                cen = torch.einsum("bmn,bn->bm", W, mid)
                dev = torch.einsum("bmn,bn->bm", W.abs(), rad)
                val_l, val_u = cen - dev, cen + dev
            if b is not None:
                val_l, val_u = val_l + b, val_u + b
            per_layer.append((val_l, val_u))
            return (val_l, val_u), per_layer
        if lo is None:
            if layer.kind in ("linear", "conv"):
                lo, up = affine_on_ball(layer, ball)
            else:
                lo, up = ball.box()
                lo, up = interval_activation(layer, lo, up)
        elif layer.kind in ("linear", "conv", "normalize"):
            lo, up = interval_affine(layer, lo, up)
        else:
            lo, up = interval_activation(layer, lo, up)
        per_layer.append((lo, up))
    if lo is None:  # network with no layers beyond folding: output = folded input
        lo, up = ball.box()
    out_l, out_u = lo.flatten(1), up.flatten(1)
    if C is not None:
        out_l, out_u = apply_spec_interval(C, out_l, out_u)
    return (out_l, out_u), per_layer
