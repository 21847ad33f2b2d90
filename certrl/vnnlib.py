"""VNN-LIB properties of "the greedy action is robust on an l_inf box", written and read back.

A property states the *counterexample*: X in the box [lower, upper] and some other
output beats the greedy one::

    (assert (or (and (>= Y_j Y_a)) ...))   one disjunct per action j != a

so a verifier's ``unsat`` means no input of the box makes any other action's output
reach the greedy action's: the action is certified (the same condition as certrl's
margin spec, min_j LB[f_a - f_j] > 0 over the ball). ``sat`` (with a witness) means an
input in the box where some Y_j >= Y_a.

Numbers are written in positional decimal notation with the shortest digits that read
back as the same float64 (no exponent: plain SMT-LIB decimals, negative numbers as
``-0.5`` like the VNN-COMP benchmarks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from bounds.vnnlib import sexprs
from certrl.onnx_agent import refuse_clipped


def number(v: float) -> str:
    """A float in positional notation that parses back to the same float64."""
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"VNN-LIB bounds must be finite; got {v}")
    return np.format_float_positional(v, unique=True, trim="0")


def spec_disjuncts(label: int, n_out: int) -> list[tuple[int, int]]:
    """The counterexample as (j, a) pairs meaning Y_j >= Y_a, for every j != a."""
    if not 0 <= label < n_out:
        raise ValueError(f"label {label} is not one of the {n_out} outputs")
    return [(j, label) for j in range(n_out) if j != label]


def property_text(lower: np.ndarray, upper: np.ndarray, label: int, n_out: int,
                  comment: str = "") -> str:
    """The VNN-LIB text: X_i in [lower_i, upper_i] (flattened, C order) and
    OR_{j != label} Y_j >= Y_label."""
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    if lo.shape != hi.shape or (lo > hi).any():
        raise ValueError("the box needs lower <= upper of one shape")
    lines = [f"; {c}" for c in comment.splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(lo.size)]
    lines += [f"(declare-const Y_{k} Real)" for k in range(n_out)]
    for i in range(lo.size):
        lines.append(f"(assert (<= X_{i} {number(hi[i])}))")
        lines.append(f"(assert (>= X_{i} {number(lo[i])}))")
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{a}))" for j, a in spec_disjuncts(label, n_out)]
    lines.append("))")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ reading
@dataclass
class VnnlibProperty:
    """A parsed property: the input box and the output disjunction.

    ``disjuncts``: list of conjunctions; each conjunction a list of (op, lhs, rhs) with op
    in {"<=", ">="} and sides "Y_k" or numbers (as float).
    """

    lower: np.ndarray
    upper: np.ndarray
    n_out: int
    disjuncts: list[list[tuple[str, object, object]]]

    def pairs(self) -> list[tuple[int, int]]:
        """The disjuncts as (j, a) pairs (Y_j >= Y_a); ValueError for any other shape."""
        out = []
        for conj in self.disjuncts:
            if len(conj) != 1:
                raise ValueError(f"disjunct {conj} is not a single output comparison")
            op, lhs, rhs = conj[0]
            if not (isinstance(lhs, str) and isinstance(rhs, str)):
                raise ValueError(f"disjunct {conj} compares with a constant")
            j, a = int(lhs[2:]), int(rhs[2:])
            out.append((j, a) if op == ">=" else (a, j))
        return out


def _atom(t: str):
    return t if re.fullmatch(r"[XY]_\d+", t) else float(t)


def _comparison(e) -> tuple[str, object, object]:
    if not (isinstance(e, list) and len(e) == 3 and e[0] in ("<=", ">=")):
        raise ValueError(f"expected (<= a b) or (>= a b); got {e}")
    return e[0], _atom(e[1]), _atom(e[2])


def parse_vnnlib(text: str) -> VnnlibProperty:
    """Parse the subset of VNN-LIB ``property_text`` writes (input box bounds as single
    asserts, one output assert made of or/and of comparisons)."""
    xs, ys, bounds_, disjuncts = [], [], [], []
    for e in sexprs(text):
        if e[0] == "declare-const":
            (xs if e[1].startswith("X_") else ys).append(e[1])
            continue
        if e[0] != "assert":
            raise ValueError(f"unexpected statement {e[0]!r}")
        body = e[1]
        if body[0] in ("<=", ">=") and isinstance(_atom(body[1]), str) and \
                body[1].startswith("X_"):
            bounds_.append(_comparison(body))
        elif body[0] == "or":
            for d in body[1:]:
                parts = d[1:] if d[0] == "and" else [d]
                disjuncts.append([_comparison(p) for p in parts])
        else:
            disjuncts.append([_comparison(p) for p in (body[1:] if body[0] == "and"
                                                       else [body])])
    lo, hi = np.full(len(xs), -np.inf), np.full(len(xs), np.inf)
    for op, var, val in bounds_:
        i = int(var[2:])
        if op == "<=":
            hi[i] = min(hi[i], val)
        else:
            lo[i] = max(lo[i], val)
    return VnnlibProperty(lo, hi, len(ys), disjuncts)


# ------------------------------------------------------------------ agents -> benchmark
def input_box(agent, x, eps, input: str = "raw") -> tuple[np.ndarray, np.ndarray]:
    """The box (B, *shape) float64 of the agent's l_inf threat set around network inputs
    ``x`` at radius ``eps`` (scaled per dimension by the threat model, clipped to its
    domain): ``ThreatModel.ball(x, eps).box()``, the very set certrl certifies.

    ``input="raw"``: mapped back to raw observations through the (affine, increasing)
    preprocessing x = (o - m) / s: o = x * s + m in float64, widened outward by two float32
    ulps so that it contains the preimage of the ball despite rounding (identity
    preprocessing: no mapping, no widening). ValueError for a non-l_inf threat model.
    """
    tm = agent.threat_model
    if tm.norm != float("inf"):
        raise ValueError(f"VNN-LIB input sets are boxes: only an l_inf threat model can be "
                         f"exported; this agent's is {tm.describe()}")
    lo, hi = (t.detach().double().numpy() for t in tm.ball(x, eps).box())
    if input == "network" or agent.preprocessing["kind"] == "identity":
        return lo, hi
    if agent.preprocessing["kind"] == "pixels":
        m, s = 0.0, float(agent.preprocessing.get("scale", 255.0))
    elif agent.preprocessing["kind"] == "normalize":
        refuse_clipped(agent)
        m, s = agent.obs_rms.mean, agent.obs_rms.std
    else:
        raise ValueError(f"preprocessing {agent.preprocessing['kind']!r} cannot be inverted; "
                         "use input='network'")
    lo, hi = lo * s + m, hi * s + m
    widen = lambda v: 2 * np.spacing(np.abs(v).astype(np.float32)).astype(np.float64)  # noqa: E731
    return lo - widen(lo), hi + widen(hi)


def greedy_labels(agent, x) -> np.ndarray:
    """argmax of the bounded form's outputs (B,): the action each property is about (the
    action ``certify_states`` certifies)."""
    import torch

    with torch.no_grad():
        out = agent.bounded_form()(x)
    if out.dim() != 2:
        raise ValueError(f"the network must output (B, K); got {tuple(out.shape)}")
    return out.argmax(dim=1).numpy()


def write_benchmark(agent, obs: np.ndarray, eps: float, out_dir, timeout: float = 60.0,
                    input: str = "raw", progress: bool = True, force: bool = False) -> dict:
    """Write a VNN-COMP style benchmark folder for ``agent`` at radius ``eps``:
    ``onnx/<name>.onnx`` (``certrl.onnx_agent.export_onnx``), ``vnnlib/prop_<i>.vnnlib``
    per raw observation ``obs[i]``, ``instances.csv`` (onnx,vnnlib,timeout per line, no
    header), ``states.npy`` (the raw observations) and ``manifest.json`` (labels, eps,
    threat model). Written in a temporary sibling folder renamed at the end (nothing
    half-written); an existing ``out_dir`` is refused unless ``force`` and it holds a
    certrl manifest. Returns the manifest dict."""
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from tqdm import tqdm

    from certrl.onnx_agent import export_onnx

    if agent.action_space_kind != "discrete":
        raise ValueError("VNN-LIB export states 'another action beats the greedy one': it "
                         "needs a discrete-action agent")
    if not (np.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout}")
    out = Path(out_dir)
    _check_target(out, force)
    x = agent.preprocess(obs)
    lo, hi = input_box(agent, x, eps, input)
    labels = greedy_labels(agent, x)
    n_out = int(agent.action_space["n"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "onnx").mkdir()
        (tmp / "vnnlib").mkdir()
        net = f"onnx/{_stem(agent)}.onnx"
        export_onnx(agent, tmp / net, input)
        rows = []
        note = (f"certrl: {agent.env_id} {agent.algo}/{agent.loss_name}, "
                f"{agent.threat_model.with_eps(eps).describe()}\n"
                "unsat = the greedy action is certified")
        for i in tqdm(range(len(obs)), disable=not progress, desc="vnnlib", unit="state"):
            name = f"vnnlib/prop_{i}.vnnlib"
            text = property_text(lo[i], hi[i], int(labels[i]), n_out,
                                 f"{note}\nstate {i}, greedy action {int(labels[i])}")
            (tmp / name).write_text(text)
            rows.append(f"{net},{name},{number(timeout)}")
        (tmp / "instances.csv").write_text("\n".join(rows) + "\n")
        np.save(tmp / "states.npy", np.asarray(obs))
        manifest = {"format": "certrl-vnnlib-1", "env_id": agent.env_id, "eps": float(eps),
                    "input": input, "threat_model": agent.threat_model.to_dict(),
                    "labels": [int(v) for v in labels], "onnx": net,
                    "source": str(agent.source or ""), "timeout": float(timeout)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def _stem(agent) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{agent.env_id}-{agent.algo}-{agent.loss_name}")


def _check_target(out, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValueError(f"--out {out} exists and is not empty; use --force to replace a "
                             "previous export")
        if not (out / "manifest.json").is_file():
            raise ValueError(f"--out {out} holds no certrl VNN-LIB export (no manifest.json); "
                             "refusing to replace it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
