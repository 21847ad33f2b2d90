"""The certificate-method registry and certify_states through a ThreatModel.

``golden/certify_states_reference.json`` holds results of ``certify_states``
computed with the code before the registry / ThreatModel refactor (issue 10):
margins, radii, output bounds and certified flags must be unchanged.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bounds
from certrl.certify import (
    METHODS,
    CertifyOptions,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    certified_radius,
    certify_states,
    get_method,
    method_names,
)
from certrl.certify.methods import state_method
from certrl.commands import certify as certify_cmd
from certrl.threat import ThreatModel

REF = Path(__file__).parent / "golden" / "certify_states_reference.json"
EXPECTED = {  # name: (kind, latex, norms, level)
    "ibp": ("sound", "IBP", {math.inf, 2.0, 1.0}, "state"),
    "ibp-ref": ("sound", "IBP-ref", {math.inf, 2.0, 1.0}, "state"),
    "crown-ibp": ("sound", "CROWN-IBP", {math.inf, 2.0, 1.0}, "state"),
    "crown": ("sound", "CROWN", {math.inf, 2.0, 1.0}, "state"),
    "alpha-crown": ("sound", r"$\alpha$-CROWN", {math.inf, 2.0, 1.0}, "state"),
    "lipschitz": ("sound", "Lipschitz", {math.inf}, "state"),
    "exact": ("sound", "MILP", {math.inf}, "state"),
    "bab": ("exact", "BaB", {math.inf}, "state"),
    "smoothing": ("probabilistic", "RS", {math.inf, 2.0}, "state"),
    "policy-smoothing": ("probabilistic", "PS", {math.inf, 2.0}, "trajectory"),
    "gwc-ibp": ("heuristic", "GWC (IBP, heuristic)", {math.inf, 2.0, 1.0}, "trajectory"),
    "gwc-crown": ("heuristic", "GWC (CROWN, heuristic)", {math.inf, 2.0, 1.0}, "trajectory"),
    "gwc": ("heuristic", "GWC", {math.inf, 2.0, 1.0}, "trajectory"),
}


def mlp(seed, din=4, w=12, dout=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(din, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                         nn.Linear(w, dout)).eval()


def test_registry_round_trip_and_attributes():
    assert set(METHODS) == set(EXPECTED)
    for name, (kind, latex, norms, level) in EXPECTED.items():
        m = get_method(name)
        assert m.name == name and METHODS[name] is m
        assert (m.kind, m.latex, set(m.norms), m.level) == (kind, latex, norms, level)
        assert m.label
    assert method_names("state") + method_names("trajectory") == method_names()


@pytest.mark.parametrize("name", ["cRoWn", "milp", "", None, 3])
def test_unknown_method_lists_the_registry(name):
    with pytest.raises(ValueError) as err:
        get_method(name)
    for known in METHODS:
        assert known in str(err.value)


def test_trajectory_method_is_not_a_state_method():
    with pytest.raises(ValueError, match="whole episodes"):
        state_method("gwc")
    with pytest.raises(ValueError, match="whole episodes"):
        certify_states(mlp(0), torch.zeros(2, 4), 0.1, "policy-smoothing")


def test_cli_help_lists_exactly_the_registry():
    parser = argparse.ArgumentParser()
    certify_cmd.add_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["certify"]  # noqa: SLF001
    action = next(a for a in sub._actions if a.dest == "method")  # noqa: SLF001
    listed = action.help.split("one or more of ")[1].split(" (default")[0].split(", ")
    assert listed == list(method_names())
    desc = sub.description
    for name in METHODS:
        assert name in desc
    assert "gwc (heuristic" in desc and "smoothing, policy-smoothing (probabilistic)" in desc


@pytest.mark.parametrize("method,norm", [("lipschitz", 2.0), ("exact", 2.0), ("exact", 1.0),
                                         ("smoothing", 1.0)])
def test_unsupported_norm_is_refused_clearly(method, norm):
    net = bounds.LipschitzMLP(4, 3, hidden=8, depth=2).eval() if method == "lipschitz" \
        else mlp(0)
    with pytest.raises(ValueError, match=f"{method} certificates are for the .*norm"):
        certify_states(net, torch.zeros(2, 4), 0.1, method, threat=ThreatModel(norm=norm))


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), "x", [], [0.1, -1.0]])
def test_eps_checked_at_the_edge(eps):
    with pytest.raises(ValueError, match="eps"):
        certify_states(mlp(0), torch.zeros(2, 4), eps, "ibp")


def test_settings_come_from_the_method():
    opts = CertifyOptions(backend="native", alpha_iterations=7,
                          exact=ExactConfig(max_relus=9))
    assert get_method("crown").settings(opts)["backend"] == "native"
    assert get_method("alpha-crown").settings(opts)["alpha_iterations"] == 7
    assert get_method("exact").settings(opts)["exact"]["max_relus"] == 9
    assert "radius" not in get_method("smoothing").settings(opts)
    assert "batch_size" not in get_method("smoothing").settings(opts)["smoothing"]


def _options(case):
    if case["method"] == "smoothing":
        return CertifyOptions(smoothing=SmoothingConfig(n0=50, n=300), seed=7)
    if case.get("kind") == "continuous":
        return CertifyOptions(deviation_tol=0.5)
    return CertifyOptions(radius=RadiusConfig(rtol=0.02, max_iter=8), alpha_iterations=5,
                          backend="native", exact=ExactConfig(max_relus=100))


def _net(case):
    if case["method"] == "lipschitz":
        torch.manual_seed(3)
        return bounds.LipschitzMLP(4, 3, hidden=16, depth=3).eval()
    return mlp(2, dout=2) if case.get("kind") == "continuous" else mlp(0)


REF_CASES = json.loads(REF.read_text())


@pytest.mark.parametrize("i", range(len(REF_CASES["cases"])))
def test_same_numbers_as_before_the_refactor(i):
    case = REF_CASES["cases"][i]
    x = torch.tensor(REF_CASES["x"])
    threat = ThreatModel(norm=case["norm"], lower=case["lower"], upper=case["upper"])
    got = certify_states(_net(case), x, case["eps"], case["method"],
                         kind=case.get("kind", "discrete"), threat=threat,
                         options=_options(case))
    for res, ref in zip(got, case["results"], strict=True):
        for key, want in ref.items():
            have = np.asarray(getattr(res, key), dtype=float)
            # atol 1e-6: float32 sums in another order (torch thread count; the CLI sets
            # it to 1) move output bounds of size ~0.1 by ~1e-8; a refactor bug moves more
            np.testing.assert_allclose(have, np.asarray(want, dtype=float), rtol=1e-6,
                                       atol=1e-6, err_msg=f"{case['method']} {key}")


def test_certified_radius_matches_direct_bounds_calls():
    net, x = mlp(0), torch.tensor(REF_CASES["x"])
    labels = net(x).argmax(1)
    threat = ThreatModel(norm=2.0)
    opts = CertifyOptions(radius=RadiusConfig(init=0.05, rtol=0.01), backend="native")
    r, _ = certified_radius(net, x, labels, "crown", threat=threat, options=opts)
    for b in range(len(x)):
        if r[b] == 0:
            continue
        ball = bounds.LpBall(x[b:b + 1], float(r[b]), norm=2.0)
        ml = bounds.margin_lower(net, ball, labels[b:b + 1], method="crown", backend="native")
        assert (ml > 0).all()
        ball = bounds.LpBall(x[b:b + 1], float(r[b]) * 1.03, norm=2.0)
        ml = bounds.margin_lower(net, ball, labels[b:b + 1], method="crown", backend="native")
        assert not (ml > 0).all()


def test_rows_record_the_backend_that_ran():
    """backend "auto" resolves per network; the certificate says which engine bounded it."""
    from certrl.certify import certify_states

    x = torch.randn(3, 4)
    native = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    leaky = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(), nn.Linear(8, 3)).eval()
    for net, want in ((native, "native"), (leaky, "lirpa")):
        for method in ("crown", "ibp-ref"):
            res = certify_states(net, x, 0.01, method, options=CertifyOptions(radius=False))[0]
            assert res.extra["bound_backend"] == want
            assert res.state_row(0)["bound_backend"] == want
