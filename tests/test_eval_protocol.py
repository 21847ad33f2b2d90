"""Evaluation as the papers report it: GWC (IBP / CROWN bounds), ACR and mean certified
radius from IBP and CROWN, reward-scale undo in reported Q bounds, per-dimension eps in
every certify ball, the PGD-ref column, the 20-episode default."""

from __future__ import annotations

import argparse
import copy
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from certrl.attacks import make_attack
from certrl.certify import (
    RadiusConfig,
    SmoothingConfig,
    certify_states,
    get_method,
    method_names,
    run_certify,
)
from certrl.certify.methods import GWC_METHODS, CertifyOptions
from certrl.certify.run import CertifySettings
from certrl.certify.state import RadiusVerifier, in_reward_units, state_method
from certrl.certify.trajectory import gwc_action, gwc_rollout, rollout
from certrl.commands import attack as attack_cmd
from certrl.commands import certify as certify_cmd
from certrl.commands import evaluate as evaluate_cmd
from certrl.records import GWC_METHODS as RECORD_GWC_METHODS
from certrl.records import GwcRow, read_rows, row_from_json
from certrl.report import build_tables
from certrl.report.render import to_latex, to_markdown
from certrl.threat import ThreatModel

SHIPPED = "cartpole-dqn-vanilla"
SCALE = (2.0, 0.5, 0.05, 1.5)  # a per-dimension eps scale for CartPole's 4 inputs


# ------------------------------------------------------------------ GWC rule
def test_gwc_action_by_hand():
    """A = {a : UB_a >= max_j LB_j}; play argmin_{a in A} Q_a."""
    q = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    lb = torch.tensor([[0.0, 2.5, 1.0], [0.0, 2.5, 1.0], [4.0, -1.0, 0.0]])
    ub = torch.tensor([[1.5, 4.0, 2.6], [2.6, 4.0, 2.4], [6.0, 3.9, 4.0]])
    # state 0: max LB 2.5; a0 UB 1.5 < 2.5 out, a2 UB 2.6 in -> argmin{3, 2} = a2
    # state 1: a0 UB 2.6 in, a2 out -> argmin{1, 3} = a0
    # state 2: max LB 4.0; a1 out (3.9), a2 in (4.0) -> a2
    assert gwc_action(q, lb, ub) == [2, 0, 2]


def linear_agent(agent, W: np.ndarray, shift: float = 10.0):
    """The shipped agent's QNetwork with hand-set weights: Q(x) = W x exactly, with every
    ReLU pre-activation = x_i + shift > 0 on the trajectories, so IBP and CROWN bounds are
    exact: Q_a in [Q_a(x) - eps * sum_i |W_ai| s_i, Q_a(x) + eps * sum_i |W_ai| s_i]."""
    a = copy.deepcopy(agent)
    net = a.net
    l1, l2, head = net.body[0], net.body[2], net.head
    with torch.no_grad():
        for lin in (l1, l2, head):
            lin.weight.zero_()
            lin.bias.zero_()
        for i in range(4):
            l1.weight[i, i] = 1.0
            l1.bias[i] = shift
            l2.weight[i, i] = 1.0
        head.weight[:, :4] = torch.as_tensor(W, dtype=torch.float32)
        head.bias[:] = -torch.as_tensor(W, dtype=torch.float32).sum(1) * shift
    return a


def hand_gwc_return(agent, W: np.ndarray, eps: float, scale, seed: int, max_steps: int):
    """GWC played by hand on CartPole (env seed ``seed``), exact interval bounds."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    s = np.ones(4) if scale is None else np.asarray(scale)
    width = eps * (np.abs(W) * s).sum(axis=1)
    total, steps, changed = 0.0, 0, 0
    while steps < max_steps:
        x = agent.preprocess(obs[None]).double().numpy()[0]
        assert (x + 10.0 > eps * s.max() + 1e-3).all()  # every ReLU stays active
        q = W @ x
        lb, ub = q - width, q + width
        possible = ub >= lb.max()
        a = int(np.argmin(np.where(possible, q, np.inf)))
        changed += int(a != int(np.argmax(q)))
        obs, r, term, trunc, _ = env.step(a)
        total, steps = total + r, steps + 1
        if term or trunc:
            break
    return total, steps, changed


@pytest.mark.parametrize("scale", [None, SCALE])
@pytest.mark.parametrize("bounds_method", ["ibp", "crown"])
def test_gwc_matches_a_hand_computed_rollout(cartpole, scale, bounds_method):
    """GWC on a hand-made linear Q network: same return and changed-step count as the
    rule applied by hand with exact bounds (IBP and CROWN are exact here)."""
    c = np.array([0.1, 0.5, 10.0, 2.0])  # push right iff c . x > 0: balances the pole
    W = np.stack([-c / 2, c / 2])
    agent = linear_agent(cartpole, W)
    if scale is not None:
        agent.threat_model = agent.threat_model.with_scale(scale)
    changed = []
    for seed in ((0, 1) if bounds_method == "ibp" else (0,)):  # CROWN per step is slower
        want = hand_gwc_return(agent, W, 0.05, scale, seed, 200)
        got = gwc_rollout(agent, 0.05, bounds_method, seed=seed, max_steps=200)[0]
        assert (got["return"], got["steps"]) == want[:2]
        assert got["gwc_changed_fraction"] == pytest.approx(want[2] / want[1])
        changed.append(want[2])
    assert min(changed) > 0  # GWC did change actions (the test can fail)


def test_gwc_methods_in_registry_rows_and_tables(tmp_path, cartpole):
    """gwc-ibp / gwc-crown run from run_certify, write GwcRows with their bound method and
    land in distinct, labelled table columns."""
    assert set(RECORD_GWC_METHODS) == set(GWC_METHODS) == {"gwc", "gwc-ibp", "gwc-crown"}
    assert get_method("gwc-ibp").bounds_for(CertifySettings()) == "ibp"
    assert get_method("gwc-crown").bounds_for(CertifySettings()) == "crown"
    assert get_method("gwc").bounds_for(CertifySettings(gwc_method="crown")) == "crown"
    out = tmp_path / "gwc.jsonl"
    st = CertifySettings(max_steps=40)
    run_certify(cartpole, SHIPPED, [0.05], ["gwc-ibp", "gwc-crown"], 2, out, st,
                progress=False)
    rows = [r for r in read_rows(out) if r["record"] == "episode"]
    assert {r["method"]: r["gwc_bounds"] for r in rows} == {"gwc-ibp": "ibp",
                                                           "gwc-crown": "crown"}
    assert all(isinstance(row_from_json(r), GwcRow) for r in rows)
    assert all(r["certificate_kind"] == "heuristic" for r in rows)
    md = to_markdown(build_tables(rows))
    assert "GWC (IBP, heuristic) l∞ @0.05" in md and "GWC (CROWN, heuristic) l∞ @0.05" in md
    assert "GWC (IBP, heuristic)" in to_latex(build_tables(rows))


# ------------------------------------------------------------ ACR and radius
@pytest.fixture
def states(cartpole):
    return rollout(cartpole, 1, seed=0, max_steps=12)[0].x


def test_acr_and_radius_ibp_below_crown_and_verified(cartpole, states):
    """On the shipped vanilla agent CROWN is tighter than IBP: IBP's ACR and radii are at
    most CROWN's (up to the bisection tolerance), and every reported radius verifies."""
    net, tm = cartpole.bounded_form(), cartpole.threat_model
    opts = CertifyOptions(radius=RadiusConfig(rtol=0.01))
    res = {m: certify_states(net, states, [0.005, 0.02], m, threat=tm, options=opts)
           for m in ("ibp", "crown")}
    for a, b in zip(res["ibp"], res["crown"]):
        assert a.certified.mean() <= b.certified.mean()
    r_ibp, r_crown = res["ibp"][0].radius, res["crown"][0].radius
    assert (r_ibp <= r_crown * 1.011 + 1e-12).all()
    assert r_ibp.mean() < r_crown.mean()
    for m, r in (("ibp", r_ibp), ("crown", r_crown)):
        meth = state_method(m)
        check = RadiusVerifier(meth, meth.prepare(net, opts), states,
                               net(states).argmax(1), tm, opts)
        pos = np.flatnonzero(r > 0)
        assert pos.size and check(pos, r[pos]).all()
        assert not check(pos, r[pos] * 1.03).all()  # the search went close to the edge


def sample_scaled_box(x: torch.Tensor, r: np.ndarray, scale, n: int, seed: int = 0):
    """n points per state in the box |x' - x|_i <= r * s_i, corners included."""
    g = torch.Generator().manual_seed(seed)
    s = torch.as_tensor(scale, dtype=x.dtype)
    half = torch.as_tensor(r, dtype=x.dtype)[:, None] * s
    u = torch.rand(x.shape[0], n, x.shape[1], generator=g) * 2 - 1
    u[:, : n // 4] = u[:, : n // 4].sign()  # corners of the box
    return x[:, None, :] + u * half[:, None, :]


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_per_dimension_radius_is_sound(cartpole, states, method):
    """With ThreatModel.scale the radius is in units of the scale: sampled points of the
    scaled box at the certified radius never change the action, and PGD with the scaled
    projection never flips a certified action; the scale changes the radius."""
    net = cartpole.bounded_form()
    tm = cartpole.threat_model.with_scale(SCALE)
    cert = certify_states(net, states, 0.01, method, threat=tm)[0]
    plain = certify_states(net, states, 0.01, method, threat=cartpole.threat_model)[0]
    assert not np.allclose(cert.radius, plain.radius)
    r = cert.radius
    pts = sample_scaled_box(states, r, SCALE, 400)
    with torch.no_grad():
        acts = net(pts.reshape(-1, 4)).argmax(1).reshape(pts.shape[:2])
    assert (acts == torch.as_tensor(cert.action)[:, None]).all()
    # PGD (ours and the references') inside the certified scaled box keeps the action
    for name in ("pgd", "pgd-ref"):
        for i in np.flatnonzero(r > 0):
            atk = make_attack(name, net, tm.with_eps(float(r[i])), float(r[i]), steps=20,
                              objective="margin")
            xa = atk(states[i:i + 1])
            d = ((xa - states[i:i + 1]).abs() / torch.tensor(SCALE)).max()
            assert float(d) <= r[i] * (1 + 1e-5) + 1e-6  # float32 rounding of x + delta
            assert int(net(xa).argmax(1)) == int(cert.action[i])
    # and a radius well above the certified one is refused
    big = certify_states(net, states, float(r.max() * 4), method, threat=tm,
                         options=CertifyOptions(radius=False))[0]
    assert not big.certified.all()


def test_scaled_threat_smoothing_conversion(cartpole, states):
    """Smoothing converts the scaled l_inf box to the l2 ball of radius eps * ||scale||_2."""
    tm = cartpole.threat_model.with_scale(SCALE)
    opts = CertifyOptions(smoothing=SmoothingConfig(sigma=0.05, n0=20, n=200))
    res = certify_states(cartpole.bounded_form(), states[:3], 0.01, "smoothing", threat=tm,
                         options=opts)[0]
    assert res.extra["eps_l2"] == pytest.approx(0.01 * float(np.linalg.norm(SCALE)))
    assert "||scale||_2" in res.extra["conversion"]
    ok = res.action >= 0
    assert np.allclose(res.radius[ok] * np.linalg.norm(SCALE),
                       res.extra["radius_l2"][ok], rtol=1e-6)


def test_scale_in_rows_and_caption(tmp_path, cartpole):
    """Every row's eps space names the scale, so the table caption prints it."""
    agent = copy.deepcopy(cartpole)
    agent.threat_model = agent.threat_model.with_scale(SCALE)
    out = tmp_path / "c.jsonl"
    run_certify(agent, "scaled", [0.01], ["ibp"], 1, out,
                CertifySettings(max_steps=5, state_rows=False), progress=False)
    rows = read_rows(out)
    assert "(2, 0.5, 0.05, 1.5)" in rows[0]["eps_space"]
    assert rows[0]["threat_model"]["scale"] == list(SCALE)
    assert "eps scaled per input dimension by (2, 0.5, 0.05, 1.5)" in \
        build_tables(rows)[0].caption()


# ------------------------------------------------------------ reward scale
def test_reported_q_bounds_are_in_true_reward_units(tmp_path, cartpole):
    """A DQN whose rewards were multiplied by s reports Q / s: the same network certified
    with reward_scale 1 and 4 gives bounds that differ by exactly the factor 4, and the
    same actions, certificates and radii."""
    rows = {}
    for s in (1.0, 4.0):
        agent = copy.deepcopy(cartpole)
        agent.reward_scale = s
        out = tmp_path / f"q{s}.jsonl"
        run_certify(agent, SHIPPED, [0.01], ["crown"], 1, out,
                    CertifySettings(max_steps=6), progress=False)
        rows[s] = [r for r in read_rows(out) if r["record"] == "state"]
    for a, b in zip(rows[1.0], rows[4.0]):
        assert b["reward_scale"] == 4.0
        for k in ("output", "q_lower", "q_upper", "margin_lower_all"):
            assert np.allclose(np.asarray(b[k], dtype=float) * 4, np.asarray(a[k], dtype=float),
                               rtol=1e-9)
        for k in ("value_lower", "value_upper", "worst_value", "margin_lower"):
            assert b[k] * 4 == pytest.approx(a[k], rel=1e-9)
        assert (a["certified"], a["radius"], a["action"]) == \
            (b["certified"], b["radius"], b["action"])


def test_in_reward_units_rejects_bad_scale(cartpole, states):
    cert = certify_states(cartpole.bounded_form(), states[:2], 0.01, "ibp")[0]
    with pytest.raises(ValueError, match="reward_scale"):
        in_reward_units(cert, 0.0)
    assert in_reward_units(cert, 2.0).output == pytest.approx(cert.output / 2)


# ------------------------------------------------------------ CLI and tables
@pytest.mark.parametrize("mod,argv", [
    (certify_cmd, ["certify", "x", "--eps", "0.01"]),
    (evaluate_cmd, ["evaluate", "x"]),
    (attack_cmd, ["attack", "x", "--eps", "0.01"]),
])
def test_twenty_episodes_by_default(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_parser(p.add_subparsers())
    assert p.parse_args(argv).episodes == 20
    assert p.parse_args([*argv, "--episodes", "3"]).episodes == 3


def test_cli_lists_gwc_methods_and_pgd_ref():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    certify_cmd.add_parser(sub)
    attack_cmd.add_parser(sub)
    assert {"gwc-ibp", "gwc-crown"} <= set(method_names("trajectory"))
    assert p.parse_args(["certify", "x", "--eps", "0.1", "--method", "gwc-ibp",
                         "gwc-crown"]).method == ["gwc-ibp", "gwc-crown"]
    assert p.parse_args(["attack", "x", "--eps", "0.1", "--attack", "pgd-ref"]).attack == \
        "pgd-ref"


def _row(**kw):
    base = {"env_id": "CartPole-v1", "env_version": "v1", "algo": "dqn", "loss": "vanilla",
            "seed": 0, "agent_id": "a" * 64, "norm": "inf", "eps_space": "raw observation",
            "episode_seed": 0, "episode": 0}
    return {**base, **kw}


def test_table_columns_for_the_papers_protocol():
    rows = [_row(record="episode", attack="none", eps=0.0, **{"return": 500.0})]
    for name, ret in (("pgd", 100.0), ("pgd-ref", 400.0)):
        rows.append(_row(record="episode", source="attack", attack=name, eps=0.05,
                         attack_steps=10, **{"return": ret}))
    for m, frac, rad in (("ibp", 0.2, 0.01), ("crown", 0.6, 0.03)):
        rows.append(_row(record="episode", source="certify", method=m, eps=0.05,
                         certificate_kind="sound", steps=100, certified_steps=int(frac * 100),
                         certified_fraction=frac, mean_radius=rad, **{"return": 500.0}))
    for m, g in (("gwc-ibp", 10.0), ("gwc-crown", 300.0)):
        rows.append(_row(record="episode", source="certify", method=m, eps=0.05,
                         certificate_kind="heuristic", gwc_return=g, gwc_bounds=m[4:]))
    t = build_tables(json.loads(json.dumps(rows)))[0]
    md = to_markdown([t])
    for head in ("PGD l∞ @0.05", "PGD-ref l∞ @0.05", "ACR (IBP) l∞ @0.05",
                 "ACR (CROWN) l∞ @0.05", "Mean radius (IBP) l∞", "Mean radius (CROWN) l∞",
                 "GWC (IBP, heuristic) l∞ @0.05", "GWC (CROWN, heuristic) l∞ @0.05"):
        assert head in md, head
    assert "| 500.0 ± 0.0 | 100.0 ± 0.0 | 400.0 ± 0.0 | 0.200 ± 0.000 | 0.600 ± 0.000 | " \
           "0.0100 ± 0.0000 | 0.0300 ± 0.0000 | 10.0 ± 0.0 | 300.0 ± 0.0 |" in md
    assert "PGD-ref = the references' PGD" in t.caption()
    assert "not a certificate" in t.caption()
    assert math.isfinite(t.rows[0].cells[t.columns[-1]].center)


@pytest.mark.parametrize("method", ["exact", "lipschitz"])
def test_scaled_radius_exact_and_lipschitz(method):
    """Exact (MILP on the scaled box) and Lipschitz (the scaled box inside the plain box
    of radius eps * max(scale)) radii under a scale: sound by sampling; exact >= crown;
    Lipschitz = its plain closed-form radius / max(scale)."""
    import bounds

    torch.manual_seed(0)
    if method == "exact":
        net = torch.nn.Sequential(torch.nn.Linear(4, 12), torch.nn.ReLU(),
                                  torch.nn.Linear(12, 3)).eval()
    else:
        net = bounds.LipschitzMLP(4, 3, hidden=8, depth=2).eval()
    x = torch.randn(5, 4)
    tm = ThreatModel(scale=SCALE)
    cert = certify_states(net, x, 0.05, method, threat=tm)[0]
    if method == "exact":
        crown = certify_states(net, x, 0.05, "crown", threat=tm)[0]
        assert (cert.radius >= crown.radius * (1 - 0.011)).all()
    else:
        plain = certify_states(net, x, 0.05, method, threat=ThreatModel())[0]
        assert cert.radius == pytest.approx(plain.radius / max(SCALE), rel=1e-3)
    pts = sample_scaled_box(x, cert.radius, SCALE, 500)
    with torch.no_grad():
        acts = net(pts.reshape(-1, 4)).argmax(1).reshape(pts.shape[:2])
    assert (acts == torch.as_tensor(cert.action)[:, None]).all()


# ------------------------------------------------- the papers' ACR (ibp-ref)
def test_ibp_ref_is_radials_per_action_rule(cartpole, states):
    """ibp-ref certifies a* iff LB_a* > max_{j != a*} UB_j with per-action IBP bounds
    (RADIAL's eval_action_cert_rate): its margins are LB_a* - UB_j (less the rounding
    allowance) and never exceed ibp's margin bounds; a certified state keeps its action
    at sampled points of the (scaled) box; ACR and radius are <= ibp's."""
    import bounds

    net = cartpole.bounded_form()
    for tm in (cartpole.threat_model, cartpole.threat_model.with_scale(SCALE)):
        ball = tm.ball(states, 0.01)
        labels = net(states).argmax(1)
        bn = bounds.bind(net)
        ref, _ = get_method("ibp-ref").margins(bn, ball, labels, CertifyOptions())
        lb, ub = bn.compute(ball, method="ibp")
        hand = lb.double().gather(1, labels[:, None]) - ub.double()
        own = torch.nn.functional.one_hot(labels, ref.shape[1]).bool()
        assert torch.isinf(ref[own]).all()
        assert torch.allclose(ref[~own], hand[~own], atol=1e-3)
        assert (ref[~own] < hand[~own]).all()  # the rounding allowance is subtracted
        ibp, _ = get_method("ibp").margins(bn, ball, labels, CertifyOptions())
        assert (ref[~own] <= ibp[~own] + 1e-9).all()
        a = certify_states(net, states, [0.002, 0.01], "ibp-ref", threat=tm)
        b = certify_states(net, states, [0.002, 0.01], "ibp", threat=tm)
        for x, y in zip(a, b):
            assert x.certified.sum() <= y.certified.sum()
        assert (a[0].radius <= b[0].radius * 1.011 + 1e-12).all()
        r = a[0].radius
        s = tm.scale or (1.0,) * 4
        pts = sample_scaled_box(states, r, s, 300)
        with torch.no_grad():
            acts = net(pts.reshape(-1, 4)).argmax(1).reshape(pts.shape[:2])
        assert (acts == torch.as_tensor(a[0].action)[:, None]).all()


def test_ibp_ref_column_in_table(tmp_path, cartpole):
    out = tmp_path / "c.jsonl"
    run_certify(cartpole, SHIPPED, [0.005], ["ibp", "ibp-ref"], 1, out,
                CertifySettings(max_steps=20, state_rows=False), progress=False)
    md = to_markdown(build_tables(read_rows(out)))
    assert "ACR (IBP-ref) l∞ @0.005" in md and "Mean radius (IBP-ref) l∞" in md
    assert "IBP-ref (sound)" in md


# ------------------------------------------------------------ --eps-scale
@pytest.mark.parametrize("mod,argv", [
    (certify_cmd, ["certify", "x", "--eps", "0.01"]),
    (evaluate_cmd, ["evaluate", "x"]),
    (attack_cmd, ["attack", "x", "--eps", "0.01"]),
])
def test_eps_scale_option_parses(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_parser(p.add_subparsers())
    assert p.parse_args(argv).eps_scale == "agent"
    assert p.parse_args([*argv, "--eps-scale", "ref"]).eps_scale == "ref"
    assert p.parse_args([*argv, "--eps-scale", "1,2.5"]).eps_scale == (1.0, 2.5)
    for bad in ("foo", "1,-2", "0"):
        with pytest.raises(SystemExit):
            p.parse_args([*argv, "--eps-scale", bad])


def test_apply_eps_scale(cartpole):
    from certrl.agent import load
    from certrl.evaluate import apply_eps_scale
    from certrl.identity import agent_identity
    from certrl.obs_stats import reference_std

    base = agent_identity(load(SHIPPED))
    a = apply_eps_scale(load(SHIPPED), "ref")
    assert a.threat_model.scale == tuple(reference_std("CartPole-v1"))
    assert agent_identity(a) != base  # the threat model is part of the identity
    assert apply_eps_scale(load(SHIPPED), "none").threat_model.scale is None
    assert agent_identity(apply_eps_scale(load(SHIPPED), "none")) == base
    assert apply_eps_scale(load(SHIPPED), SCALE).threat_model.scale == SCALE
    assert apply_eps_scale(a, "agent") is a and a.threat_model.scale == \
        tuple(reference_std("CartPole-v1"))
    with pytest.raises(ValueError, match="4 elements"):
        apply_eps_scale(load(SHIPPED), (1.0, 2.0))
    with pytest.raises(ValueError, match="already computed"):  # a stale cached identity
        apply_eps_scale(a, SCALE)
    assert a.threat_model.scale == tuple(reference_std("CartPole-v1"))  # left unchanged


def test_cli_eps_scale_end_to_end(tmp_path):
    """evaluate, attack and certify with --eps-scale ref: one agent identity, one row, the
    reference std in the caption, and ACR under the scale differs from the plain ball."""
    from certrl.cli import main

    threads = torch.get_num_threads()  # the commands set it (--threads, default 1)
    try:
        _eps_scale_cli(main, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _eps_scale_cli(main, tmp_path):
    files = [tmp_path / n for n in ("e.jsonl", "a.jsonl", "c.jsonl", "p.jsonl")]
    common = ["--episodes", "1", "--max-steps", "30", "--eps-scale", "ref"]
    assert main(["evaluate", SHIPPED, *common, "--out", str(files[0])]) == 0
    assert main(["attack", SHIPPED, "--attack", "pgd-ref", "--eps", "0.05", *common,
                 "--out", str(files[1])]) == 0
    for f, extra in ((files[2], common), (files[3], common[:4])):
        assert main(["certify", SHIPPED, "--eps", "0.05", "--method", "crown",
                     "--no-progress", *extra, "--out", str(f)]) == 0
    scaled = build_tables([r for f in files[:3] for r in read_rows(f)])
    assert len(scaled) == 1 and len(scaled[0].rows) == 1
    assert "eps scaled per input dimension by (0.732, 1.06, 0.122, 0.439)" in \
        scaled[0].caption()
    assert {c.group for c in scaled[0].columns} == {"natural", "attack", "acr", "radius"}
    radius = {f: read_rows(f)[-1]["mean_radius"] for f in files[2:]}
    assert radius[files[2]] != pytest.approx(radius[files[3]], rel=0.05)


def test_demo_common_scale(capsys):
    from types import SimpleNamespace

    from certrl.commands.demo import common_scale

    def fake(scale):
        return SimpleNamespace(threat_model=ThreatModel(scale=scale))

    assert common_scale([fake(None), fake(None)]) == "none"
    assert common_scale([fake(None), fake(SCALE)]) == SCALE
    assert common_scale([fake(SCALE), fake((1.0,) * 4)]) == SCALE
    assert "different eps scales" in capsys.readouterr().err


def test_demo_quick_with_eps_scale(tmp_path, cartpole):
    from certrl.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--quick", "--agents", SHIPPED, "--eps-scale", "ref",
                     "--methods", "ibp-ref", "--gwc", "gwc-ibp", "--attacks", "pgd-ref",
                     "--no-progress", "--out", str(tmp_path / "d")]) == 0
    finally:
        torch.set_num_threads(threads)
    md = (tmp_path / "d" / "table.md").read_text()
    assert "eps scaled per input dimension by (0.732, 1.06, 0.122, 0.439)" in md
    for head in ("ACR (IBP-ref)", "GWC (IBP, heuristic)", "PGD-ref"):
        assert head in md
