"""The smoothed agent: majority vote of the base agent under the same seeded noise, mean-Q
mode, determinism, attack surrogate, CLI; the policy-smoothing bound's monotonicity."""

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from bounds.smoothing import certify as smoothing_certify
from certrl.attacks import make_attack
from certrl.certify import CertifyOptions, SmoothingConfig
from certrl.certify.state import certify_states
from certrl.certify.trajectory import policy_smoothing_bound
from certrl.cli import main
from certrl.denoiser import (
    Denoiser,
    DenoiserConfig,
    compose,
    denoised_agent,
    denoiser_loss,
    train_denoiser,
)
from certrl.evaluate import evaluate
from certrl.identity import agent_identity
from certrl.smoothed import SmoothedAgent, agent_smoothing_sigma, seeded_noise, smoothed


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one torch thread (``conftest.one_thread``)."""


def _states(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 4), generator=g) * torch.tensor([0.5, 0.5, 0.05, 0.3])


def test_action_is_the_majority_vote_of_the_base_under_the_same_noise(frozen_cartpole):
    base = frozen_cartpole
    sm = SmoothedAgent(base, sigma=0.3, samples=51, seed=7)
    x = _states()
    z = seeded_noise(x, 51, 0.3, 7, "act")  # the noise the smoothed agent draws
    base_actions = base.act((x[:, None] + z).reshape(-1, 4)).reshape(12, 51)
    counts = np.stack([(base_actions == k).sum(1) for k in range(2)], 1)
    assert np.array_equal(sm.act(x), counts.argmax(1))
    assert np.array_equal(sm.votes(x).numpy(), counts)
    # noise that splits the votes: some states are not unanimous, so the vote is not trivial
    assert ((counts > 0).sum(1) == 2).any()
    # same state, same noise, same action (any batch position); another seed draws other noise
    assert np.array_equal(sm.act(x[3:4]), sm.act(x)[3:4])
    assert not torch.equal(z, seeded_noise(x, 51, 0.3, 8, "act"))
    assert z.std().item() == pytest.approx(0.3, rel=0.05)


def test_ties_go_to_the_lowest_action_and_mean_q_mode(frozen_cartpole):
    sm = SmoothedAgent(frozen_cartpole, sigma=0.3, samples=2, seed=1)
    x = _states(40)
    v = sm.votes(x)
    tie = (v[:, 0] == v[:, 1])
    assert np.array_equal(sm.act(x)[tie.numpy()], np.zeros(int(tie.sum()), dtype=np.int64))
    mq = SmoothedAgent(frozen_cartpole, sigma=0.3, samples=30, mode="mean-q", seed=1)
    z = seeded_noise(x, 30, 0.3, 1, "act")
    q = frozen_cartpole.forward((x[:, None] + z).reshape(-1, 4)).reshape(40, 30, 2).mean(1)
    assert np.array_equal(mq.act(x), q.argmax(1).numpy())


def test_identity_settings_and_errors(frozen_cartpole):
    a = SmoothedAgent(frozen_cartpole, sigma=0.2, samples=10)
    b = SmoothedAgent(frozen_cartpole, sigma=0.3, samples=10)
    ids = {agent_identity(frozen_cartpole), agent_identity(a), agent_identity(b)}
    assert len(ids) == 3
    assert smoothed(frozen_cartpole).smoothing.sigma == 0.1  # no training sigma: 0.1
    with pytest.raises(ValueError, match="bounded form"):
        a.bounded_form()
    with pytest.raises(ValueError, match="not saved"):
        a.save("/tmp/never.pt")
    with pytest.raises(ValueError, match="mode"):
        SmoothedAgent(frozen_cartpole, sigma=0.2, mode="median")
    with pytest.raises(ValueError, match="sigma"):
        SmoothedAgent(frozen_cartpole, sigma=0.0)


def test_attack_surrogate_is_the_mean_q_over_noise_and_attacks_run(frozen_cartpole):
    sm = SmoothedAgent(frozen_cartpole, sigma=0.2, samples=20, attack_samples=8)
    x = _states(3).requires_grad_(True)
    out = sm.forward(x)
    z = seeded_noise(x, 8, 0.2, 0, "attack")
    want = frozen_cartpole.forward((x[:, None] + z).reshape(-1, 4)).reshape(3, 8, 2).mean(1)
    assert torch.allclose(out, want)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    tm = frozen_cartpole.threat_model.with_eps(0.05)
    atk = make_attack("pgd", sm.forward, tm, 0.05, 5, None, 0, "discrete", "ce")
    xa = atk(x.detach())
    assert (xa - x.detach()).abs().max() <= 0.05 + 1e-6
    res = evaluate(sm, episodes=1, attack=atk, max_steps=30)
    assert res.lengths[0] <= 30


def test_cli_evaluate_smoothed(tmp_path, capsys):
    out = tmp_path / "ev.jsonl"
    rc = main(["evaluate", "cartpole-dqn-vanilla", "--smoothed", "--sigma", "0.1", "--samples",
               "20", "--episodes", "1", "--max-steps", "40", "--out", str(out)])
    assert rc == 0 and "smoothed (vote, sigma 0.1, 20 samples)" in capsys.readouterr().out
    rc = main(["evaluate", "cartpole-dqn-vanilla", "--sigma", "0.1", "--episodes", "1",
               "--out", str(tmp_path / "x.jsonl")])
    assert rc != 0 and "--smoothed" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def _ps(sigma, budget):
    rets = np.array([10.0, 50.0, 120.0, 200.0, 200.0, 350.0, 500.0, 500.0, 500.0, 500.0])
    return policy_smoothing_bound(np.repeat(rets, 10), budget, sigma, 0.05, 0.0)


def test_policy_smoothing_bound_is_monotone_in_sigma_and_budget():
    sigmas, budgets = [0.05, 0.1, 0.2, 0.5, 1.0], [0.0, 0.05, 0.1, 0.3, 1.0]
    for b in budgets:  # larger sigma -> larger (or equal) certified return at a fixed budget
        vals = [_ps(s, b)["certified_return"] for s in sigmas]
        assert all(u <= v + 1e-12 for u, v in zip(vals, vals[1:]))
    for s in sigmas:  # larger budget -> smaller (or equal) certified return at a fixed sigma
        vals = [_ps(s, b)["certified_return"] for b in budgets]
        assert all(u >= v - 1e-12 for u, v in zip(vals, vals[1:]))
    # the formula: r0 + sum_k (r_k - r_{k-1}) Phi(PhiInv(LCB_k) - B / sigma) by hand
    r = _ps(0.2, 0.1)
    rets = np.repeat([10.0, 50.0, 120.0, 200.0, 200.0, 350.0, 500.0, 500.0, 500.0, 500.0], 10)
    d = math.sqrt(math.log(1 / 0.05) / (2 * rets.size))
    prev, want = 0.0, 0.0
    for lev in np.unique(rets):
        lcb = max(0.0, (rets >= lev).mean() - d)
        want += (lev - prev) * (norm.cdf(norm.ppf(lcb) - 0.1 / 0.2) if lcb > 0 else 0.0)
        prev = lev
    assert r["certified_return"] == pytest.approx(want, rel=1e-12)
    assert _ps(0.2, 0.0)["certified_return"] < r["smoothed_mean_return"]


# ------------------------------------------------------------------ S-DQN denoiser
def _random_denoiser(seed=0, hidden=(16, 8)):
    torch.manual_seed(seed)
    den = Denoiser(4, hidden)
    for p in den.parameters():
        p.data.normal_(0.0, 0.3)
    return den


def test_composition_is_q_of_the_denoiser_and_a_plain_q_mlp(frozen_cartpole):
    den = _random_denoiser()
    fused = compose(frozen_cartpole.nets["q"], den)
    x = _states(200) * 4
    want = frozen_cartpole.nets["q"](den(x))
    assert torch.allclose(fused(x), want, rtol=1e-5, atol=1e-3)
    assert fused.spec["type"] == "q" and fused.spec["body"]["hidden"] == [24, 16, 64, 64]
    assert torch.allclose(fused.bounded_form()(x), want, rtol=1e-5, atol=1e-3)
    assert torch.equal(Denoiser(4)(x), x)  # a fresh denoiser is the identity (zero last layer)


def test_certify_certifies_the_composition(frozen_cartpole):
    den = _random_denoiser(1, (8,))
    cfg = DenoiserConfig(sigma=0.2, steps=1)
    agent = denoised_agent(frozen_cartpole, den, cfg, "base-id")
    assert agent.metadata["smoothing_sigma"] == 0.2 and agent_smoothing_sigma(agent) == 0.2
    assert agent.loss_name == "vanilla+denoiser"
    x = _states(6)
    opts = CertifyOptions(smoothing=SmoothingConfig(sigma=0.2, n0=50, n=400, alpha=0.001),
                          seed=3)
    got = certify_states(agent.bounded_form(), x, 0.01, "smoothing", options=opts)[0]
    q = frozen_cartpole.nets["q"]
    with torch.no_grad():
        ref = smoothing_certify(lambda z: q(den(z)), x, 0.2, 50, 400, 0.001, generator=3)
        base = smoothing_certify(q, x, 0.2, 50, 400, 0.001, generator=3)
    assert np.array_equal(got.action, ref.prediction.numpy())
    assert np.allclose(got.extra["radius_l2"], ref.radius_l2.numpy())
    assert (ref.radius_l2 > 0).any()
    assert not np.array_equal(ref.counts.numpy(), base.counts.numpy())  # not the base's
    # sound bound methods take the composition too (its bounded form is a plain MLP)
    ibp = certify_states(agent.bounded_form(), x, 0.001, "ibp")[0]
    assert ibp.action.tolist() == agent.forward(x).argmax(1).tolist()


def test_denoiser_loss_and_a_short_training_run(frozen_cartpole):
    den = Denoiser(4, (8,))
    batch = {"obs": _states(5), "actions": torch.tensor([0, 1, 0, 1, 1]),
             "rewards": torch.ones(5), "dones": torch.tensor([0.0, 0, 0, 1, 0]),
             "next_obs": _states(5, 1)}
    g = torch.Generator().manual_seed(0)
    loss, logs = denoiser_loss(frozen_cartpole.nets["q"], den, batch, 0.1, 0.99, 1.0, g)
    g = torch.Generator().manual_seed(0)
    xn = batch["obs"] + 0.1 * torch.randn(batch["obs"].shape, generator=g)
    q = frozen_cartpole.nets["q"]
    y = 1.0 + 0.99 * (1 - batch["dones"]) * q(batch["next_obs"]).max(1).values
    td = torch.nn.functional.smooth_l1_loss(q(xn).gather(1, batch["actions"][:, None])[:, 0], y)
    rec = ((xn - batch["obs"]) ** 2).sum()  # identity denoiser: D(x + noise) = x + noise
    assert loss.item() == pytest.approx((td + rec).item(), rel=1e-5)
    assert logs["reconstruction"] == pytest.approx(rec.item(), rel=1e-5)
    before = copy.deepcopy(frozen_cartpole.nets["q"].state_dict())
    cfg = DenoiserConfig(sigma=0.1, steps=120, learning_starts=50, batch_size=16, hidden=(8,))
    den2, rows = train_denoiser(frozen_cartpole, cfg, progress=False)
    assert not torch.equal(den2(batch["obs"]), batch["obs"])  # it trained
    after = frozen_cartpole.nets["q"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # Q stays frozen
    with pytest.raises(ValueError, match="hidden layer"):
        Denoiser(4, ())


def test_certify_smoothing_defaults_to_the_agents_training_sigma(tmp_path, capsys):
    """certrl certify --method smoothing: sigma is the noise-trained agent's own unless
    given; another sigma gives a warning."""
    import json

    import certrl
    from certrl.cli import main

    agent = certrl.load("cartpole-dqn-vanilla")
    agent.metadata["smoothing_sigma"] = 0.3
    agent.save(tmp_path / "noisy.pt")
    base = ["certify", str(tmp_path / "noisy.pt"), "--method", "smoothing", "--eps", "0.01",
            "--episodes", "1", "--max-steps", "2", "--n0", "10", "--n", "20",
            "--no-progress"]

    def sigmas(path):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {r["settings"]["smoothing"]["sigma"] for r in rows if r.get("settings")}

    assert main([*base, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert sigmas(tmp_path / "a.jsonl") == {0.3}
    with pytest.warns(UserWarning, match="noise-trained at sigma 0.3"):
        assert main([*base, "--sigma", "0.1", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert sigmas(tmp_path / "b.jsonl") == {0.1}


def test_attack_the_smoothed_agent_through_the_cli(tmp_path, capsys):
    """certrl attack --smoothed: rows name the smoothed agent (its own identity), learned
    attacks and smoothing flags without --smoothed are refused with nothing written."""
    import json

    import certrl
    from certrl.cli import main
    from certrl.identity import agent_identity

    base = ["attack", "cartpole-dqn-vanilla", "--attack", "pgd", "--eps", "0.01",
            "--episodes", "1", "--max-steps", "3", "--no-progress"]
    out = tmp_path / "a.jsonl"
    assert main([*base, "--smoothed", "--samples", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["agent_id"] != agent_identity(certrl.load("cartpole-dqn-vanilla"))
                        for r in rows)
    capsys.readouterr()
    assert main([*base, "--sigma", "0.2", "--out", str(tmp_path / "b.jsonl")]) == 2
    bad = [*base[:3], "critic", *base[4:], "--smoothed", "--out", str(tmp_path / "c.jsonl")]
    assert main(bad) == 2
    assert "gradient attacks" in capsys.readouterr().err
    assert not (tmp_path / "b.jsonl").exists() and not (tmp_path / "c.jsonl").exists()


def test_smoothed_agent_has_its_own_run_group():
    import certrl
    from certrl.smoothed import SmoothedAgent

    base = certrl.load("cartpole-dqn-vanilla")
    a, b = SmoothedAgent(base, 0.1), SmoothedAgent(base, 0.2)
    groups = {base.metadata["run_group"], a.metadata["run_group"], b.metadata["run_group"]}
    assert len(groups) == 3
    assert SmoothedAgent(base, 0.1).metadata["run_group"] == a.metadata["run_group"]
