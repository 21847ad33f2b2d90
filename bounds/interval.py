"""Interval bound propagation (IBP).

For every layer output z_k we compute elementwise l_k <= z_k(x') <= u_k over
the perturbation set. Affine layers use the center/radius form
(W mid + b, |W| rad); monotone activations (ReLU, Tanh) map the interval
endpoints. Leading reshapes and normalizations are folded into the ball, and
the first affine layer is bounded exactly on the ball itself (dual norm for
l_2 / l_1: W_i x + b -/+ ||W_i * eps||_q), which is the tightest interval of a
single affine map. With a specification matrix C the last Linear layer is
merged with C (W' = C W) before propagation, as auto_LiRPA does. The
per-layer rules live in ``bounds.rules``.
"""

from __future__ import annotations

import torch

from bounds.graph import Layer
from bounds.perturbation import LpBall

Interval = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------- folding
def fold_input(layers: list[Layer], ball: LpBall) -> tuple[LpBall, list[Layer]]:
    """Absorb leading layers that have a ``fold`` rule (Identity / Flatten / Normalize)
    into the ball.

    Normalize is an elementwise bijection with positive scale, so it maps the
    l_p ellipsoid {||(x'-x)/eps||_p <= 1} ∩ [lo, up] exactly onto
    {||(y'-y)/(eps/s)||_p <= 1} ∩ [(lo-mu)/s, (up-mu)/s]; Flatten reshapes it.
    """
    i = 0
    c, e, lo, up = ball.center, ball.eps_full(), ball.lower, ball.upper
    while i < len(layers) and layers[i].rule.fold is not None:
        c, e, lo, up = layers[i].rule.fold(layers[i], c, e, lo, up)
        i += 1
        ball = LpBall.trusted(c, e, ball.norm, lo, up)
    return ball, layers[i:]


# --------------------------------------------------------------------------- first layer
def affine_on_ball(layer: Layer, ball: LpBall) -> Interval:
    """Exact elementwise bounds of W x' + b over the ball (first affine layer, whose rule
    has ``on_ball``): the box bound for l_inf, else the dual-norm bound
    W x + b -/+ ||W_i * eps||_q, intersected with the box bound when clipped."""
    xl, xu = ball.box()
    box_l, box_u = layer.rule.ibp(layer, xl, xu)
    if ball.norm == float("inf"):
        return box_l, box_u
    c, dev = layer.rule.on_ball(layer, ball)
    ball_l, ball_u = c - dev, c + dev
    if ball.clipped:
        return torch.maximum(ball_l, box_l), torch.minimum(ball_u, box_u)
    return ball_l, ball_u


def apply_spec_interval(C: torch.Tensor, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """Bounds of C z for z in the box [lo, up]; C: (B, m, n), lo/up: (B, n)."""
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = torch.einsum("bmn,bn->bm", C, mid)
    d = torch.einsum("bmn,bn->bm", C.abs(), rad)
    return c - d, c + d


def _spec_weight(layer: Layer, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(C W, C b) of a Linear layer followed by the spec C (B, m, out)."""
    m = layer.module
    return torch.matmul(C, m.weight), (None if m.bias is None else torch.matmul(C, m.bias))


def spec_linear_interval(layer: Layer, lo: torch.Tensor, up: torch.Tensor,
                         C: torch.Tensor) -> Interval:
    """Bounds of C (W z + b) for z in the box [lo, up] (B, in), with C W merged first
    (tighter than bounding W z + b and then C): [C W mid -/+ |C W| rad + C b]."""
    W, b = _spec_weight(layer, C)  # (B, m, in)
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    cen = torch.bmm(W, mid.unsqueeze(-1)).squeeze(-1)
    dev = torch.bmm(W.abs(), rad.unsqueeze(-1)).squeeze(-1)
    val_l, val_u = cen - dev, cen + dev
    return (val_l + b, val_u + b) if b is not None else (val_l, val_u)


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
        if C is not None and k == last and layer.kind == "linear" and lo is not None:
            out = spec_linear_interval(layer, lo, up, C)
            per_layer.append(out)
            return out, per_layer
        if C is not None and k == last and layer.kind == "linear":
            # the whole net is a single linear layer on the ball: exact
            W, b = _spec_weight(layer, C)
            val_l, val_u = ball.concretize(W, sign=-1.0), ball.concretize(W, sign=1.0)
            out = (val_l + b, val_u + b) if b is not None else (val_l, val_u)
            per_layer.append(out)
            return out, per_layer
        if lo is None and layer.rule.on_ball is not None:
            lo, up = affine_on_ball(layer, ball)
        elif lo is None:
            lo, up = layer.rule.ibp(layer, *ball.box())
        else:
            lo, up = layer.rule.ibp(layer, lo, up)
        per_layer.append((lo, up))
    if lo is None:  # network with no layers beyond folding: output = folded input
        lo, up = ball.box()
    out_l, out_u = lo.flatten(1), up.flatten(1)
    if C is not None:
        out_l, out_u = apply_spec_interval(C, out_l, out_u)
    return (out_l, out_u), per_layer
