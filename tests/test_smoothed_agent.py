"""The smoothed agent: majority vote of the base agent under the same seeded noise, mean-Q
mode, determinism, attack surrogate, CLI; the policy-smoothing bound's monotonicity."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from certrl.attacks import make_attack
from certrl.certify.trajectory import policy_smoothing_bound
from certrl.cli import main
from certrl.evaluate import evaluate
from certrl.identity import agent_identity
from certrl.smoothed import SmoothedAgent, seeded_noise, smoothed


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
