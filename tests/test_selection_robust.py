"""Robust best-checkpoint selection (certrl train --select robust): the rule, its record."""

import json
from types import SimpleNamespace

import pytest

import certrl
from certrl.algos import DQN
from certrl.algos import selection as S
from certrl.certify.trajectory import gwc_rollout
from certrl.cli import main
from tests.conftest import FROZEN, SHIPPED, has_shipped, tiny_finetune

pytestmark = has_shipped


def test_robust_score_is_the_min_of_natural_and_gwc_crown_on_the_same_episodes():
    agent = certrl.load(FROZEN)
    nat = S.natural_score(agent, 2, S.EVAL_SEED)
    gwc = [r["return"] for r in gwc_rollout(agent, 0.05, "crown", 2, S.EVAL_SEED)]
    assert gwc[0] < nat  # vanilla's GWC at 0.05 breaks it: the min is the GWC mean
    assert S.robust_score(agent, 2, 0.05) == min(nat, sum(gwc) / 2)
    assert S.gwc_score(agent, 2, 0.05) == sum(gwc) / 2


def test_pgd_score_is_the_attacked_return_of_certrl_attack_on_the_same_episodes():
    """pgd_score = the mean return certrl's PGD (10 steps, random start, CE, attack seed =
    episode index) leaves on env seeds EVAL_SEED..; a vanishing eps changes nothing."""
    from certrl.attacks import make_attack
    from certrl.rollout import acting, play

    agent = certrl.load(FROZEN)
    tm = agent.threat_model.with_eps(0.05)
    ends = play(agent, [0, 1], S.EVAL_SEED,
                lambda i: acting(agent, make_attack("pgd", agent.forward, tm, 0.05, 10, seed=i)))
    assert S.pgd_score(agent, 2, 0.05) == sum(e.ret for e in ends) / 2
    assert S.pgd_score(agent, 2, 0.2) < 0.1 * S.natural_score(agent, 2)  # broken at 0.2
    assert S.pgd_score(agent, 2, 1e-9) == S.natural_score(agent, 2)


def test_robust_pgd_score_is_the_min_of_the_three(monkeypatch):
    monkeypatch.setattr(S, "natural_score", lambda agent, n, seed, env_kwargs=None: 500.0)
    for gwc, pgd, want in ((300.0, 400.0, 300.0), (450.0, 120.0, 120.0), (600, 700, 500)):
        monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed, v=gwc: v)
        monkeypatch.setattr(S, "pgd_score", lambda agent, n, eps, seed, v=pgd: v)
        sel = S.BestKeeper(10, 3, select="robust-pgd", robust_eps=0.02)
        assert sel.evaluate(SimpleNamespace(nets={}), 10) == want
        info = sel.info("best")
        assert info["metric"] == S.ROBUST_PGD_METRIC and info["select_eps"] == 0.02
        assert "under PGD (10 steps, random start, CE) at eps 0.02" in info["rule"]


def test_robust_rule_picks_the_checkpoint_the_hand_made_evaluator_says(monkeypatch):
    # steps 0 (init), 10, ..., 60: (natural, GWC) per evaluation, made by hand
    nat = iter([500, 500, 120, 500, 480, 500, 300])
    gwc = iter([10, 200, 400, 300, 480, 90, 480])
    monkeypatch.setattr(S, "natural_score", lambda agent, n, seed, env_kwargs=None: next(nat))
    monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed: next(gwc))
    algo = DQN(tiny_finetune(threat={"eps": 0.02}), init_agent=SHIPPED)
    algo.selection.set_select("robust", 0.02)
    algo.learn()
    sel = algo.selection
    # min: 10, 200, 120, 300, 480, 90, 300 -> step 40 (natural would have kept step 50)
    assert [h[1] for h in sel.history] == [10, 200, 120, 300, 480, 90, 300]
    assert sel.best_step == 40 and sel.best_score == 480
    meta = algo.best_agent.metadata["selection"]
    assert meta["select"] == "robust" and meta["select_eps"] == 0.02
    assert "min(mean natural return, mean GWC-CROWN return at eps 0.02)" in meta["rule"]
    assert "ties -> the later" in meta["rule"] and meta["metric"] == S.ROBUST_METRIC


def test_robust_ties_go_to_the_later_evaluation(monkeypatch):
    monkeypatch.setattr(S, "natural_score", lambda agent, n, seed, env_kwargs=None: 500.0)
    scores = iter([5.0, 7.0, 7.0, 1.0, 7.0, 2.0, 0.0])
    monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed: next(scores))
    algo = DQN(tiny_finetune(), init_agent=SHIPPED)
    algo.selection.set_select("robust", 0.05)
    algo.learn()
    assert algo.selection.best_step == 40


def test_select_is_validated_and_fixed_before_evaluations():
    sel = S.BestKeeper(10, 1)
    with pytest.raises(ValueError, match="eps > 0"):
        sel.set_select("robust", None)
    with pytest.raises(ValueError, match="one of"):
        sel.set_select("gwc", 0.1)
    sel.history.append([0, 1.0])
    with pytest.raises(ValueError, match="fixed"):
        sel.set_select("robust", 0.1)


def test_resume_keeps_the_robust_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "natural_score", lambda agent, n, seed, env_kwargs=None: 500.0)
    monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed: 100.0 * eps)
    half = DQN(tiny_finetune(), init_agent=SHIPPED)
    half.selection.set_select("robust", 0.03)
    half.learn(30)
    half.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.selection.select == "robust" and again.selection.robust_eps == 0.03
    assert again.selection.history == half.selection.history
    again.learn()
    assert again.selection.history[-1] == [60, pytest.approx(3.0)]


def test_cli_select_robust_pgd_records_the_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "natural_score", lambda agent, n, seed, env_kwargs=None: 500.0)
    monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed: 420.0)
    monkeypatch.setattr(S, "pgd_score", lambda agent, n, eps, seed: 41.0)
    out = tmp_path / "ft"
    assert main(["train", "--init-from", SHIPPED, "--steps", "100", "--out", str(out),
                 "--no-progress", "--eval-every", "50", "--eval-episodes", "1",
                 "--select", "robust-pgd", "--train-eps", "0.02", "--loss", "radial",
                 "--set", "learning_starts=20", "--set", "buffer_size=300"]) == 0
    sel = certrl.load(out).metadata["selection"]
    assert sel["select"] == "robust-pgd" and sel["select_eps"] == 0.02
    assert [h[1] for h in sel["evaluations"]] == [41.0, 41.0, 41.0]
    again = DQN.resume(out / "checkpoints" / "latest.pt")
    assert again.selection.select == "robust-pgd" and again.selection.robust_eps == 0.02


def test_cli_select_robust_records_the_rule(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "gwc_score", lambda agent, n, eps, seed: 42.0)
    out = tmp_path / "ft"
    assert main(["train", "--init-from", SHIPPED, "--steps", "100", "--out", str(out),
                 "--no-progress", "--eval-every", "50", "--eval-episodes", "1",
                 "--select", "robust", "--select-eps", "0.02",
                 "--set", "learning_starts=20", "--set", "buffer_size=300"]) == 0
    sel = certrl.load(out).metadata["selection"]
    assert sel["select"] == "robust" and sel["select_eps"] == 0.02
    assert [h[1] for h in sel["evaluations"]] == [42.0, 42.0, 42.0] and sel["best_step"] == 100
    summary = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()][-1]
    assert summary["selection"]["rule"] == sel["rule"] and "GWC-CROWN" in sel["rule"]


@pytest.mark.parametrize("flags, needle", [
    (["--select", "robust"], "needs an eps"),
    (["--select-eps", "0.02"], "belongs to --select robust"),
    (["--select", "robust", "--train-eps", "0.02", "--eval-every", "0"], "--eval-every"),
])
def test_cli_select_errors_write_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "bad"
    assert main(["train", "--init-from", SHIPPED, "--steps", "10", "--out", str(out),
                 "--no-progress", *flags]) == 2
    assert needle in capsys.readouterr().err and not out.exists()


def test_cli_resume_refuses_a_new_select(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path), "--select", "robust"]) == 2
    assert "fixed when a run starts" in capsys.readouterr().err


def _bench():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import robust_dqn

    return robust_dqn


def test_benchmark_fine_tunes_use_the_robust_rule_at_the_train_eps():
    from pathlib import Path

    rd = _bench()
    assert rd.SELECT["select"] == "robust" and rd.ENVS["CartPole-v1"]["train_eps"] == 0.02
    for m in ("vanilla-ft", "sa", "radial", "wocar", "car-ibp", "car-pgd"):
        argv = rd.train_argv("CartPole-v1", m, 1, Path("X"), 50_000, "R")
        assert argv[argv.index("--select") + 1] == "robust"
        eps_flag = "--select-eps" if m == "vanilla-ft" else "--train-eps"
        assert argv[argv.index(eps_flag) + 1] == "0.02"
    assert "--select" not in rd.train_argv("CartPole-v1", "vanilla", 1, Path("X"), 9, "R")


def test_ship_rule_takes_the_highest_robust_selection_score_then_the_lower_seed():
    rd = _bench()
    runs = [{"seed": s, "selection": {"best_score": v}}
            for s, v in ((0, 300.0), (1, 480.0), (2, 480.0), (3, 100.0))]
    assert rd.pick_seed_robust(runs)["seed"] == 1
    assert rd.pick_seed_robust(runs[2:])["seed"] == 2


def _rows(env, method, natural, gwc, pgd, rate, e):
    return [{"env": env, "method": method, "seed": s, "natural": natural, f"gwc_crown_{e:g}": gwc,
             f"pgd_{e:g}": pgd, f"certfrac_crown_{e:g}": rate, "acr_crown": 0.01}
            for s in range(3)]


def test_targets_read_negative_returns_above_the_env_floor():
    """Acrobot's returns are negative (floor -500): 80% of a natural -100 is -420, not -80,
    and a vanilla GWC of -500 is below half its natural return (CartPole: floor 0)."""
    rd = _bench()
    e = rd.ENVS["Acrobot-v1"]["train_eps"]
    rows = (_rows("Acrobot-v1", "vanilla", -100.0, -500.0, -120.0, 0.1, e)
            + _rows("Acrobot-v1", "radial", -95.0, -400.0, -430.0, 0.35, e))
    text = "\n".join(rd.target_lines("Acrobot-v1", rows))
    assert "(target < 50% of natural: met)" in text
    radial = next(line for line in text.splitlines() if line.startswith("| RADIAL"))
    cells = [c.strip() for c in radial.split("|")[1:-1]]
    # natural -95 >= floor + 0.9 * 400 = -140; GWC -400 >= -500 + 0.8 * 405 = -176? no;
    # PGD -430 >= -176? no; rate 0.35 >= 0.1 + 0.2: met
    assert cells[2].startswith("-95 (met") and cells[3].startswith("-400 (not met")
    assert cells[4].startswith("-430 (not met") and cells[5].startswith("0.35 (met")
    cp = rd.ENVS["CartPole-v1"]["train_eps"]
    rows = (_rows("CartPole-v1", "vanilla", 500.0, 240.0, 500.0, 0.1, cp)
            + _rows("CartPole-v1", "radial", 460.0, 370.0, 360.0, 0.2, cp))
    text = "\n".join(rd.target_lines("CartPole-v1", rows))
    assert "(target < 50% of natural: met)" in text
    cells = [c.strip() for c in next(ln for ln in text.splitlines()
                                     if ln.startswith("| RADIAL")).split("|")[1:-1]]
    assert cells[2].startswith("460 (met") and cells[3].startswith("370 (met")
    assert cells[4].startswith("360 (not met") and cells[5].startswith("0.2 (not met")
