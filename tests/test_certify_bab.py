"""The ``bab`` certificate method (complete branch and bound through ``bounds.verify``):
agrees with the MILP, never below CROWN, and brackets the exact radius with a checked
counterexample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from certrl.certify import CertifyOptions, certify_states, rollout
from certrl.cli import main
from tests.conftest import SHIPPED, has_shipped


@pytest.fixture(scope="module")
def states():
    import certrl

    agent = certrl.load(SHIPPED)
    ep = rollout(agent, 1, seed=0, max_steps=40)[0]
    return agent, agent.bounded_form(), ep.x[::3]


@has_shipped
def test_bab_agrees_with_milp_and_dominates_crown(states, one_thread):
    agent, net, x = states
    eps = [0.005, 0.02]
    opts = CertifyOptions(q_values=False)
    bab = certify_states(net, x, eps, "bab", threat=agent.threat_model, options=opts)
    milp = certify_states(net, x, eps, "exact", threat=agent.threat_model, options=opts)
    crown = certify_states(net, x, eps, "crown", threat=agent.threat_model, options=opts)
    for b, m, c in zip(bab, milp, crown):
        assert b.certificate_kind == "exact"
        clear = np.abs(m.min_margin_lower) > 1e-3  # away from the float32 allowance
        assert (b.certified[clear] == m.certified[clear]).all()
        assert (b.certified >= c.certified).all()
        assert (b.min_margin_lower[b.certified] > 0).all()
    assert (bab[0].radius >= crown[0].radius).all()
    # the bisection's verified ends agree with the MILP's to the search tolerance
    np.testing.assert_allclose(bab[0].radius, milp[0].radius, rtol=0.03, atol=1e-6)


@has_shipped
def test_bab_radius_upper_end_carries_a_real_counterexample(states, one_thread):
    agent, net, x = states
    res = certify_states(net, x, 0.01, "bab", threat=agent.threat_model,
                         options=CertifyOptions(q_values=False))[0]
    up, pts = res.extra["radius_upper"], res.extra["radius_counterexample"]
    assert np.isfinite(up).any()
    for b in np.flatnonzero(np.isfinite(up)):
        assert res.radius[b] < up[b]  # verified below, refuted at up
        p = torch.tensor(pts[b], dtype=x.dtype).reshape(1, -1)
        assert float((p - x[b]).abs().max()) <= up[b] + 1e-6  # inside that ball
        with torch.no_grad():
            q = net(p)[0]
        lab = int(res.action[b])
        assert float(q[lab] - q[1 - lab]) <= 0  # the greedy action does not win there


@has_shipped
def test_bab_through_the_cli(tmp_path, capsys, keep_threads):
    out = tmp_path / "bab.jsonl"
    args = ["certify", SHIPPED, "--method", "bab", "--eps", "0.02", "--episodes", "1",
            "--max-steps", "4", "--out", str(out), "--no-progress", "--bab-timeout", "5"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    states_ = [r for r in rows if r.get("record") == "state"]
    assert len(states_) == 4
    for r in states_:
        assert r["certificate_kind"] == "exact"
        assert r["bab_status"] in ("verified", "falsified", "unknown")
        assert r["certified"] == (r["bab_status"] == "verified")
        assert r["radius"] <= r["radius_upper"] or r["radius_upper"] is None
    capsys.readouterr()
    assert main([*args[:-2], "--bab-timeout", "-1"]) == 2
    assert "--bab-timeout must be positive" in capsys.readouterr().err


@has_shipped
def test_bab_refuses_other_norms(states):
    from certrl.threat import ThreatModel

    agent, net, x = states
    with pytest.raises(ValueError, match="l_inf"):
        certify_states(net, x[:1], 0.01, "bab", threat=ThreatModel(norm=2.0))
