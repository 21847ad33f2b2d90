"""auto_LiRPA backend: the same contract as the native engine, for any graph
auto_LiRPA can trace.

Methods map to auto_LiRPA's: ibp -> "IBP", crown-ibp -> "CROWN-IBP",
crown -> "CROWN" (backward), alpha-crown -> "CROWN-Optimized".
The domain clip is passed as x_L / x_U for l_inf. auto_LiRPA 0.3 ignores
x_L / x_U for l_2 / l_1 balls, so there we bound the ball and the clipped box
(as an l_inf set) separately and return the tighter of the two (both sound).

Bounded modules are cached per (network, input shape) and re-synchronized with
the network's current weights on every call. Gradients flow to auto_LiRPA's
own copy of the parameters, not to ``net``'s: train with the native backend.
"""

from __future__ import annotations

import contextlib
import io
import logging
import weakref

import torch
from torch import nn

from bounds.flatten import flatten_modules
from bounds.graph import UnsupportedLayerError, check_input
from bounds.layers import Normalize
from bounds.lirpa_compat import import_auto_lirpa
from bounds.perturbation import LpBall

METHODS = {
    "ibp": "IBP",
    "crown-ibp": "CROWN-IBP",
    "crown": "CROWN",
    "alpha-crown": "CROWN-Optimized",
}

# auto_LiRPA 0.3's sparse *alpha* bookkeeping crashes on CNNs under torch 2.x
# (shape mismatch in BoundRelu._backward_relaxation); dense alphas are exact too.
# Sparse intermediate bounds stay on (the default): CROWN only for neurons that
# IBP finds unstable, which the native engine reproduces.
_BOUND_OPTS = {
    "sparse_features_alpha": False,
    "sparse_spec_alpha": False,
}

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _bounded_module(net: nn.Module, example: torch.Tensor):
    al = import_auto_lirpa()
    original = net
    net = lirpa_form(net, tuple(example.shape[1:]))
    per_net = _CACHE.setdefault(original, {})
    key = tuple(example.shape[1:])
    bm = per_net.get(key)
    if bm is None:
        with quiet_lirpa() as messages:
            try:
                bm = al.BoundedModule(
                    net, example[:1], bound_opts=_BOUND_OPTS, device=str(example.device),
                    verbose=False,
                )
            except NotImplementedError as exc:
                ops = sorted({m.split("Name: ", 1)[1].split(",")[0]
                              for m in messages if m.startswith("Name: ")})
                what = f"operations it does not support: {', '.join(ops)}" if ops else str(exc)
                raise UnsupportedLayerError(
                    f"auto_LiRPA cannot bound this network, which uses {what}"
                ) from None
        per_net[key] = bm
    else:
        bm.load_state_dict(net.state_dict())
    return bm


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def quiet_lirpa():
    """Keep auto_LiRPA's log records and prints off stdout/stderr; yields the messages.

    auto_LiRPA logs "ERROR ... unsupported operation" lines (to stdout, through
    the root logger) before raising, and prints progress notes; both are
    captured here and the caller raises one clear error instead. stdout is
    redirected while the block runs (process-wide, as ``contextlib`` does).
    """
    messages: list[str] = []
    logger = logging.getLogger("auto_LiRPA")
    handler = _ListHandler(messages)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        messages.extend(line for line in out.getvalue().splitlines() if line.strip())


def _as_module(net: nn.Module) -> nn.Module:
    if hasattr(net, "bounded_form") and not isinstance(net, nn.Sequential):
        return net.bounded_form()
    return net


def _normalize_as_affine(m: Normalize, in_shape: tuple[int, ...]) -> nn.Module:
    """An exactly equivalent Linear / 1x1 Conv2d for a Normalize layer.

    auto_LiRPA 0.3 on torch 2.x crashes in CROWN on Sub/Div by a constant, and
    its IBP treats an l_2 ball as unchanged through them (unsound), so we hand
    it an affine layer it bounds correctly.
    """
    mean = m.mean.expand(in_shape) if len(in_shape) == 1 else m.mean
    std = m.std.expand(in_shape) if len(in_shape) == 1 else m.std
    if len(in_shape) == 1:
        n = in_shape[0]
        lin = nn.Linear(n, n).to(m.std)
        with torch.no_grad():
            lin.weight.copy_(torch.diag(1.0 / std))
            lin.bias.copy_(-mean / std)
        return lin
    c = in_shape[0]
    if len(in_shape) == 3 and m.mean.numel() in (1, c) and m.std.numel() in (1, c):
        conv = nn.Conv2d(c, c, 1).to(m.std)
        mu = m.mean.reshape(-1).expand(c)
        sd = m.std.reshape(-1).expand(c)
        with torch.no_grad():
            conv.weight.copy_(torch.diag(1.0 / sd).reshape(c, c, 1, 1))
            conv.bias.copy_(-mu / sd)
        return conv
    raise ValueError(
        "lirpa backend: Normalize with per-pixel statistics on image inputs is not supported; "
        "use backend='native'"
    )


def lirpa_form(net: nn.Module, in_shape: tuple[int, ...]) -> nn.Module:
    """``net`` with every bounds.Normalize replaced by an equivalent affine layer."""
    net = _as_module(net)
    if isinstance(net, nn.Sequential):
        check_input(flatten_modules(net), in_shape)
    if not isinstance(net, nn.Sequential) or not any(
        isinstance(m, Normalize) for m in net.modules()
    ):
        return net
    from bounds.graph import parse

    layers = parse(net, in_shape)
    mods = [
        _normalize_as_affine(layer.module, layer.in_shape)
        if isinstance(layer.module, Normalize)
        else layer.module
        for layer in layers
    ]
    return nn.Sequential(*mods)


def compute_lirpa(
    net: nn.Module,
    ball: LpBall,
    method: str,
    C: torch.Tensor | None = None,
    alpha_iterations: int = 20,
    bound_upper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of C f(x') over ``ball`` computed by auto_LiRPA."""
    al = import_auto_lirpa()
    from auto_LiRPA.perturbations import PerturbationLpNorm

    if ball.eps.numel() > 1 and ball.norm != float("inf"):
        raise ValueError(
            "the lirpa backend supports per-dimension eps only for the l_inf norm; "
            "use backend='native'"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    x = ball.center
    bm = _bounded_module(net, x)
    if method == "alpha-crown":
        bm.set_bound_opts(
            {"optimize_bound_args": {"iteration": alpha_iterations, "lr_alpha": 0.25}}
        )

    def run(norm: float, eps, x_L, x_U):
        ptb = PerturbationLpNorm(norm=norm, eps=eps, x_L=x_L, x_U=x_U)
        bx = al.BoundedTensor(x, ptb)
        if method == "alpha-crown":
            # CROWN-Optimized in auto_LiRPA 0.3 needs one call per side, and autograd
            # (it optimizes the slopes by gradient ascent even under torch.no_grad()).
            with torch.enable_grad(), quiet_lirpa():
                lb, _ = bm.compute_bounds(x=(bx,), C=C, method=METHODS[method], bound_upper=False)
                ub = None
                if bound_upper:
                    _, ub = bm.compute_bounds(
                        x=(bx,), C=C, method=METHODS[method], bound_lower=False
                    )
            if not torch.is_grad_enabled():
                lb = lb.detach()
                ub = None if ub is None else ub.detach()
            return lb, ub
        with quiet_lirpa():
            return bm.compute_bounds(x=(bx,), C=C, method=METHODS[method],
                                     bound_upper=bound_upper)

    xl, xu = ball.box()
    if ball.norm == float("inf"):
        eps = float(ball.eps.max()) if ball.eps.numel() > 0 else 0.0
        lb, ub = run(float("inf"), eps, xl, xu)
    else:
        eps = float(ball.eps.reshape(-1)[0]) if ball.eps.numel() else 0.0
        lb, ub = run(ball.norm, eps, None, None)
        if ball.clipped:
            lb2, ub2 = run(float("inf"), eps, xl, xu)
            lb = torch.maximum(lb, lb2)
            ub = None if ub is None else torch.minimum(ub, ub2)
    B = x.shape[0]
    return lb.reshape(B, -1), (None if ub is None else ub.reshape(B, -1))
