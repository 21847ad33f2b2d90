"""VNN-LIB export: the files parse back to the certify call's ball and spec, and the
exported queries mean the same thing as certrl's certificates (same certified states)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the VNN-LIB export writes its network as ONNX")

import bounds  # noqa: E402
from bounds.api import rounding_allowance  # noqa: E402
from bounds.onnx_io import from_onnx  # noqa: E402
from certrl.agent import load  # noqa: E402
from certrl.certify.methods import CertifyOptions  # noqa: E402
from certrl.certify.state import certify_states  # noqa: E402
from certrl.cli import main  # noqa: E402
from certrl.vnnlib import parse_vnnlib, property_text, spec_disjuncts, write_benchmark  # noqa: E402
from tests.conftest import FROZEN  # noqa: E402

EPS = 0.005  # the frozen vanilla agent certifies some of its early states at this eps, not all
SCALE = (1.0, 2.0, 0.5, 1.5)


def test_property_text_round_trips_exactly():
    rng = np.random.default_rng(1)
    lo = rng.normal(size=7) * 10.0 ** rng.integers(-8, 3, size=7)
    hi = lo + np.abs(rng.normal(size=7))
    p = parse_vnnlib(property_text(lo, hi, 2, 5, "a comment\nover two lines"))
    np.testing.assert_array_equal(p.lower, lo)  # bit-exact float64
    np.testing.assert_array_equal(p.upper, hi)
    assert p.n_out == 5 and p.pairs() == [(0, 2), (1, 2), (3, 2), (4, 2)]
    text = property_text(np.array([1e-20]), np.array([1e20]), 0, 2)
    assert "(>= X_0 0.00000000000000000001)" in text  # positional numbers, no exponent
    assert "(<= X_0 100000000000000000000.0)" in text
    with pytest.raises(ValueError):
        property_text(hi, lo, 0, 2)
    with pytest.raises(ValueError):
        spec_disjuncts(3, 3)


def export(tmp_path, keep_threads):
    """``certrl export vnnlib`` of the frozen agent on one seeded episode (first 25
    states), l_inf eps with a per-dimension scale; the folder and its states."""
    out = tmp_path / "bench"
    rc = main(["export", "vnnlib", str(FROZEN), "--eps", str(EPS), "--episodes", "1",
               "--max-steps", "25", "--eps-scale", ",".join(map(str, SCALE)), "--out",
               str(out), "--no-progress"])
    assert rc == 0
    return out, np.load(out / "states.npy")


def read(out):
    rows = list(csv.reader((out / "instances.csv").read_text().splitlines()))
    props = [parse_vnnlib((out / v).read_text()) for _, v, _ in rows]
    return rows, props


def crown_on_export(out, props):
    """Certified per exported property by CROWN on the re-imported ONNX: the box as the
    perturbation set (domain clip = the box), C rows e_a - e_j from the parsed pairs, and
    certrl's rule (``bounds.margin_lower`` subtracts the same float32 rounding allowance)."""
    net = from_onnx(out / json.loads((out / "manifest.json").read_text())["onnx"])
    result = []
    for p in props:
        lo, hi = (torch.as_tensor(v, dtype=torch.float32)[None] for v in (p.lower, p.upper))
        ball = bounds.LpBall((lo + hi) / 2, (hi - lo) / 2 * 1.001 + 1e-9, lower=lo, upper=hi)
        C = torch.zeros(1, len(p.pairs()), p.n_out)
        for r, (j, a) in enumerate(p.pairs()):
            C[0, r, a], C[0, r, j] = 1.0, -1.0
        lb, _ = bounds.compute(net, ball, method="crown", C=C)
        with torch.no_grad():  # certrl's decision rule: bound - float32 allowance > 0
            allowance = rounding_allowance(net((lo + hi) / 2))
        result.append(bool((lb - allowance > 0).all()))
    return np.array(result)


def test_export_box_and_spec_equal_the_certify_call(tmp_path, keep_threads):
    out, obs = export(tmp_path, keep_threads)
    rows, props = read(out)
    agent = load(FROZEN)
    agent.threat_model = agent.threat_model.with_scale(SCALE)
    x = agent.preprocess(obs)
    lo, hi = agent.threat_model.ball(x, EPS).box()
    cert = certify_states(agent.bounded_form(), x, EPS, "crown", threat=agent.threat_model,
                          options=CertifyOptions(radius=False))[0]
    assert len(rows) == len(obs) == 25
    assert all(r[0] == rows[0][0] and r[2] == "60.0" for r in rows)
    for i, p in enumerate(props):
        np.testing.assert_array_equal(p.lower, lo[i].double().numpy())
        np.testing.assert_array_equal(p.upper, hi[i].double().numpy())
        np.testing.assert_allclose(p.upper - p.lower, 2 * EPS * np.array(SCALE), rtol=1e-5)
        assert p.pairs() == spec_disjuncts(int(cert.action[i]), 2)


def test_exported_properties_are_unsat_exactly_where_certrl_certifies(tmp_path, keep_threads):
    out, obs = export(tmp_path, keep_threads)
    _, props = read(out)
    agent = load(FROZEN)
    agent.threat_model = agent.threat_model.with_scale(SCALE)
    x = agent.preprocess(obs)
    certified = certify_states(agent.bounded_form(), x, EPS, "crown",
                               threat=agent.threat_model,
                               options=CertifyOptions(radius=False))[0].certified
    assert 0 < certified.sum() < len(certified)  # a mix, so the comparison can fail
    np.testing.assert_array_equal(crown_on_export(out, props), certified)


def test_exported_properties_match_the_exact_milp(tmp_path, keep_threads):
    """Complete answers on both sides: the MILP on the re-imported ONNX over the parsed
    box gives the margins of certrl's exact certificate (which subtracts a float32
    rounding allowance + 1e-6 from them), and the same rule gives the same states."""
    out, obs = export(tmp_path, keep_threads)
    _, props = read(out)
    agent = load(FROZEN)
    agent.threat_model = agent.threat_model.with_scale(SCALE)
    x = agent.preprocess(obs)[:10]
    form = agent.bounded_form()
    exact = certify_states(form, x, EPS, "exact", threat=agent.threat_model,
                           options=CertifyOptions(radius=False))[0]
    with torch.no_grad():
        slack = (rounding_allowance(form(x)).double() + 1e-6).numpy()
    net = from_onnx(out / "onnx" / "CartPole-v1-dqn-vanilla.onnx")
    lo = torch.as_tensor(np.stack([p.lower for p in props[:10]]), dtype=torch.float32)
    hi = torch.as_tensor(np.stack([p.upper for p in props[:10]]), dtype=torch.float32)
    labels = [p.pairs()[0][1] for p in props[:10]]
    res = bounds.milp_margin(net, (lo + hi) / 2, (hi - lo) / 2 * 1.001 + 1e-9, labels,
                             lower=lo, upper=hi)
    assert all(s in ("optimal", "label") for row in res.status for s in row)
    values = res.values.numpy()
    np.testing.assert_allclose(values, exact.margin_lower + slack, atol=1e-5)
    assert 0 < exact.certified.sum() < len(x)
    np.testing.assert_array_equal(((values - slack) > 0).all(axis=1), exact.certified)


def test_refusals(tmp_path, frozen_cartpole, keep_threads):
    obs = np.zeros((2, 4), dtype=np.float32)
    agent = frozen_cartpole
    agent.threat_model = agent.threat_model.with_eps(0.1)
    l2 = load(FROZEN)
    l2.threat_model = type(l2.threat_model).from_dict({**l2.threat_model.to_dict(),
                                                       "norm": "2"})
    with pytest.raises(ValueError, match="l_inf"):
        write_benchmark(l2, obs, 0.01, tmp_path / "l2", progress=False)
    assert not (tmp_path / "l2").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        write_benchmark(agent, obs, 0.01, tmp_path / "busy", progress=False)
    with pytest.raises(ValueError, match="no certrl"):
        write_benchmark(agent, obs, 0.01, tmp_path / "busy", progress=False, force=True)
    assert (tmp_path / "busy" / "x.txt").read_text() == "keep"
    np.save(tmp_path / "bad.npy", np.zeros((3, 5), dtype=np.float32))
    assert main(["export", "vnnlib", str(FROZEN), "--eps", "0.01", "--states",
                 str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")]) == 2
    assert main(["export", "vnnlib", "cartpole-dqn-sortnet", "--eps", "0.01", "--states",
                 str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
