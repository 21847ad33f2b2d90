"""Layer rules: one entry per layer kind the native engine bounds.

Each :class:`LayerRule` says which modules it matches and how bounds pass
through them:

- ``ibp(layer, lo, up)``: the interval of the output given the interval of the
  input (IBP);
- ``backward(layer, A, bias, bounds, alpha)``: a CROWN backward step, turning
  rows A of a lower bound A z_out + bias into rows on the layer's input
  (activations substitute their linear relaxation on the pre-activation
  ``bounds``; ``alpha`` are alpha-CROWN's ReLU lower slopes);
- optional: ``check`` (extra support conditions), ``fold`` (an input layer
  absorbed into the ball), ``on_ball`` (exact bounds of the first affine layer
  on an l_2 / l_1 ball), ``fused`` (backward through the activation and the
  Linear before it with batch-shared rows), ``window`` (backward on a spatial
  window of a conv stack).

To add a layer kind: write its rule functions here, add one ``LayerRule`` to
``RULES``. ``graph.parse`` then accepts the module, and IBP, CROWN, CROWN-IBP
and alpha-CROWN use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bounds.layers import Normalize

Interval = tuple[torch.Tensor, torch.Tensor]

_TANH_SAFETY = 1e-6
_HINT = 'use backend="lirpa" (auto_LiRPA) for general graphs'


class UnsupportedLayerError(TypeError):
    """A layer the native backend cannot bound."""


# --------------------------------------------------------------------------- relaxations
class PreBounds(tuple):
    """Pre-activation bounds (lower, upper), optionally with ``ref``: other sound (wider)
    bounds (l', u') of the same neurons that choose the default ReLU lower slope
    (1 if u' > -l' else 0). Any slope in [0, 1] is sound; CROWN's intersected
    intermediate bounds keep the slope that the un-intersected CROWN bound would
    pick, so that tightening the chord never changes the lower line's choice."""

    ref: Interval | None

    def __new__(cls, lower: torch.Tensor, upper: torch.Tensor, ref: Interval | None = None):
        obj = super().__new__(cls, (lower, upper))
        obj.ref = ref
        return obj


def slope_ref(bounds) -> Interval | None:
    """The ``ref`` bounds of a :class:`PreBounds` (None for a plain pair)."""
    return getattr(bounds, "ref", None)


def relu_relaxation(
    l: torch.Tensor, u: torch.Tensor, ref: Interval | None = None
) -> tuple[torch.Tensor, ...]:
    """(upper slope, upper intercept, default lower slope) of ReLU on [l, u]; the lower
    slope is 1 if u > -l else 0, read on ``ref`` = (l', u') when given."""
    lr = l.clamp(max=0)
    ur = u.clamp(min=0)
    ur = torch.maximum(ur, lr + 1e-8)
    up_d = ur / (ur - lr)
    up_b = -lr * up_d
    if ref is None:
        lo_d = (up_d > 0.5).to(up_d.dtype)
    else:
        lo_d = (ref[1] > -ref[0]).to(up_d.dtype)
    return up_d, up_b, lo_d


def tanh_relaxation(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(slope, lower intercept, upper intercept) of parallel lines around tanh on [l, u]."""
    width = u - l
    tl, tu = torch.tanh(l), torch.tanh(u)
    wide = width > 1e-6
    chord = (tu - tl) / torch.where(wide, width, torch.ones_like(width))
    deriv = 1 - torch.tanh((l + u) / 2) ** 2
    s = torch.where(wide, chord, deriv).clamp(1e-20, 1.0)
    # the stationary points +-xs of g(x) = tanh(x) - s x; detached: g'(xs) = 0, so the
    # bounds' gradient does not depend on them, and acosh' is infinite at s = 1 (narrow
    # boxes near 0), which made CROWN's gradient NaN
    xs = torch.acosh((1 / s.sqrt()).clamp_min(1.0)).detach()
    g_l = tl - s * l
    g_u = tu - s * u
    lo_b = torch.minimum(g_l, g_u)
    up_b = torch.maximum(g_l, g_u)
    for x in (xs, -xs):
        inside = (x >= l) & (x <= u)
        gx = torch.tanh(x) - s * x
        lo_b = torch.where(inside, torch.minimum(lo_b, gx), lo_b)
        up_b = torch.where(inside, torch.maximum(up_b, gx), up_b)
    return s, lo_b - _TANH_SAFETY, up_b + _TANH_SAFETY


def relu_alpha_slope(alpha: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """ReLU lower slope: alpha in [0, 1] on unstable neurons, exact on stable ones."""
    active = (l >= 0).to(alpha.dtype)
    unstable = ((l < 0) & (u > 0)).to(alpha.dtype)
    return alpha.clamp(0, 1) * unstable + active


def sum_rest(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension after the first two: (B, m, ...) -> (B, m)."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def crop(t: torch.Tensor, oh: int, ow: int, h: int, w: int) -> torch.Tensor:
    """The (h, w) spatial window of ``t`` whose top-left corner is (oh, ow)."""
    return t[..., oh : oh + h, ow : ow + w]


# --------------------------------------------------------------------------- IBP rules
def _ibp_linear(layer, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """[W mid + b -/+ |W| rad]."""
    m = layer.module
    if lo.dim() == 2:
        # the 1/2 of mid and rad folded into the GEMMs: fewer elementwise passes
        W = m.weight
        s, t = up + lo, up - lo
        c = torch.addmm(m.bias, s, W.t(), alpha=0.5) if m.bias is not None else (s @ W.t()) * 0.5
        d = t @ W.abs().t()
        return torch.sub(c, d, alpha=0.5), torch.add(c, d, alpha=0.5)
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = F.linear(mid, m.weight, m.bias)
    d = F.linear(rad, m.weight.abs())
    return c - d, c + d


def _ibp_conv(layer, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """[conv(mid) -/+ conv_|W|(rad)]."""
    m = layer.module
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = F.conv2d(mid, m.weight, m.bias, m.stride, m.padding)
    d = F.conv2d(rad, m.weight.abs(), None, m.stride, m.padding)
    return c - d, c + d


def _ibp_normalize(layer, lo: torch.Tensor, up: torch.Tensor) -> Interval:
    """[(mid - mu) / s -/+ rad / s] (s > 0)."""
    m = layer.module
    mid, rad = (up + lo) * 0.5, (up - lo) * 0.5
    c = (mid - m.mean) / m.std
    d = rad / m.std
    return c - d, c + d


def _ibp_relu(layer, lo, up) -> Interval:
    return lo.clamp_min(0), up.clamp_min(0)


def _ibp_tanh(layer, lo, up) -> Interval:
    return torch.tanh(lo), torch.tanh(up)


def _ibp_flatten(layer, lo, up) -> Interval:
    return lo.flatten(1), up.flatten(1)


def _ibp_identity(layer, lo, up) -> Interval:
    return lo, up


# --------------------------------------------------------------------------- first affine layer
def _on_ball_linear(layer, ball) -> tuple[torch.Tensor, torch.Tensor]:
    """(W x + b, ||W_i * eps||_q) on an l_2 / l_1 ball (dual norms l_2 / l_inf)."""
    m = layer.module
    c = F.linear(ball.center, m.weight, m.bias)
    e = ball.eps_full()
    if ball.norm == 2.0:
        return c, F.linear(e * e, m.weight * m.weight).clamp_min(0).sqrt()
    return c, (m.weight.abs().unsqueeze(0) * e.unsqueeze(1)).amax(-1)


def _on_ball_conv(layer, ball) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for a convolution (the dual norm of each output's receptive field)."""
    m = layer.module
    c = F.conv2d(ball.center, m.weight, m.bias, m.stride, m.padding)
    e = ball.eps_full()
    if ball.norm == 2.0:
        dev = F.conv2d(e * e, m.weight * m.weight, None, m.stride, m.padding)
        return c, dev.clamp_min(0).sqrt()
    cols = F.unfold(e, m.kernel_size, padding=m.padding, stride=m.stride)  # (B, C*k*k, L)
    w = m.weight.abs().reshape(m.out_channels, -1)  # (Cout, C*k*k)
    dev = (w.unsqueeze(0).unsqueeze(-1) * cols.unsqueeze(1)).amax(2)
    return c, dev.reshape(c.shape)


# --------------------------------------------------------------------------- folding into the ball
def _fold_identity(layer, c, e, lo, up):
    return c, e, lo, up


def _fold_flatten(layer, c, e, lo, up):
    shape, B = c.shape, c.shape[0]
    lo = None if lo is None else lo.expand(shape).reshape(B, -1)
    up = None if up is None else up.expand(shape).reshape(B, -1)
    return c.reshape(B, -1), e.reshape(B, -1), lo, up


def _fold_normalize(layer, c, e, lo, up):
    """An elementwise bijection with positive scale maps the ball onto a ball."""
    mu, s = layer.module.mean, layer.module.std
    lo = None if lo is None else (lo - mu) / s
    up = None if up is None else (up - mu) / s
    return (c - mu) / s, e / s, lo, up


# --------------------------------------------------------------------------- backward rules
def _back_linear(layer, A, bias, bounds=None, alpha=None):
    m = layer.module
    if m.bias is not None:
        bias = bias + torch.matmul(A, m.bias)
    return torch.matmul(A, m.weight), bias


def _back_conv(layer, A, bias, bounds=None, alpha=None):
    """The transposed convolution, with the output padding that restores the input size."""
    m = layer.module
    Bd, rows = A.shape[0], A.shape[1]
    if m.bias is not None:
        bias = bias + (A.sum((-1, -2)) * m.bias).sum(-1)
    c_out, h_out, w_out = layer.out_shape
    c_in, h_in, w_in = layer.in_shape
    sh, sw = m.stride
    ph, pw = m.padding
    kh, kw = m.kernel_size
    op = (
        h_in - ((h_out - 1) * sh - 2 * ph + kh),
        w_in - ((w_out - 1) * sw - 2 * pw + kw),
    )
    flat = A.reshape(Bd * rows, c_out, h_out, w_out)
    out = F.conv_transpose2d(flat, m.weight, None, m.stride, m.padding, op)
    return out.reshape(Bd, rows, c_in, h_in, w_in), bias


def _back_normalize(layer, A, bias, bounds=None, alpha=None):
    mu, s = layer.module.mean, layer.module.std
    bias = bias - sum_rest(A * (mu / s).expand(layer.in_shape))
    return A / s, bias


def _back_flatten(layer, A, bias, bounds=None, alpha=None):
    return A.reshape(A.shape[0], A.shape[1], *layer.in_shape), bias


def _back_identity(layer, A, bias, bounds=None, alpha=None):
    return A, bias


def _back_relu(layer, A, bias, bounds, alpha=None):
    """Lower-bound rows of A relu(y): lower line on positive, chord on negative entries."""
    l, u = bounds[0].unsqueeze(1), bounds[1].unsqueeze(1)
    ref = slope_ref(bounds)
    ref = None if ref is None else (ref[0].unsqueeze(1), ref[1].unsqueeze(1))
    Ap, An = A.clamp(min=0), A.clamp(max=0)
    up_d, up_b, lo_d = relu_relaxation(l, u, ref)
    if alpha is not None:
        lo_d = relu_alpha_slope(alpha, l, u)
    return Ap * lo_d + An * up_d, bias + sum_rest(An * up_b)


def _back_tanh(layer, A, bias, bounds, alpha=None):
    """Lower-bound rows of A tanh(y) with the two parallel lines of ``tanh_relaxation``."""
    l, u = bounds[0].unsqueeze(1), bounds[1].unsqueeze(1)
    Ap, An = A.clamp(min=0), A.clamp(max=0)
    s, lo_b, up_b = tanh_relaxation(l, u)
    return A * s, bias + sum_rest(Ap * lo_b + An * up_b)


# --------------------------------------------------------------------------- fused with a Linear
def shared_matmul(A0: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """(r, n) @ (B, n, k) -> (B, r, k) as one GEMM."""
    B, n, kk = M.shape
    out = A0 @ M.permute(1, 0, 2).reshape(n, B * kk)
    return out.reshape(A0.shape[0], B, kk).permute(1, 0, 2)


def _fused_relu(lin: nn.Linear, bounds: Interval, A0: torch.Tensor, bias: torch.Tensor):
    """A0 D W for ReLU slopes D: Ap D_lo + An D_up = A0 D_lo + An (D_up - D_lo); D_up - D_lo
    and the upper intercept vanish off the neurons unstable in some batch element."""
    W, b = lin.weight, lin.bias
    l, u = bounds
    An = A0.clamp(max=0)
    up_d, up_b, lo_d = relu_relaxation(l, u, slope_ref(bounds))
    delta = up_d - lo_d
    idx = ((delta != 0) | (up_b != 0)).any(0).nonzero().flatten()
    new_A = shared_matmul(A0, lo_d.unsqueeze(-1) * W)
    if b is not None:
        bias = bias + (A0 @ (lo_d * b).T).T
    if idx.numel():
        An_i = An[:, idx]
        d_i = delta[:, idx]
        new_A = new_A + shared_matmul(An_i, d_i.unsqueeze(-1) * W[idx])
        bias = bias + (An_i @ up_b[:, idx].T).T
        if b is not None:
            bias = bias + (An_i @ (d_i * b[idx]).T).T
    return new_A, bias


def _fused_tanh(lin: nn.Linear, bounds: Interval, A0: torch.Tensor, bias: torch.Tensor):
    """A0 diag(s) W for the tanh chord slopes s, intercepts by the sign of A0."""
    W, b = lin.weight, lin.bias
    l, u = bounds
    Ap, An = A0.clamp(min=0), A0.clamp(max=0)
    s, lo_b, up_b = tanh_relaxation(l, u)
    new_A = shared_matmul(A0, s.unsqueeze(-1) * W)
    bias = bias + (Ap @ lo_b.T).T + (An @ up_b.T).T
    if b is not None:
        bias = bias + (A0 @ (s * b).T).T
    return new_A, bias


# --------------------------------------------------------------------------- spatial windows
def _window_conv(layer, A, bias, origin, bounds=None):
    """Transposed convolution of the window; entries on the zero padding are dropped."""
    m = layer.module
    oh, ow = origin
    Bd, R, C, h, w = A.shape
    if m.bias is not None:
        bias = bias + (A.sum((-1, -2)) * m.bias).sum(-1)
    out = F.conv_transpose2d(A.reshape(Bd * R, C, h, w), m.weight, None, m.stride)
    c_in, H_in, W_in = layer.in_shape
    sh = oh * m.stride[0] - m.padding[0]
    sw = ow * m.stride[1] - m.padding[1]
    h_lo, w_lo = max(0, -sh), max(0, -sw)
    h_hi = min(out.shape[-2], H_in - sh)
    w_hi = min(out.shape[-1], W_in - sw)
    out = out[:, :, h_lo:h_hi, w_lo:w_hi]
    A = out.reshape(Bd, R, c_in, out.shape[-2], out.shape[-1])
    return A, bias, (sh + h_lo, sw + w_lo)


def _window_activation(back):
    """The window rule of an elementwise activation from its backward rule."""

    def rule(layer, A, bias, origin, bounds):
        oh, ow = origin
        h, w = A.shape[-2:]
        ref = slope_ref(bounds)
        if ref is not None:
            ref = (crop(ref[0], oh, ow, h, w), crop(ref[1], oh, ow, h, w))
        window = PreBounds(crop(bounds[0], oh, ow, h, w), crop(bounds[1], oh, ow, h, w), ref)
        A, bias = back(layer, A, bias, window)
        return A, bias, origin

    return rule


def _window_normalize(layer, A, bias, origin, bounds=None):
    m = layer.module
    oh, ow = origin
    h, w = A.shape[-2:]
    mu = crop(m.mean.expand(layer.in_shape), oh, ow, h, w)
    sd = crop(m.std.expand(layer.in_shape), oh, ow, h, w)
    return A / sd, bias - sum_rest(A * (mu / sd)), origin


def _window_identity(layer, A, bias, origin, bounds=None):
    return A, bias, origin


# --------------------------------------------------------------------------- support checks
def _check_conv(m: nn.Conv2d, position: int) -> None:
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"layer {position} ({m}) uses groups/dilation/non-zero padding, which the "
            f"native backend does not support; {_HINT}"
        )
    if isinstance(m.padding, str):
        raise UnsupportedLayerError(
            f"layer {position} ({m}) uses string padding; give explicit padding or {_HINT}"
        )


def _check_flatten(m: nn.Flatten, position: int) -> None:
    if m.start_dim != 1 or m.end_dim != -1:
        raise UnsupportedLayerError(
            f"layer {position} ({m}): only Flatten(start_dim=1, end_dim=-1) is supported; "
            f"{_HINT}"
        )


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class LayerRule:
    """How bounds pass through one layer kind (see the module docstring).

    ``role``: "affine" (mixes coordinates: Linear, Conv2d), "elementwise" (a
    diagonal affine map), "activation" (relaxed nonlinearity) or "reshape".
    ``exact_when_stable``: the relaxation is exact on neurons whose interval
    does not cross 0 (ReLU), so CROWN refines only the unstable ones.
    """

    kind: str
    modules: tuple[type, ...]
    label: str
    role: str
    ibp: Callable
    backward: Callable
    check: Callable | None = None
    fold: Callable | None = None
    on_ball: Callable | None = None
    fused: Callable | None = None
    window: Callable | None = None
    exact_when_stable: bool = False


RULES: tuple[LayerRule, ...] = (
    LayerRule("linear", (nn.Linear,), "Linear", "affine", _ibp_linear, _back_linear,
              on_ball=_on_ball_linear),
    LayerRule("conv", (nn.Conv2d,), "Conv2d", "affine", _ibp_conv, _back_conv,
              check=_check_conv, on_ball=_on_ball_conv, window=_window_conv),
    LayerRule("relu", (nn.ReLU,), "ReLU", "activation", _ibp_relu, _back_relu,
              fused=_fused_relu, window=_window_activation(_back_relu),
              exact_when_stable=True),
    LayerRule("tanh", (nn.Tanh,), "Tanh", "activation", _ibp_tanh, _back_tanh,
              fused=_fused_tanh, window=_window_activation(_back_tanh)),
    LayerRule("flatten", (nn.Flatten,), "Flatten", "reshape", _ibp_flatten, _back_flatten,
              check=_check_flatten, fold=_fold_flatten),
    LayerRule("identity", (nn.Identity,), "Identity", "reshape", _ibp_identity,
              _back_identity, fold=_fold_identity, window=_window_identity),
    LayerRule("normalize", (Normalize,), "bounds.Normalize", "elementwise", _ibp_normalize,
              _back_normalize, fold=_fold_normalize, window=_window_normalize),
)
RULE_BY_KIND: dict[str, LayerRule] = {r.kind: r for r in RULES}
_BY_TYPE: dict[type, LayerRule | None] = {}


def find_rule(module: nn.Module) -> LayerRule | None:
    """The rule whose module classes ``module`` is an instance of (None if none)."""
    t = type(module)
    if t not in _BY_TYPE:
        _BY_TYPE[t] = next((r for r in RULES if isinstance(module, r.modules)), None)
    return _BY_TYPE[t]


def check_supported(module: nn.Module, position: int) -> LayerRule:
    """The module's rule; UnsupportedLayerError naming the layer when the native engine
    cannot bound it (no rule, or the rule's extra conditions fail)."""
    rule = find_rule(module)
    if rule is None:
        names = ", ".join(r.label for r in RULES)
        raise UnsupportedLayerError(
            f"layer {position} ({type(module).__name__}: {module}) is not supported by the "
            f"native backend (supported: {names}); {_HINT}"
        )
    if rule.check is not None:
        rule.check(module, position)
    return rule
