"""Trajectory certificates, return bounds, the certify CLI (errors, resume, records)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm as _norm

from certrl.certify import (
    CertifySettings,
    SmoothingConfig,
    append_rows_atomic,
    dkw_margin,
    episode_l2_budget,
    policy_smoothing_bound,
    pooled_acr,
    read_rows,
    run_certify,
    sdqn_median_bound,
)
from certrl.cli import main
from tests.conftest import SHIPPED, has_shipped


def test_policy_smoothing_bound_hand_computed():
    R = np.array([10.0] * 50 + [20.0] * 50)
    alpha, sigma, B = 0.05, 1.0, 0.5
    d = math.sqrt(math.log(1 / alpha) / 200)
    res = policy_smoothing_bound(R, B, sigma, alpha, return_min=0.0)
    lcb1, lcb2 = 1.0 - d, 0.5 - d
    expect = 10 * _norm.cdf(_norm.ppf(lcb1) - B / sigma) + \
        10 * _norm.cdf(_norm.ppf(lcb2) - B / sigma)
    assert res["certified_return"] == pytest.approx(expect, rel=1e-12)
    assert res["smoothed_mean_return"] == pytest.approx(15.0)
    assert res["dkw_margin"] == pytest.approx(d)
    # no budget: only the DKW slack remains; larger budget -> smaller bound
    r0 = policy_smoothing_bound(R, 0.0, sigma, alpha, 0.0)["certified_return"]
    assert r0 == pytest.approx(10 * lcb1 + 10 * lcb2)
    assert policy_smoothing_bound(R, 2.0, sigma, alpha, 0.0)["certified_return"] < expect < r0
    with pytest.raises(ValueError, match="below return_min"):
        policy_smoothing_bound(R, B, sigma, alpha, return_min=15.0)


def test_sdqn_median_bound_hand_computed():
    R = np.arange(1.0, 101.0)  # returns 1..100
    alpha, sigma, eps, H = 0.1, 1.0, 0.01, 100
    p = _norm.cdf(-eps * math.sqrt(H) / sigma) - math.sqrt(math.log(1 / alpha) / 200)
    res = sdqn_median_bound(R, eps, H, sigma, alpha)
    assert res["quantile"] == pytest.approx(p)
    assert res["median_return_bound"] == float(math.ceil(p * 100))
    assert sdqn_median_bound(R, 100.0, H, sigma, alpha)["median_return_bound"] == -math.inf
    # the shifted level below the DKW margin certifies nothing (not the smallest return)
    tiny = sdqn_median_bound(R, 0.2, H, sigma, alpha)
    assert tiny["quantile"] < 0 and tiny["median_return_bound"] == -math.inf
    # never above the median of the clean returns
    assert sdqn_median_bound(R, 0.0, H, sigma, alpha)["median_return_bound"] <= 50.5


def test_sdqn_median_bound_holds_on_a_simulated_attack():
    """Sanity by simulation: returns R = 1[x + sigma z > t] style, the attacker shifts the
    noise mean by the whole budget; the bound never exceeds the attacked median."""
    rng = np.random.default_rng(0)
    sigma, H, alpha = 1.0, 1, 0.01
    for eps in (0.0, 0.1, 0.3, 0.6):
        clean = rng.normal(0.0, sigma, 4000)  # return = the noisy observation itself
        bound = sdqn_median_bound(clean, eps, H, sigma, alpha)["median_return_bound"]
        attacked = rng.normal(-eps, sigma, 200_000)  # worst shift of the mean
        assert bound <= np.median(attacked) + 1e-9, (eps, bound, np.median(attacked))
    assert dkw_margin(200, 0.1) == pytest.approx(math.sqrt(math.log(10) / 400))


def test_pooled_acr():
    s = [{"steps": 10, "certified_steps": 10}, {"steps": 30, "certified_steps": 15}]
    assert pooled_acr(s) == pytest.approx(25 / 40)


def test_append_rows_atomic(tmp_path):
    p = tmp_path / "r.jsonl"
    append_rows_atomic(p, [{"a": 1}, {"b": float("inf")}])
    append_rows_atomic(p, [{"c": np.float32(2.5)}])
    assert read_rows(p) == [{"a": 1}, {"b": "inf"}, {"c": 2.5}]
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_interrupted_write_is_ignored_then_repaired(tmp_path):
    p = tmp_path / "r.jsonl"
    append_rows_atomic(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write('{"a": 2, "trunc')  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="unterminated last line"):
        assert read_rows(p) == [{"a": 1}]
    append_rows_atomic(p, [{"a": 3}])
    assert read_rows(p) == [{"a": 1}, {"a": 3}]
    assert p.read_text().endswith("\n")


def test_run_certify_records_resume_and_trajectory(tmp_path, cartpole):
    agent = cartpole
    out = tmp_path / "c.jsonl"
    st = CertifySettings(max_steps=25, smoothing=SmoothingConfig(n=100))
    res = run_certify(agent, SHIPPED, [0.001, 0.01], ["crown", "smoothing"], 2, out, st,
                      progress=False)
    assert res["written"] == 8 and res["skipped"] == 0
    rows = read_rows(out)
    states = [r for r in rows if r["record"] == "state"]
    eps_rows = [r for r in rows if r["record"] == "episode"]
    assert len(states) == 2 * 2 * 2 * 25 and len(eps_rows) == 8
    need = ("env_id", "env_version", "algo", "loss", "seed", "eps", "norm", "eps_space",
            "method", "certificate_kind", "action", "certified", "margin_lower", "radius",
            "time_s", "settings_hash")
    for r in states:
        assert all(k in r for k in need), [k for k in need if k not in r]
    for r in eps_rows:  # config, versions and settings: once per unit
        assert all(k in r for k in ("config", "versions", "settings", "threat_model"))
    sm = [r for r in states if r["method"] == "smoothing"]
    assert all(r["certificate_kind"] == "probabilistic" and r["n"] == 100 and
               r["bound_type"] == "l2" and r["eps_l2"] == pytest.approx(2 * r["eps"])
               for r in sm)
    for r in eps_rows:
        assert r["steps"] == 25 and r["return"] == 25.0
        assert r["certified_trajectory"] == (r["certified_steps"] == 25)
    # resume: nothing new; then one more episode only
    again = run_certify(agent, SHIPPED, [0.001, 0.01], ["crown", "smoothing"], 2, out, st,
                        progress=False)
    assert again["written"] == 0 and len(read_rows(out)) == len(rows)
    more = run_certify(agent, SHIPPED, [0.001, 0.01], ["crown"], 3, out, st, progress=False)
    assert more["written"] == 2 and more["skipped"] == 4
    # different settings on the same file -> clear error, file untouched
    before = out.read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        run_certify(agent, SHIPPED, [0.01], ["crown"], 1, out, CertifySettings(max_steps=5),
                    progress=False)
    assert out.read_bytes() == before


def test_trajectory_methods_policy_smoothing_and_gwc(tmp_path, cartpole):
    agent = cartpole
    out = tmp_path / "t.jsonl"
    st = CertifySettings(max_steps=20, ps_episodes=10, smoothing=SmoothingConfig(sigma=0.05))
    run_certify(agent, SHIPPED, [0.001], ["policy-smoothing", "gwc"], 1, out, st,
                progress=False)
    rows = read_rows(out)
    ps = [r for r in rows if r["record"] == "trajectory_bound"][0]
    assert ps["certificate_kind"] == "probabilistic" and ps["n"] == 10
    assert ps["policy_smoothing"]["budget_l2"] == pytest.approx(0.001 * 2 * math.sqrt(20))
    assert ps["certified_return"] <= ps["policy_smoothing"]["smoothed_mean_return"]
    gwc = [r for r in rows if r["method"] == "gwc"][0]
    assert gwc["certificate_kind"] == "heuristic" and "not a certificate" in gwc["note"]
    assert "certified" not in gwc


# -------------------------------------------------------------------- CLI
@has_shipped
def test_cli_certify_smoke_and_resume(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    args = ["certify", SHIPPED, "--eps", "0.005", "0.01", "--method", "ibp", "crown",
            "--episodes", "1", "--max-steps", "15", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    txt = capsys.readouterr().out
    assert "ACR" in txt and "4 units certified" in txt
    n = len(read_rows(out))
    assert main(args) == 0
    assert "0 units certified, 4 already" in capsys.readouterr().out
    assert len(read_rows(out)) == n
    for line in out.read_text().splitlines():
        json.loads(line)


@has_shipped
@pytest.mark.parametrize("extra,msg", [
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--eps", "0.1", "--method", "magic"], "unknown method"),
    (["--eps", "0.1", "--method", "exact", "--max-relus", "10"], "too large"),
    (["--eps", "0.1", "--method", "lipschitz"], "bounds.lipschitz layers"),
    (["--eps", "0.1", "--sigma", "0", "--method", "smoothing"], "sigma"),
])
def test_cli_certify_bad_input_no_output(tmp_path, capsys, extra, msg):
    out = tmp_path / "bad.jsonl"
    rc = main(["certify", SHIPPED, *extra, "--episodes", "1", "--out", str(out),
               "--no-progress"])
    assert rc != 0
    assert msg in capsys.readouterr().err
    assert not out.exists()


@has_shipped
def test_cli_certify_given_observations(tmp_path, capsys):
    good = tmp_path / "obs.npy"
    np.save(good, np.zeros((3, 4), dtype=np.float32))
    out = tmp_path / "o.jsonl"
    assert main(["certify", SHIPPED, "--obs", str(good), "--eps", "0.01", "--method", "crown",
                 "--out", str(out), "--no-progress"]) == 0
    rows = read_rows(out)
    assert sum(r["record"] == "state" for r in rows) == 3
    for name, arr, msg in (("nan", np.full((2, 4), np.nan), "NaN"),
                           ("shape", np.zeros((2, 5)), "do not match")):
        p = tmp_path / f"{name}.npy"
        np.save(p, arr)
        o = tmp_path / f"{name}.jsonl"
        assert main(["certify", SHIPPED, "--obs", str(p), "--eps", "0.01", "--out", str(o),
                     "--no-progress"]) == 2
        assert msg in capsys.readouterr().err
        assert not o.exists()


@has_shipped
def test_cli_policy_smoothing_prints_an_infinite_median_bound(tmp_path, capsys):
    """Few smoothed episodes give a -inf median bound; it is read back as "-inf" text."""
    out = tmp_path / "p.jsonl"
    args = ["certify", SHIPPED, "--eps", "0.01", "--method", "policy-smoothing",
            "--ps-episodes", "3", "--max-steps", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "median bound -inf" in capsys.readouterr().out


@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_episode_l2_budget_with_scale_holds_every_sampled_attack(norm):
    """B with a per-dimension scale bounds the stacked l2 norm of any per-step attack in
    the scaled set (sampled, corners included), is attained for l_inf (a corner), and
    agrees with ThreatModel.max_shift * sqrt(H)."""
    from certrl.threat import ThreatModel

    scale, eps, H = np.array([0.5, 2.0, 0.1]), 0.3, 7
    B = episode_l2_budget(eps, 3, H, norm, scale)
    tm = ThreatModel(norm=norm, eps=eps, space="raw observation", scale=tuple(scale))
    assert B == pytest.approx(tm.max_shift(eps, 2.0, 3) * math.sqrt(H))
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = rng.uniform(-1, 1, size=(H, 3))
        if norm == math.inf:
            u = np.sign(u) if rng.random() < 0.5 else u  # corners too
        else:
            u /= np.linalg.norm(u, ord=norm, axis=1, keepdims=True)  # on the sphere
        delta = eps * scale * u  # ||delta_t / scale||_norm <= eps
        assert np.linalg.norm(delta) <= B * (1 + 1e-12)
    corner = eps * scale * np.ones((H, 3))
    if norm == math.inf:
        assert np.linalg.norm(corner) == pytest.approx(B)
    # the plain ball is the scale of ones; a wrong-length scale is refused
    assert episode_l2_budget(eps, 3, H, norm, np.ones(3)) == pytest.approx(
        episode_l2_budget(eps, 3, H, norm))
    with pytest.raises(ValueError, match="scale"):
        episode_l2_budget(eps, 4, H, norm, scale)


def test_sdqn_median_bound_is_not_the_smallest_return_under_a_large_budget():
    """Clean returns 500 w.p. 0.98 and 0 w.p. 0.02: 20 samples often show only 500s. A
    budget of s = 2.5 noise units lets an attacker move P(R = 0) up to
    Phi(PhiInv(0.02) + 2.5) = 0.67 > 1/2, so the attacked median can be 0 and no bound
    above 0 is valid (the DKW term exceeds Phi(-2.5)); the old formula said 500."""
    res = sdqn_median_bound(np.full(20, 500.0), 2.5, 1, 1.0, 0.1)
    assert _norm.cdf(_norm.ppf(0.02) + 2.5) > 0.5
    assert res["median_return_bound"] == -math.inf
