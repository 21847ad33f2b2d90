"""Best checkpoint by the smoothed agent's return (certrl train --select smoothed)."""

import json

import numpy as np
import pytest

import certrl
from certrl.algos import DQN
from certrl.algos import selection as S
from certrl.cli import main
from certrl.losses import make_loss
from certrl.rollout import acting, play
from certrl.smoothed import SmoothedAgent
from tests.conftest import FROZEN, SHIPPED, has_shipped, tiny_finetune

pytestmark = has_shipped


def test_smoothed_score_is_the_vote_agents_mean_return_on_the_eval_episodes():
    agent = certrl.load(FROZEN)
    sm = SmoothedAgent(agent, 0.3, S.SMOOTHED_SAMPLES)
    ends = play(sm, [0, 1], S.EVAL_SEED, lambda i: acting(sm))
    want = float(np.mean([e.ret for e in ends]))
    agent.nets["q"].train(True)
    assert S.smoothed_score(agent, 2, 0.3) == want
    assert want != S.natural_score(agent, 2)  # sigma 0.3 changes the vanilla agent's play
    assert agent.nets["q"].training  # the base network's mode is restored
    agent.nets["q"].train(False)
    S.smoothed_score(agent, 1, 0.3)
    assert not agent.nets["q"].training


def test_smoothed_rule_picks_the_checkpoint_the_hand_made_evaluator_says(monkeypatch):
    # steps 0 (init), 10, ..., 60: smoothed returns made by hand; natural would differ
    sm = iter([500, 120, 480, 500, 90, 499, 300])
    seen = []

    def fake(agent, n, sigma, seed, env_kwargs=None):
        seen.append(sigma)
        return next(sm)

    monkeypatch.setattr(S, "smoothed_score", fake)
    monkeypatch.setattr(S, "natural_score", lambda *a, **k: pytest.fail("natural scored"))
    algo = DQN(tiny_finetune(), robust_loss=make_loss("dqn", "noise", sigma=0.05),
               init_agent=SHIPPED)
    algo.selection.set_select("smoothed", sigma=0.05)
    algo.learn()
    sel = algo.selection
    assert [h[1] for h in sel.history] == [500, 120, 480, 500, 90, 499, 300]
    assert sel.best_step == 30 and sel.best_score == 500  # tie with step 0 -> the later
    assert set(seen) == {0.05}
    meta = algo.best_agent.metadata["selection"]
    assert meta["select"] == "smoothed" and meta["select_sigma"] == 0.05
    assert meta["metric"] == S.SMOOTHED_METRIC and meta["best_step"] == 30
    assert "smoothed agent (majority vote" in meta["rule"] and "sigma 0.05" in meta["rule"]
    assert "ties -> the later" in meta["rule"]


def test_smoothed_select_is_validated_and_kept_through_resume(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="sigma > 0"):
        S.BestKeeper(10, 1).set_select("smoothed")
    monkeypatch.setattr(S, "smoothed_score", lambda agent, n, sigma, seed, env_kwargs=None:
                        1000.0 * sigma)
    half = DQN(tiny_finetune(), robust_loss=make_loss("dqn", "noise", sigma=0.07),
               init_agent=SHIPPED)
    half.selection.set_select("smoothed", sigma=0.07)
    half.learn(30)
    half.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.selection.select == "smoothed" and again.selection.sigma == 0.07
    again.learn()
    assert again.selection.history[-1] == [60, pytest.approx(70.0)]


def test_cli_select_smoothed_records_the_rule_and_sigma(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "smoothed_score", lambda agent, n, sigma, seed, env_kwargs=None:
                        7.0)
    out = tmp_path / "ft"
    assert main(["train", "--init-from", SHIPPED, "--steps", "100", "--out", str(out),
                 "--no-progress", "--eval-every", "50", "--eval-episodes", "1",
                 "--loss", "noise", "--sigma", "0.05", "--select", "smoothed",
                 "--set", "learning_starts=20", "--set", "buffer_size=300"]) == 0
    agent = certrl.load(out)
    sel = agent.metadata["selection"]
    assert sel["select"] == "smoothed" and sel["select_sigma"] == 0.05
    assert agent.metadata["smoothing_sigma"] == 0.05
    assert [h[1] for h in sel["evaluations"]] == [7.0, 7.0, 7.0] and sel["best_step"] == 100
    summary = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()][-1]
    assert summary["selection"]["rule"] == sel["rule"]


@pytest.mark.parametrize("flags, needle", [
    (["--select", "smoothed"], "needs --loss noise"),
    (["--select", "smoothed", "--loss", "noise", "--sigma", "0.1", "--select-eps", "0.02"],
     "belongs to --select robust"),
    (["--select", "smoothed", "--loss", "noise", "--sigma", "0.1", "--eval-every", "0"],
     "--eval-every"),
])
def test_cli_select_smoothed_errors_write_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "bad"
    assert main(["train", "--init-from", SHIPPED, "--steps", "10", "--out", str(out),
                 "--no-progress", *flags]) == 2
    assert needle in capsys.readouterr().err and not out.exists()
