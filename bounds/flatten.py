"""Networks as flat layer lists and as dense affine chains, for every engine in ``bounds``.

- ``flatten_modules``: the layers of a network in order (``bounded_form()`` used,
  nested Sequentials flattened); what the bound engines propagate.
- ``leaf_modules``: the leaf layers of a (nested) Sequential, taken as is.
- ``unroll_affine`` / ``affine_chain``: affine layers as dense float64
  matrices, and a network as A_L o act o ... o act o A_0 (exact MILP/LP,
  LipSDP).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from bounds.layers import Normalize


def flatten_modules(net: nn.Module) -> list[nn.Module]:
    """The layers of ``net`` in order (``bounded_form()`` used, nested Sequentials flattened)."""
    if hasattr(net, "bounded_form") and not isinstance(net, nn.Sequential):
        net = net.bounded_form()
    if isinstance(net, nn.Sequential):
        return [leaf for m in net for leaf in flatten_modules(m)]
    return [net]


def leaf_modules(net: nn.Module) -> list[nn.Module]:
    """Leaf layers of a (nested) Sequential, in order."""
    if isinstance(net, nn.Sequential):
        return [leaf for m in net for leaf in leaf_modules(m)]
    return [net]


def unroll_affine(module: nn.Module, in_shape: tuple[int, ...], max_size: int = 2**24):
    """Affine layer as a dense float64 matrix: flat(module(x)) = W flat(x) + b."""
    if isinstance(module, nn.Linear) and len(in_shape) == 1:
        W = module.weight.detach().cpu().double()
        b = (module.bias.detach().cpu().double() if module.bias is not None
             else torch.zeros(W.shape[0], dtype=W.dtype))
        return W, b, (W.shape[0],)
    n = int(np.prod(in_shape))
    m = copy.deepcopy(module).cpu().double().eval()
    with torch.no_grad():
        zero = m(torch.zeros((1, *in_shape), dtype=torch.float64))
        out_shape = tuple(zero.shape[1:])
        if n * zero[0].numel() > max_size:
            raise ValueError(
                f"{type(module).__name__}: unrolled matrix of size {zero[0].numel()} x {n} is too "
                "large"
            )
        cols = m(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)) - zero
    return cols.reshape(n, -1).T.contiguous(), zero.reshape(-1), out_shape


def is_affine(m: nn.Module) -> bool:
    """Linear, Conv1d, Conv2d or Normalize: a layer computing W x + b."""
    return isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, Normalize))


def affine_chain(net: nn.Module, in_shape: tuple[int, ...], acts: tuple[type, ...], who: str):
    """Write net as A_L o act o ... o act o A_0 (A_k affine, dense float64).

    Returns (Ws, bs, act_modules): len(Ws) = len(act_modules) + 1. Consecutive
    affine layers are composed; Flatten/Identity/Dropout(eval) are dropped.
    Raises ValueError naming any other layer.
    """
    Ws: list[torch.Tensor] = []
    bs: list[torch.Tensor] = []
    act_mods: list[nn.Module] = []
    shape = tuple(in_shape)
    n = int(np.prod(shape))
    W = torch.eye(n, dtype=torch.float64)
    b = torch.zeros(n, dtype=torch.float64)
    for m in leaf_modules(net):
        if isinstance(m, nn.Dropout) and m.training and m.p > 0:
            raise ValueError(f"{who}: Dropout in training mode is not deterministic; call eval()")
        if isinstance(m, (nn.Identity, nn.Dropout)):
            continue
        if isinstance(m, nn.Flatten):
            shape = (int(np.prod(shape)),)
            continue
        if is_affine(m):
            Wm, bm, shape = unroll_affine(m, shape)
            W, b = Wm @ W, Wm @ b + bm
            continue
        if isinstance(m, acts):
            Ws.append(W)
            bs.append(b)
            act_mods.append(m)
            k = int(np.prod(shape))
            W = torch.eye(k, dtype=torch.float64)
            b = torch.zeros(k, dtype=torch.float64)
            continue
        raise ValueError(
            f"{who}: unsupported layer {type(m).__name__}; supported: Linear, Conv1d/Conv2d, "
            f"Normalize, Flatten, Identity, Dropout(eval) and "
            f"{', '.join(a.__name__ for a in acts)}"
        )
    Ws.append(W)
    bs.append(b)
    return Ws, bs, act_mods
