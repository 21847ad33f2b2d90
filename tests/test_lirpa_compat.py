"""Each auto_LiRPA compatibility shim does what bounds/lirpa_compat.py says."""

import sys

import numpy as np
import torch

from bounds import lirpa_compat


def test_numpy_arraysetops_shim():
    lirpa_compat.apply_shims()
    mod = sys.modules["numpy.lib.arraysetops"]
    assert mod.isin(np.array([1, 2, 3]), [2]).tolist() == [False, True, False]


def test_set_opset_version_shim():
    lirpa_compat.apply_shims()
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    from torch.onnx.symbolic_helper import _set_opset_version

    old = GLOBALS.export_onnx_opset_version
    try:
        _set_opset_version(12)
        assert GLOBALS.export_onnx_opset_version == 12
    finally:
        GLOBALS.export_onnx_opset_version = old


def test_node_getitem_shim():
    lirpa_compat.apply_shims()
    graph = torch.jit.trace(lambda x: x * 2.5, torch.ones(2)).graph
    consts = [n for n in graph.nodes() if n.kind() == "prim::Constant" and n.hasAttribute("value")]
    assert consts, "expected a constant node in the traced graph"
    values = [consts[i]["value"] for i in range(len(consts))]
    assert any(torch.is_tensor(v) and float(v) == 2.5 for v in values)


def test_auto_lirpa_imports_and_bounds_a_net():
    al = lirpa_compat.import_auto_lirpa()
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x = torch.zeros(1, 2)
    bm = al.BoundedModule(net, x, verbose=False)
    ptb = al.PerturbationLpNorm(norm=float("inf"), eps=0.1)
    lb, ub = bm.compute_bounds(x=(al.BoundedTensor(x, ptb),), method="IBP")
    assert (lb <= net(x)).all() and (net(x) <= ub).all()
