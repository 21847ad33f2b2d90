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
