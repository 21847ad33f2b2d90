"""VNN-LIB properties in: ``read_vnnlib`` and ``verify_vnnlib``.

A VNN-LIB file (VNN-COMP's format, an SMT-LIB subset) declares inputs ``X_i`` and
outputs ``Y_k``, bounds each input to an interval (the box) and asserts the *unsafe*
output region: a disjunction of conjunctions of linear constraints
``sum_k a_k Y_k + c <= / >= sum_k b_k Y_k + e``. The property holds ("unsat": no input
of the box reaches the unsafe region) iff for every conjunction and every x of the box
at least one of its constraints is violated.

Each constraint is normalised to ``a . Y <= b`` (unsafe when it holds); violated means
``a . Y > b``. So conjunction j is unreachable iff ``C_j f(x) > d_j`` holds in at least
one row for every x: exactly ``bounds.verify(..., mode="any")``. ``verify_vnnlib``
answers "unsat" when every conjunction is verified, "sat" with a checked
counterexample when one is falsified, else "unknown".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bounds.perturbation import LpBall
from bounds.verify import verify

__all__ = ["VnnlibSpec", "read_vnnlib", "parse_vnnlib_text", "sexprs", "verify_vnnlib"]


@dataclass
class VnnlibSpec:
    """lower / upper: (n_in,) the input box; unsafe: one (C (m, n_out), d (m,)) per
    conjunction of the unsafe region, each row meaning "unsafe requires C_i y <= d_i"."""

    lower: torch.Tensor
    upper: torch.Tensor
    n_out: int
    unsafe: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def sexprs(text: str) -> list:
    """The S-expressions of VNN-LIB / SMT-LIB ``text`` (``;`` comments dropped) as nested
    lists of token strings; ValueError for unbalanced parentheses."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list] = [[]]
    for tok in re.findall(r"\(|\)|[^\s()]+", text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) < 2:
                raise ValueError("VNN-LIB: unbalanced ')'")
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise ValueError("VNN-LIB: unbalanced '('")
    return stack[0]


def _linear(e, n_out: int) -> tuple[dict[str, float], float]:
    """A linear term over Y_k / X_i: ({var: coefficient}, constant)."""
    if isinstance(e, str):
        if re.fullmatch(r"[XY]_\d+", e):
            return {e: 1.0}, 0.0
        try:
            return {}, float(e)
        except ValueError:
            raise ValueError(f"VNN-LIB: unknown symbol {e!r}") from None
    op, args = e[0], [_linear(a, n_out) for a in e[1:]]
    if op == "+" or (op == "-" and len(args) > 1):
        sign = [1.0] + [1.0 if op == "+" else -1.0] * (len(args) - 1)
        coef: dict[str, float] = {}
        for s, (c, _) in zip(sign, args):
            for k, v in c.items():
                coef[k] = coef.get(k, 0.0) + s * v
        return coef, sum(s * k for s, (_, k) in zip(sign, args))
    if op == "-" and len(args) == 1:
        return {k: -v for k, v in args[0][0].items()}, -args[0][1]
    if op == "*" and len(args) == 2 and (not args[0][0] or not args[1][0]):
        (ca, ka), (cb, kb) = args
        scale, (coef, k) = (ka, (cb, kb)) if not ca else (kb, (ca, ka))
        return {v: scale * w for v, w in coef.items()}, scale * k
    raise ValueError(f"VNN-LIB: not a linear term: {e}")


def _constraint(e, n_out: int) -> tuple[dict[str, float], float]:
    """(<= lhs rhs) / (>= lhs rhs) as ``a . vars <= b``: ({var: a}, b)."""
    if not (isinstance(e, list) and len(e) == 3 and e[0] in ("<=", ">=")):
        raise ValueError(f"VNN-LIB: expected (<= a b) or (>= a b); got {e}")
    (ca, ka), (cb, kb) = _linear(e[1], n_out), _linear(e[2], n_out)
    if e[0] == ">=":
        (ca, ka), (cb, kb) = (cb, kb), (ca, ka)
    coef = dict(ca)
    for k, v in cb.items():
        coef[k] = coef.get(k, 0.0) - v
    return coef, kb - ka


def _conjunctions(body) -> list[list]:
    """The assert body as a list of conjunctions (each a list of comparisons)."""
    if body[0] == "or":
        return [c for d in body[1:] for c in _conjunctions(d)]
    if body[0] == "and":
        parts = [_conjunctions(p) for p in body[1:]]
        if any(len(p) != 1 for p in parts):
            raise ValueError("VNN-LIB: a disjunction inside a conjunction is not supported")
        return [[c for p in parts for c in p[0]]]
    return [[body]]


def parse_vnnlib_text(text: str) -> VnnlibSpec:
    """Parse VNN-LIB text (see the module docstring); ValueError on what is outside it:
    input constraints other than single-variable bounds, unbounded inputs, non-linear
    terms, disjunctions over inputs."""
    xs, ys, box, unsafe = [], [], [], []
    for e in sexprs(text):
        if e[0] == "declare-const":
            (xs if e[1].startswith("X_") else ys).append(e[1])
        elif e[0] == "assert":
            for conj in _conjunctions(e[1]):
                cons = [_constraint(c, len(ys)) for c in conj]
                if all(all(v.startswith("X_") for v in c) for c, _ in cons):
                    box.extend(cons)
                elif all(all(v.startswith("Y_") for v in c) for c, _ in cons):
                    unsafe.append(cons)
                else:
                    raise ValueError("VNN-LIB: constraints mixing inputs and outputs")
        else:
            raise ValueError(f"VNN-LIB: unexpected statement {e[0]!r}")
    lo = torch.full((len(xs),), -float("inf"), dtype=torch.float64)
    hi = torch.full((len(xs),), float("inf"), dtype=torch.float64)
    for coef, b in box:
        if len(coef) != 1:
            raise ValueError("VNN-LIB: input constraints must bound one variable each")
        (var, a), = coef.items()
        i = int(var[2:])
        if a > 0:
            hi[i] = min(float(hi[i]), b / a)
        elif a < 0:
            lo[i] = max(float(lo[i]), b / a)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or (lo > hi).any():
        raise ValueError("VNN-LIB: every input needs a finite interval (lower <= upper)")
    specs = []
    for cons in unsafe:
        C = torch.zeros(len(cons), len(ys), dtype=torch.float64)
        d = torch.zeros(len(cons), dtype=torch.float64)
        for r, (coef, b) in enumerate(cons):
            for var, a in coef.items():
                C[r, int(var[2:])] += a
            d[r] = b
        specs.append((C, d))
    return VnnlibSpec(lo, hi, len(ys), specs)


def read_vnnlib(path: str | Path) -> VnnlibSpec:
    """``parse_vnnlib_text`` of a file."""
    return parse_vnnlib_text(Path(path).read_text())


def verify_vnnlib(net: nn.Module, spec: VnnlibSpec, timeout_s: float = 60.0,
                  input_shape: tuple[int, ...] | None = None) -> tuple[str, torch.Tensor | None]:
    """("unsat" | "sat" | "unknown", counterexample or None) for ``net`` on ``spec``.

    Conjunction j (unsafe: C_j f(x) <= d_j in every row) is unreachable iff
    C_j f(x) > d_j in at least one row for all x of the box: ``verify(mode="any")``.
    The timeout is shared by the conjunctions. ``input_shape``: the network's input
    shape without the batch (default: the flat box).
    """
    dtype = next(net.parameters()).dtype if any(True for _ in net.parameters()) \
        else torch.float32
    shape = input_shape or tuple(spec.lower.shape)
    lo = spec.lower.to(dtype).reshape(1, *shape)
    hi = spec.upper.to(dtype).reshape(1, *shape)
    ball = LpBall((lo + hi) / 2, (hi - lo) / 2, float("inf"), lower=lo, upper=hi)
    t_end, status = time.perf_counter() + timeout_s, "unsat"
    for C, d in spec.unsafe:
        left = t_end - time.perf_counter()
        if left <= 0:
            return "unknown", None
        res = verify(net, ball, C.to(dtype), d.to(dtype), mode="any", timeout_s=left)
        if res.status == "falsified":
            return "sat", res.counterexample
        if res.status == "unknown":
            status = "unknown"
    return status, None
