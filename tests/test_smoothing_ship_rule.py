"""benchmarks/smoothing_dqn.py: the rule that picks the shipped noise agent (hand-made rows)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
B = pytest.importorskip("smoothing_dqn", reason="benchmarks/ not importable")


def _row(method, seed, ret, radius, best_step=None, sigma="0.1"):
    return {"method": method, "seed": seed, "natural": ret,
            "selection": None if best_step is None else {"best_step": best_step},
            "by_sigma": {sigma: {"smoothed_natural": ret, "cohen_radius": radius}}}


def test_trained_excludes_init_weights_and_pre_ramp_checkpoints():
    assert not B.trained(_row("noise-0.1", 0, 500, 0.01, best_step=1000))  # init weights
    assert B.trained(_row("noise-sm-0.1", 0, 500, 0.01, best_step=2000))
    assert not B.trained(_row("noise-ramp-0.1", 0, 500, 0.01, best_step=45000))  # sigma < 0.1
    assert B.trained(_row("noise-ramp-0.1", 0, 500, 0.01, best_step=50000))
    assert B.trained(_row("noise-lr-0.1", 0, 100, 0.01, best_step=2500))


def test_target_score_is_the_worse_of_the_two_normalised_targets():
    van = [_row("vanilla", s, 500, 0.01) for s in range(3)]
    lr = [_row("noise-lr-0.1", s, r, 0.05, best_step=5000) for s, r in enumerate((400, 450, 500))]
    c = B.target_score(van + lr, "noise-lr-0.1")
    assert c["return"] == pytest.approx(450) and c["radius"] == pytest.approx(0.05)
    assert c["T"] == pytest.approx(min(450 / 450, 0.05 / 0.02)) and c["meets_done_when"]
    low = [_row("noise-lr-0.1", s, 450, 0.015, best_step=5000) for s in range(3)]
    c = B.target_score(van + low, "noise-lr-0.1")
    assert c["T"] == pytest.approx(0.75) and not c["meets_done_when"]  # radius 1.5x < 2x
    assert B.target_score(van + lr[:2], "noise-lr-0.1") is None  # < 3 seeds


def test_ship_picks_the_best_T_method_and_its_median_seed(tmp_path, monkeypatch):
    import json

    rows = [_row("vanilla", s, 500, 0.01) for s in range(3)]
    rows += [_row("noise-lr-0.1", s, r, 0.05, best_step=5000)
             for s, r in enumerate((200, 430, 500))]  # T = min(376.7/450, 2.5) = 0.84
    rows += [_row("noise-scratch-0.1", s, 200, 0.07, best_step=5000) for s in range(3)]
    for r in rows:
        d = tmp_path / B.ENV / r["method"] / f"seed{r['seed']}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
    got = {}
    monkeypatch.setattr(B, "write_sidecar", lambda pick, s, runs, targets: got.update(
        pick=pick, s=s, targets=targets))
    B.ship(tmp_path)
    assert got["pick"]["method"] == "noise-lr-0.1" and got["pick"]["seed"] == 1  # median
    assert got["s"] == "0.1" and got["targets"]["T"] == pytest.approx(1130 / 3 / 450)
