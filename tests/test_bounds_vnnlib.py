"""bounds.read_vnnlib / verify_vnnlib: VNN-LIB boxes and linear output constraints in,
answers cross-checked against the MILP and against certrl's VNN-LIB export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bounds.exact import milp_margin
from bounds.vnnlib import parse_vnnlib_text, read_vnnlib, verify_vnnlib

TEXT = """; a VNN-COMP style property
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 0.5))
(assert (>= X_0 -0.5))
(assert (and (<= X_1 1) (>= X_1 0.25)))
(assert (or
    (and (<= (+ Y_0 (* -2.0 Y_1)) 0.5) (>= Y_2 Y_0))
    (and (>= (- Y_1 1) 3))))
"""


def test_parse_box_and_linear_conjunctions(tmp_path):
    (tmp_path / "p.vnnlib").write_text(TEXT)
    spec = read_vnnlib(tmp_path / "p.vnnlib")
    assert spec.lower.tolist() == [-0.5, 0.25] and spec.upper.tolist() == [0.5, 1.0]
    assert spec.n_out == 3 and len(spec.unsafe) == 2
    (C1, d1), (C2, d2) = spec.unsafe
    assert C1.tolist() == [[1.0, -2.0, 0.0], [1.0, 0.0, -1.0]] and d1.tolist() == [0.5, 0.0]
    assert C2.tolist() == [[0.0, -1.0, 0.0]] and d2.tolist() == [-4.0]


@pytest.mark.parametrize("bad", [
    "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))",  # unbounded X_0
    "(declare-const X_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= (* X_0 X_0) 1))",
    "(declare-const X_0 Real)(assert (<= (+ X_0 Y_0) 1))",
    "(declare-const X_0 Real))",
    "(check-sat)",
])
def test_unsupported_or_broken_text_is_refused(bad):
    with pytest.raises(ValueError, match="VNN-LIB"):
        parse_vnnlib_text(bad)


def _margin_property(x, eps, label, K=3) -> str:
    from certrl.vnnlib import property_text

    return property_text((x - eps).numpy(), (x + eps).numpy(), label, K)


@pytest.mark.parametrize("seed", range(12))
def test_verify_vnnlib_agrees_with_the_milp(seed, one_thread):
    """The exported adversarial property (some j != a with Y_j >= Y_a) is unsat iff the
    MILP's minimum margin is > 0; a sat answer carries a point of the unsafe region."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                        nn.Linear(10, 3)).eval()
    x, eps = torch.randn(1, 3), 0.05 + 0.1 * (seed % 4)
    label = int(net(x).argmax())
    spec = parse_vnnlib_text(_margin_property(x[0], eps, label))
    m = float(milp_margin(net, x, eps, [label]).values[0][torch.arange(3) != label].min())
    status, cex = verify_vnnlib(net, spec, timeout_s=30)
    if abs(m) < 1e-3:
        return
    assert status == ("unsat" if m > 0 else "sat"), (seed, m, status)
    if status == "sat":
        assert ((cex >= spec.lower.float() - 1e-6) & (cex <= spec.upper.float() + 1e-6)).all()
        with torch.no_grad():
            y = net(cex.reshape(1, -1))[0]
        assert any(float(y[j] - y[label]) >= 0 for j in range(3) if j != label)


def test_timeout_gives_unknown():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 30), nn.ReLU(), nn.Linear(30, 3)).eval()
    spec = parse_vnnlib_text(_margin_property(torch.zeros(3), 0.3,
                                              int(net(torch.zeros(1, 3)).argmax())))
    status, cex = verify_vnnlib(net, spec, timeout_s=0.0)
    assert status == "unknown" and cex is None


def test_exported_benchmark_reads_back_as_the_certify_ball():
    """A property written by certrl's exporter parses to the same box and margin rows."""
    x = torch.tensor([0.1, -0.2, 0.3])
    spec = parse_vnnlib_text(_margin_property(x, 0.05, 1))
    assert torch.allclose(spec.lower, (x - 0.05).double()) and \
        torch.allclose(spec.upper, (x + 0.05).double())
    rows = sorted(C.tolist()[0] + d.tolist() for C, d in spec.unsafe)
    assert rows == [[-1.0, 1.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0]]  # Y_j >= Y_1 <=> Y_1 - Y_j <= 0
