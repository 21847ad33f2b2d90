"""The statistics behind the benchmark tables (benchmarks/sweep.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from sweep import bootstrap_ci, iqm  # noqa: E402


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([5.0] * 5) == 5.0


def test_bootstrap_ci_brackets_the_iqm_and_is_reproducible():
    x = np.array([10.0, 12.0, 50.0, 11.0, 13.0])
    lo, hi = bootstrap_ci(x)
    assert lo <= iqm(x) <= hi
    assert lo >= x.min() and hi <= x.max()
    assert (lo, hi) == bootstrap_ci(x)  # seeded
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci([7.0, 7.0, 7.0]) == (7.0, 7.0)


def test_vectorized_iqm_bootstrap_matches_the_per_resample_loop():
    x = np.array([3.0, 9.0, 500.0, 480.0, 17.0])
    assert bootstrap_ci(x) == pytest.approx(bootstrap_ci(x, stat=lambda s: iqm(s)))
    # a different statistic goes through the loop and gives a different interval
    assert bootstrap_ci(x, stat=np.max) != bootstrap_ci(x)


def test_ship_rule_takes_the_median_natural_seed():
    from robust_dqn import pick_seed

    runs = [{"seed": 0, "natural": 500.0}, {"seed": 1, "natural": 120.0},
            {"seed": 2, "natural": 300.0}, {"seed": 3, "natural": 20.0},
            {"seed": 4, "natural": 480.0}]
    assert pick_seed(runs)["seed"] == 2
    # even count: the lower middle; ties: the lower seed
    assert pick_seed(runs[:4])["seed"] == 1
    tied = [{"seed": 5, "natural": 500.0}, {"seed": 2, "natural": 500.0},
            {"seed": 9, "natural": 500.0}]
    assert pick_seed(tied)["seed"] == 5


def test_fine_tunes_start_from_their_own_seeds_vanilla_base():
    from robust_dqn import METHODS, train_argv

    for m, (_, _, start) in METHODS.items():
        argv = train_argv("CartPole-v1", m, 3, Path("X"), 50_000, "ROOT")
        if start == "finetune":
            i = argv.index("--init-from")
            assert argv[i + 1] == str(Path("ROOT/CartPole-v1/vanilla/seed3/train"))
            assert "--steps" not in argv  # the fine-tuning default (20k)
        else:
            assert "--init-from" not in argv and "--eval-every" in argv
        assert ("--train-eps" in argv) == (m not in ("vanilla", "vanilla-ft"))
