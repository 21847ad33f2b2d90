"""Natural and attacked returns, and the one rollout loop behind them."""

import numpy as np
import pytest

from certrl.attacks import make_attack
from certrl.certify.trajectory import gwc_rollout, rollout, smoothed_returns
from certrl.evaluate import evaluate
from certrl.rollout import acting, play

pytestmark = pytest.mark.usefixtures("one_thread")


def test_natural_returns_are_seeded_and_summarized(cartpole):
    res = evaluate(cartpole, 3, seed=10, max_steps=100)
    assert res.seeds == [10, 11, 12] and len(res.returns) == 3
    assert res.mean == pytest.approx(np.mean(res.returns))
    assert res.std == pytest.approx(np.std(res.returns))
    assert res.returns == evaluate(cartpole, 3, seed=10, max_steps=100).returns
    assert all(n == 100 for n in res.lengths)  # a solved CartPole survives


def test_attacked_returns_record_action_changes(cartpole):
    atk = make_attack("pgd", cartpole.forward, cartpole.threat_model.with_eps(0.2), steps=5)
    res = evaluate(cartpole, 2, seed=0, attack=atk, max_steps=100)
    assert 0 < res.extra["action_change_rate"] <= 1
    assert res.mean < 100


def test_bad_episode_count(cartpole):
    with pytest.raises(ValueError):
        evaluate(cartpole, 0)


# ------------------------------------------------------------ the one rollout loop
def test_play_hands_every_step_in_order_and_marks_cuts(cartpole):
    seen = []
    ends = play(cartpole, [3, 1], 0, lambda i: acting(cartpole), 7,
                lambda i, s: seen.append((i, s.t, float(s.reward))))
    assert [(e.index, e.seed, e.length, e.truncated, e.ret) for e in ends] == \
        [(3, 3, 7, True, 7.0), (1, 1, 7, True, 7.0)]
    assert seen == [(i, t, 1.0) for i in (3, 1) for t in range(7)]


def test_rollouts_agree_with_evaluate_and_the_env_end(cartpole):
    ep = rollout(cartpole, 1, seed=0, indices=[3])[0]
    assert (ep.steps, ep.truncated, ep.seed) == (500, False, 3)  # the env's time limit
    res = evaluate(cartpole, seed=0, indices=[3])
    assert (res.returns, res.lengths, res.truncated) == ([ep.ret], [500], [False])
    cut = rollout(cartpole, 2, seed=2, max_steps=100)
    assert [(e.steps, e.truncated) for e in cut] == [(100, True), (100, True)]


def test_loop_numbers_recorded_before_the_one_loop(frozen_cartpole):
    """Reference outputs of the four former episode loops (the frozen CartPole agent, the
    one shipped when they were recorded)."""
    cartpole = frozen_cartpole
    rets, lens = smoothed_returns(cartpole, 3, 0.2, seed=4, max_steps=80)
    assert rets.tolist() == [22.0, 14.0, 15.0] and lens.tolist() == [22, 14, 15]
    gwc = gwc_rollout(cartpole, 0.02, "ibp", episodes=2, seed=1, max_steps=90)
    assert [(g["return"], g["steps"], g["truncated"]) for g in gwc] == \
        [(10.0, 10, False), (9.0, 9, False)]
    assert [g["gwc_changed_fraction"] for g in gwc] == pytest.approx([0.8, 7 / 9])
    ep = rollout(cartpole, 1, seed=2, max_steps=100)[0]
    assert ep.actions[:12].tolist() == [1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert float(ep.x.sum()) == pytest.approx(-35.56884765625, rel=1e-5)
