"""Turn a network into the flat list of layers the native engine propagates.

The native engine handles ``nn.Sequential`` networks (nested Sequentials are
flattened) made of: Linear, Conv2d (groups=1, dilation=1, zero padding), ReLU,
Tanh, Flatten, Identity, and ``bounds.Normalize`` (elementwise (x - mu) / sigma).
A network may also expose ``bounded_form()`` returning such a Sequential.
Anything else raises :class:`UnsupportedLayerError`, which names the layer and
suggests the auto_LiRPA backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from bounds.flatten import flatten_modules
from bounds.layers import Normalize
from bounds.rules import LayerRule, UnsupportedLayerError, check_supported, find_rule

__all__ = ["Layer", "UnsupportedLayerError", "check_input", "flatten_modules", "parse",
           "parse_modules", "same_modules", "unsupported_among", "unsupported_layers"]


@dataclass
class Layer:
    """One layer with the shapes (without batch dimension) it maps between."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    index: int

    @cached_property
    def rule(self) -> LayerRule:
        """The entry of ``bounds.rules.RULES`` for this layer's module (looked up once:
        a layer holds the same module object for its lifetime)."""
        rule = find_rule(self.module)
        if rule is None:  # parse() admits only modules with a rule
            raise UnsupportedLayerError(f"layer {self.index} ({self.module}) has no rule")
        return rule

    @property
    def kind(self) -> str:
        """The rule's kind: "linear", "conv", "relu", "tanh", "flatten", "identity",
        "normalize"."""
        return self.rule.kind


# Layers that keep the shape of their input (elementwise maps), for ``check_input``.
_SHAPE_KEEPING = (nn.ReLU, nn.Tanh, nn.Identity, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU,
                  nn.Softplus, nn.Hardtanh, nn.Dropout)


def check_input(modules: list[nn.Module], in_shape: tuple[int, ...]) -> None:
    """Raise ValueError (expected vs got) when inputs of ``in_shape`` cannot enter the network.

    A structural check without any forward pass: it walks the layers up to the
    first Linear / Conv2d and compares that layer's input size with ``in_shape``
    (the shape of one sample, without the batch dimension). Layers it does not
    know end the walk silently (no check is better than a wrong one).
    """
    shape = tuple(int(d) for d in in_shape)
    got = f"got a ball whose center has shape {shape} per sample"
    bad = "the input does not fit the network: it expects input"
    flattened = ""
    for i, m in enumerate(modules):
        where = f"layer {i}: {m}"
        if isinstance(m, nn.Linear):
            if shape and shape[-1] == m.in_features:
                return
            raise ValueError(
                f"{bad} of width {m.in_features}{flattened} ({where}); {got}"
            )
        if isinstance(m, nn.Conv2d):
            if flattened:
                return
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise ValueError(
                    f"{bad} of shape ({m.in_channels} channels, H, W) ({where}); {got}"
                )
            if not isinstance(m.padding, str):
                for size, k, p, d in zip(shape[1:], m.kernel_size, m.padding, m.dilation):
                    if size + 2 * p < d * (k - 1) + 1:
                        raise ValueError(
                            f"input of spatial size {shape[1:]} is smaller than the kernel of "
                            f"{where}; {got}"
                        )
            return
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1 or flattened:
                return
            flattened = f" (= C*H*W after the Flatten at layer {i})" if len(shape) > 1 else ""
            shape = (math.prod(shape),)
            continue
        if isinstance(m, Normalize):
            full = (1, *shape)
            try:
                ok = tuple(torch.broadcast_shapes(m.mean.shape, m.std.shape, full)) == full
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{bad} whose shape fits normalization statistics of shape "
                    f"{tuple(m.mean.shape)} ({where}); {got}"
                )
            continue
        if isinstance(m, _SHAPE_KEEPING):
            continue
        return


def unsupported_layers(net: nn.Module) -> list[str]:
    """Names of the layers the native backend cannot handle (empty if all are fine)."""
    try:
        modules = flatten_modules(net)
    except Exception as exc:  # bounded_form() itself failed
        return [f"bounded_form() failed: {exc}"]
    return unsupported_among(modules)


def unsupported_among(modules: list[nn.Module]) -> list[str]:
    """``"index:TypeName"`` of each module in the flat list the native backend cannot handle."""
    bad = []
    for i, m in enumerate(modules):
        try:
            check_supported(m, i)
        except UnsupportedLayerError:
            bad.append(f"{i}:{type(m).__name__}")
    return bad


def same_modules(a: list[nn.Module] | None, b: list[nn.Module]) -> bool:
    """True when the two flat layer lists hold the very same module objects, in order."""
    return a is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def parse(net: nn.Module, in_shape: tuple[int, ...]) -> list[Layer]:
    """Flatten ``net`` into layers with their shapes; raise on unsupported layers."""
    return parse_modules(flatten_modules(net), in_shape)


def parse_modules(modules: list[nn.Module], in_shape: tuple[int, ...]) -> list[Layer]:
    """The flat module list as layers with their shapes; raise on unsupported layers.

    The layers hold the modules themselves (no copy): weights updated later in
    place are seen by every bound computed from them.
    """
    check_input(modules, in_shape)
    for i, m in enumerate(modules):
        check_supported(m, i)
    p = next((q for m in modules for q in m.parameters()), None)
    b = next((q for m in modules for q in m.buffers()), None)
    ref = p if p is not None else b
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else torch.device("cpu")
    x = torch.zeros((1, *in_shape), dtype=dtype, device=device)
    layers: list[Layer] = []
    with torch.no_grad():
        for i, m in enumerate(modules):
            try:
                y = m(x)
            except Exception as exc:
                raise ValueError(
                    f"input of shape {tuple(in_shape)} does not fit layer {i} ({m}): {exc}"
                ) from None
            layers.append(Layer(m, tuple(x.shape[1:]), tuple(y.shape[1:]), i))
            x = y
    return layers
