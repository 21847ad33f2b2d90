"""Read an ONNX network into an ``nn.Sequential`` the native bound engine can parse.

``from_onnx(path)`` walks the graph's nodes in order and turns a *chain* (one computed
tensor flowing from the single graph input to the single graph output; every other
operand a constant) into torch layers:

=====================  ==========================================================
ONNX op                torch layer
=====================  ==========================================================
Gemm                   ``nn.Linear`` (W = alpha * op(B), b = beta * C; transA = 0)
MatMul (x @ W)         ``nn.Linear`` with zero bias (W constant, 2-D)
Conv (2-D)             ``nn.Conv2d`` (symmetric pads, no auto_pad SAME_*)
Add / Sub (constant)   folded into the bias of the Linear / Conv2d just before when the
                       constant is one value per output (channel), else
                       ``bounds.Normalize`` (x - m) / 1
Mul / Div (constant)   ``bounds.Normalize`` (x - 0) / s when the factor is positive, else
                       folded into the Linear / Conv2d just before (one value per
                       output); anything else raises
Relu, Tanh, Sigmoid    ``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid`` (Sigmoid: auto_LiRPA only)
Flatten (axis 1)       ``nn.Flatten()``
Reshape                ``nn.Flatten()`` when it flattens all but the batch dimension;
                       dropped when it keeps the shape; anything else raises
Identity               dropped
=====================  ==========================================================

Constants may be initializers or ``Constant`` nodes, and computed from the chain's shape
by ``Shape``/``Gather``/``Unsqueeze``/``Squeeze``/``Concat``/``Cast``/``Slice`` (the
dynamic-batch flatten pattern torch's exporter writes). The first input dimension is the
batch. A graph that is not a chain (a residual Add of two computed tensors, two inputs or
outputs) raises :class:`OnnxImportError`, as does any other op (the message names it):
such networks can be bounded with auto_LiRPA on the original torch model instead.
Weights become float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bounds.layers import Normalize

LAYER_OPS = ("Gemm", "MatMul", "Conv", "Add", "Sub", "Mul", "Div", "Relu", "Tanh", "Sigmoid",
             "Flatten", "Reshape", "Identity")
CONST_OPS = ("Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Slice")
SUPPORTED_OPS = LAYER_OPS + CONST_OPS


class OnnxImportError(ValueError):
    """The ONNX graph cannot be converted (unsupported op, not a chain, bad attributes)."""


def from_onnx(source) -> nn.Sequential:
    """The ONNX network at ``source`` (a path or a loaded ``onnx.ModelProto``) as an
    ``nn.Sequential`` computing the same function f: (B, *in_shape) -> outputs.

    Raises FileNotFoundError for a missing file and :class:`OnnxImportError` (a
    ValueError) for an unreadable model, an unsupported op or a graph that is not a chain.
    """
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - depends on install
        raise ImportError("bounds.from_onnx needs the onnx package: pip install onnx") from e
    model = _load(onnx, source)
    graph = model.graph
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    name, in_shape = _graph_input(graph, consts)
    chain = _Chain(name, (1, *in_shape))
    for i, node in enumerate(graph.node):
        _convert_node(onnx, node, i, chain, consts)
    outs = [o.name for o in graph.output]
    if len(outs) != 1:
        raise OnnxImportError(f"the graph has {len(outs)} outputs {outs}; from_onnx needs one")
    if outs[0] != chain.name:
        raise OnnxImportError(
            f"the graph output {outs[0]!r} is not the end of the chain of layers (last "
            f"computed tensor {chain.name!r}): the graph is not a chain")
    return nn.Sequential(*chain.layers).float().eval()


# ------------------------------------------------------------------ loading
def _load(onnx, source):
    if not isinstance(source, (str, os.PathLike)):
        model = source
    else:
        if not os.path.isfile(source):
            raise FileNotFoundError(f"ONNX file {os.fspath(source)!r} does not exist")
        try:
            model = onnx.load(os.fspath(source))
        except Exception as e:  # protobuf DecodeError and friends
            raise OnnxImportError(f"{os.fspath(source)!r} is not a readable ONNX model: "
                                  f"{e}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise OnnxImportError(f"invalid ONNX model: {str(e).splitlines()[0]}") from None
    return model


def _graph_input(graph, consts: dict) -> tuple[str, tuple[int, ...]]:
    """Name and per-sample shape (without the batch dimension) of the one real input."""
    inputs = [v for v in graph.input if v.name not in consts]
    if len(inputs) != 1:
        raise OnnxImportError(f"the graph has {len(inputs)} inputs "
                              f"{[v.name for v in inputs]}; from_onnx needs exactly one")
    v = inputs[0]
    elem = v.type.tensor_type.elem_type
    if elem not in (1, 11, 10):  # FLOAT, DOUBLE, FLOAT16
        raise OnnxImportError(f"input {v.name!r} has element type {elem}; need a float type")
    dims = v.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise OnnxImportError(f"input {v.name!r} has rank {len(dims)}; from_onnx needs "
                              "(batch, *shape) with the batch dimension first")
    shape = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise OnnxImportError(f"input {v.name!r}: every dimension after the batch must "
                                  f"be a fixed size; got {d}")
        shape.append(int(d.dim_value))
    return v.name, tuple(shape)


class _Chain:
    """The computed tensor flowing through the graph: its name, shape (batch 1), and the
    layers so far."""

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name = name
        self.shape = shape
        self.layers: list[nn.Module] = []

    def push(self, modules: list[nn.Module], out: str) -> None:
        """Append ``modules`` and move the chain to tensor ``out`` (new shape by a forward
        pass of zeros)."""
        with torch.no_grad():
            x = torch.zeros(self.shape)
            for m in modules:
                x = m.float()(x)
        self.layers += modules
        self.shape = tuple(x.shape)
        self.name = out


# ------------------------------------------------------------------ dispatch
def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _convert_node(onnx, node, index: int, chain: _Chain, consts: dict) -> None:
    """Turn one node into constants or layers; OnnxImportError when it cannot."""
    op, where = node.op_type, f"node {index} ({node.op_type} {node.name!r})"
    if op not in SUPPORTED_OPS:
        raise OnnxImportError(
            f"ONNX op {op!r} ({where}) is not supported by bounds.from_onnx; supported ops: "
            f"{', '.join(SUPPORTED_OPS)}")
    if node.domain not in ("", "ai.onnx"):
        raise OnnxImportError(f"{where}: operator domain {node.domain!r} is not supported")
    ins = [n for n in node.input]
    attrs = _attrs(onnx, node)
    if op == "Shape" and ins[0] == chain.name:
        shape = np.array(chain.shape, dtype=np.int64)
        consts[node.output[0]] = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
        return
    if all(n == "" or n in consts for n in ins):
        values = [None if n == "" else consts[n] for n in ins]
        consts[node.output[0]] = _const_op(onnx, op, values, attrs, where)
        return
    computed = [n for n in ins if n != "" and n not in consts]
    if computed != [chain.name] or op in CONST_OPS:
        raise OnnxImportError(
            f"{where} takes the computed tensor(s) {computed} but the chain is at "
            f"{chain.name!r}: from_onnx handles chains only (one computed tensor flowing "
            "through the graph, every other operand constant); bound this network with "
            "auto_LiRPA (backend='lirpa') on its torch model")
    if len(node.output) != 1:
        raise OnnxImportError(f"{where} has {len(node.output)} outputs; need one")
    pos = ins.index(chain.name)
    others = [None if n == "" else consts.get(n) for n in ins]
    modules = LAYER_CONVERTERS[op](chain, pos, others, attrs, where)
    chain.push(modules, node.output[0])


# ------------------------------------------------------------------ constants
def _const_op(onnx, op: str, v: list, a: dict, where: str) -> np.ndarray:
    """Evaluate a node whose inputs are all constant (numpy)."""
    if op == "Constant":
        if "value" in a:
            return onnx.numpy_helper.to_array(a["value"])
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in a:
                return np.asarray(a[key])
        raise OnnxImportError(f"{where}: Constant without a supported value attribute")
    simple: dict[str, Callable] = {
        "Identity": lambda: v[0], "Add": lambda: v[0] + v[1], "Sub": lambda: v[0] - v[1],
        "Mul": lambda: v[0] * v[1],
        "Div": lambda: (v[0] // v[1]) if v[0].dtype.kind in "iu" else v[0] / v[1],
        "Shape": lambda: np.array(v[0].shape, dtype=np.int64),
        "Gather": lambda: np.take(v[0], v[1], axis=a.get("axis", 0)),
        "Concat": lambda: np.concatenate(v, axis=a["axis"]),
        "Cast": lambda: v[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"])),
        "Relu": lambda: np.maximum(v[0], 0), "Flatten": lambda: v[0].reshape(
            math.prod(v[0].shape[:a.get("axis", 1)]), -1),
    }
    if op in simple:
        return np.asarray(simple[op]())
    if op in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes", None if len(v) < 2 or v[1] is None else v[1].tolist())
        if op == "Squeeze":
            return np.squeeze(v[0], axis=None if axes is None else tuple(axes))
        out = v[0]
        for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Slice" and len(v) >= 3:
        return _slice(v)
    if op == "Reshape":
        return v[0].reshape(_reshape_target(v[0].shape, v[1], where))
    raise OnnxImportError(f"{where}: {op} on constant inputs is not supported by from_onnx")


def _slice(v: list) -> np.ndarray:
    data, starts, ends = v[0], v[1], v[2]
    axes = v[3] if len(v) > 3 and v[3] is not None else np.arange(len(starts))
    steps = v[4] if len(v) > 4 and v[4] is not None else np.ones(len(starts), dtype=np.int64)
    idx = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        idx[int(ax)] = slice(int(s), int(e), int(st))
    return data[tuple(idx)]


def _reshape_target(shape: tuple[int, ...], target, where: str) -> tuple[int, ...]:
    """ONNX Reshape semantics (0 copies the dimension, one -1 is inferred)."""
    t = [int(s) for s in np.asarray(target).reshape(-1)]
    t = [shape[i] if s == 0 and i < len(shape) else s for i, s in enumerate(t)]
    if t.count(-1) > 1:
        raise OnnxImportError(f"{where}: Reshape target {t} has more than one -1")
    if -1 in t:
        known = math.prod(s for s in t if s != -1)
        t[t.index(-1)] = math.prod(shape) // known if known else 0
    if math.prod(t) != math.prod(shape):
        raise OnnxImportError(f"{where}: cannot reshape {shape} to {t}")
    return tuple(t)


# ------------------------------------------------------------------ layers
def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.array(a, dtype=np.float32))


def _need_const(v, what: str, where: str) -> np.ndarray:
    if v is None:
        raise OnnxImportError(f"{where}: the {what} must be a constant (initializer)")
    return np.asarray(v, dtype=np.float64)


def _gemm(chain, pos, v, a, where) -> list[nn.Module]:
    if pos != 0 or a.get("transA", 0):
        raise OnnxImportError(f"{where}: only Gemm(x, W, b) with transA = 0 is supported")
    if len(chain.shape) != 2:
        raise OnnxImportError(f"{where}: Gemm on a tensor of shape {chain.shape}; need 2-D")
    w = _need_const(v[1], "weight B", where)
    w = w if a.get("transB", 0) else w.T  # (out, in)
    w = float(a.get("alpha", 1.0)) * w
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(_tensor(w))
        c = np.zeros(w.shape[0]) if len(v) < 3 or v[2] is None else \
            float(a.get("beta", 1.0)) * _need_const(v[2], "bias C", where)
        lin.bias.copy_(_tensor(np.broadcast_to(c, (1, w.shape[0]))[0]))
    return [lin]


def _matmul(chain, pos, v, a, where) -> list[nn.Module]:
    w = v[1 - pos]
    if pos != 0 or w is None or np.ndim(w) != 2:
        raise OnnxImportError(f"{where}: only MatMul(x, W) with a constant 2-D W is supported")
    w = np.asarray(w, dtype=np.float64)
    lin = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        lin.weight.copy_(_tensor(w.T))
        lin.bias.zero_()
    return [lin]


def _per_output(chain: _Chain, c: np.ndarray) -> np.ndarray | None:
    """``c`` as one value per output unit / channel of the last Linear / Conv2d when it
    broadcasts that way over the chain's shape (batch 1), else None."""
    last = chain.layers[-1] if chain.layers else None
    if not isinstance(last, (nn.Linear, nn.Conv2d)):
        return None
    n = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    want = (1, n) if isinstance(last, nn.Linear) else (1, n, 1, 1)
    if len(chain.shape) != len(want) or c.ndim > len(want):
        return None
    full = (1,) * (len(want) - c.ndim) + c.shape
    if any(s not in (1, w) for s, w in zip(full, want)):
        return None
    return np.broadcast_to(c.reshape(full), want).reshape(n)


def _elementwise(chain: _Chain, c: np.ndarray, where: str) -> np.ndarray:
    """``c`` broadcast to one sample's shape; error when it would broadcast the batch."""
    try:
        full = np.broadcast_to(c, chain.shape)
    except ValueError:
        raise OnnxImportError(f"{where}: constant of shape {c.shape} does not broadcast to "
                              f"the tensor shape {chain.shape}") from None
    if np.broadcast_shapes(c.shape, chain.shape) != chain.shape:
        raise OnnxImportError(f"{where}: constant of shape {c.shape} changes the shape "
                              f"{chain.shape}")
    return np.array(full[0])


def _scale_last(chain: _Chain, s: np.ndarray, shift: np.ndarray) -> None:
    """Replace the last affine layer y by s * y + shift (s, shift per output)."""
    last = chain.layers[-1]
    shape = (-1, 1) if isinstance(last, nn.Linear) else (-1, 1, 1, 1)
    with torch.no_grad():
        last.weight.mul_(_tensor(s).reshape(shape))
        if last.bias is None:
            last.bias = nn.Parameter(torch.zeros(last.weight.shape[0]))
        last.bias.copy_(last.bias * _tensor(s) + _tensor(shift))


def _add_sub(sign_x: float, sign_c: float):
    """Converter for y = sign_x * x + sign_c * c (Add: (1, 1); Sub(x, c): (1, -1);
    Sub(c, x): (-1, 1))."""
    def convert(chain, pos, v, a, where) -> list[nn.Module]:
        c = _need_const(v[1 - pos], "other operand", where)
        sx = sign_x if pos == 0 else sign_c  # Sub(c, x): x has sign -1
        sc = sign_c if pos == 0 else sign_x
        per = _per_output(chain, c)
        if per is not None:
            _scale_last(chain, np.full(per.shape, sx), sc * per)
            return []
        if sx < 0:
            raise OnnxImportError(f"{where}: constant - x is supported only right after a "
                                  "Gemm / MatMul / Conv with a constant per output")
        return [Normalize(_tensor(-sc * _elementwise(chain, c, where)), 1.0)]
    return convert


def _mul_div(divide: bool):
    def convert(chain, pos, v, a, where) -> list[nn.Module]:
        if divide and pos != 0:
            raise OnnxImportError(f"{where}: constant / x is not supported (not affine)")
        c = _need_const(v[1 - pos], "other operand", where)
        if (c > 0).all() and np.isfinite(c).all():
            std = c if divide else 1.0 / c
            return [Normalize(torch.zeros(()), _tensor(_elementwise(chain, std, where)))]
        per = _per_output(chain, c)
        if per is None or (divide and (per == 0).any()):
            raise OnnxImportError(
                f"{where}: {'Div' if divide else 'Mul'} by a constant with non-positive "
                "entries is supported only right after a Gemm / MatMul / Conv, with one "
                "non-zero value per output")
        _scale_last(chain, 1.0 / per if divide else per, np.zeros(per.shape))
        return []
    return convert


def _conv(chain, pos, v, a, where) -> list[nn.Module]:
    w = _need_const(v[1] if pos == 0 else None, "weight", where)
    if w.ndim != 4 or len(chain.shape) != 4:
        raise OnnxImportError(f"{where}: only 2-D convolutions are supported")
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise OnnxImportError(f"{where}: auto_pad {a['auto_pad']!r} is not supported; "
                              "give explicit pads")
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise OnnxImportError(f"{where}: asymmetric pads {pads} are not supported")
    group = int(a.get("group", 1))
    conv = nn.Conv2d(w.shape[1] * group, w.shape[0], tuple(w.shape[2:]),
                     stride=tuple(a.get("strides", [1, 1])), padding=tuple(pads[:2]),
                     dilation=tuple(a.get("dilations", [1, 1])), groups=group)
    with torch.no_grad():
        conv.weight.copy_(_tensor(w))
        b = np.zeros(w.shape[0]) if len(v) < 3 or v[2] is None else \
            _need_const(v[2], "bias", where)
        conv.bias.copy_(_tensor(b))
    return [conv]


def _flatten(chain, pos, v, a, where) -> list[nn.Module]:
    if int(a.get("axis", 1)) != 1:
        raise OnnxImportError(f"{where}: only Flatten with axis 1 (keep the batch) is "
                              "supported")
    return [nn.Flatten()]


def _reshape(chain, pos, v, a, where) -> list[nn.Module]:
    if pos != 0 or v[1] is None:
        raise OnnxImportError(f"{where}: Reshape needs a constant target shape")
    target = _reshape_target(chain.shape, v[1], where)
    if target == chain.shape:
        return []
    if len(target) == 2 and target[0] == chain.shape[0]:
        return [nn.Flatten()]
    raise OnnxImportError(f"{where}: Reshape from {chain.shape} to {target} is not a "
                          "flatten of all but the batch dimension; not supported")


LAYER_CONVERTERS: dict[str, Callable] = {
    "Gemm": _gemm, "MatMul": _matmul, "Conv": _conv,
    "Add": _add_sub(1.0, 1.0), "Sub": _add_sub(1.0, -1.0),
    "Mul": _mul_div(False), "Div": _mul_div(True),
    "Relu": lambda *_: [nn.ReLU()], "Tanh": lambda *_: [nn.Tanh()],
    "Sigmoid": lambda *_: [nn.Sigmoid()], "Flatten": _flatten, "Reshape": _reshape,
    "Identity": lambda *_: [],
}
