"""Compatibility shims that let ``auto-lirpa==0.3`` (2022) run on torch 2.x / numpy 2.

auto_LiRPA 0.3 was written against torch<1.13 and numpy 1.x. Three small
things it relies on are gone; we restore exactly those, before it is imported:

1. ``numpy.lib.arraysetops`` (a private numpy 1.x module, removed in numpy 2):
   auto_LiRPA imports ``isin`` from it. We register a module exposing
   ``isin = numpy.isin``.
2. ``torch.onnx.symbolic_helper._set_opset_version`` (removed in torch 2.x):
   auto_LiRPA calls it before tracing the graph. We provide a function that
   sets ``GLOBALS.export_onnx_opset_version`` on torch's TorchScript exporter
   globals.
3. ``torch._C.Node.__getitem__`` (removed): auto_LiRPA reads node attributes
   as ``node['value']``. We map it to the typed accessor named by
   ``node.kindOf(key)`` (e.g. ``node.t('value')``).

Each shim is idempotent and is tested in ``tests/test_lirpa_compat.py``.

Importing auto_LiRPA also calls ``logging.basicConfig(stream=sys.stdout)``,
which gives the *root* logger a stdout handler: every later log record of any
library would then land on stdout, mixed with a command's output. After the
import we remove that one handler again (the root logger is left as it was).
"""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import torch

_APPLIED = False


def _shim_numpy_arraysetops() -> None:
    name = "numpy.lib.arraysetops"
    if name in sys.modules:
        mod = sys.modules[name]
        if not hasattr(mod, "isin"):
            mod.isin = np.isin  # type: ignore[attr-defined]
        return
    try:  # numpy 1.x still has it
        import numpy.lib.arraysetops  # noqa: F401

        return
    except ImportError:
        pass
    mod = types.ModuleType(name)
    mod.isin = np.isin  # type: ignore[attr-defined]
    sys.modules[name] = mod
    np.lib.arraysetops = mod  # type: ignore[attr-defined]


def _shim_set_opset_version() -> None:
    import torch.onnx.symbolic_helper as symbolic_helper

    if hasattr(symbolic_helper, "_set_opset_version"):
        return
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

    def _set_opset_version(opset_version: int) -> None:
        GLOBALS.export_onnx_opset_version = opset_version

    symbolic_helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]


def _shim_node_getitem() -> None:
    node_cls = torch._C.Node
    if getattr(node_cls, "_certrl_getitem_shim", False):
        return
    node_cls.__getitem__ = lambda n, k: getattr(n, n.kindOf(k))(k)  # type: ignore[attr-defined]
    node_cls._certrl_getitem_shim = True  # type: ignore[attr-defined]


def apply_shims() -> None:
    """Apply the three compatibility shims (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _shim_numpy_arraysetops()
    _shim_set_opset_version()
    _shim_node_getitem()
    _APPLIED = True


def import_auto_lirpa():
    """Apply the shims, then import and return the ``auto_LiRPA`` module.

    Raises ImportError with install instructions when auto_LiRPA is missing.
    """
    apply_shims()
    first = "auto_LiRPA" not in sys.modules
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        import auto_LiRPA
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "auto_LiRPA is not installed; run `make install` or "
            "`pip install --no-deps auto-lirpa==0.3 tqdm appdirs pyyaml packaging`"
        ) from exc
    if first:
        _drop_stdout_root_handlers(before)
    return auto_LiRPA


_LIRPA_LOG_FORMAT = "%(levelname)-8s %(asctime)-12s %(message)s"


def _drop_stdout_root_handlers(before: list[logging.Handler]) -> None:
    """Remove the stdout handler auto_LiRPA's ``logging.basicConfig`` put on the root logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h in before or not isinstance(h, logging.StreamHandler):
            continue
        fmt = getattr(h.formatter, "_fmt", None)
        if h.stream is sys.stdout and fmt == _LIRPA_LOG_FORMAT:
            root.removeHandler(h)
