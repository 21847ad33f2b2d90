"""The benchmark tables: their statistics and rendering are certrl.report's (one library)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sweep  # noqa: E402
from sweep import bootstrap_ci, iqm  # noqa: E402

import certrl.report as report  # noqa: E402


def test_benchmarks_use_certrl_report_statistics():
    assert sweep.iqm is report.iqm and sweep.bootstrap_ci is report.bootstrap_ci


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


def test_vectorized_iqm_bootstrap_matches_a_per_resample_loop():
    x = np.array([3.0, 9.0, 500.0, 480.0, 17.0, 250.0, 60.0])
    idx = np.random.default_rng(0).integers(0, x.size, size=(2000, x.size))  # same draws
    stats = np.array([iqm(x[i]) for i in idx])
    loop = (np.quantile(stats, 0.025), np.quantile(stats, 0.975))
    assert bootstrap_ci(x) == pytest.approx(loop, rel=1e-12)
    # another statistic (vectorized over resamples) gives another interval
    assert bootstrap_ci(x, stat=lambda s: s.max(axis=1)) != bootstrap_ci(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("n", [5, 10])
def test_iqm_and_bootstrap_agree_with_rliable(n):
    """rliable (Agarwal et al. 2021): the same IQM (trim_mean 0.25) and, for one task, a
    percentile bootstrap over runs; its resampling is arch's, so CIs agree up to Monte
    Carlo error."""
    rly = pytest.importorskip("rliable.library", reason="rliable not installed (optional)")
    metrics = pytest.importorskip("rliable.metrics")
    x = np.random.default_rng(n).normal(100.0, 30.0, n)
    pt, ci = rly.get_interval_estimates(
        {"a": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=5000,
        random_state=np.random.RandomState(0))
    assert iqm(x) == pytest.approx(float(pt["a"][0]), rel=1e-12)
    ours = bootstrap_ci(x, n_boot=5000)
    spread = x.max() - x.min()
    assert ours == pytest.approx(tuple(ci["a"].ravel()), abs=0.05 * spread)


def test_benchmark_tables_render_through_certrl_report():
    from robust_dqn import columns, part_table

    runs = [{"env": "CartPole-v1", "method": m, "seed": s, "natural": nat + s,
             "selection": {"best_step": 1000 * s}, "train_wall_s": 10.0 + s}
            for m, nat in (("vanilla", 400.0), ("sa", 450.0)) for s in (0, 1, 2)]
    cols = columns("CartPole-v1")
    t = part_table("CartPole-v1", "returns", cols["returns"], runs, "title")
    md = report.to_markdown([t], report.Style(row_header="Method", md_caption=False))
    assert "| Method | Natural |" in md
    assert "| SA-DQN (CROWN-IBP), 3 seeds | **451.0 [450.0, 452.0]** |" in md
    assert "| Vanilla DQN (base), 3 seeds | 401.0 [400.0, 402.0] | n/a |" in md
    ck = part_table("CartPole-v1", "checkpoint", cols["checkpoint"], runs, "title")
    text = report.to_markdown([ck], report.Style(md_caption=False))
    assert "1000 [0, 2000]" in text and "**" not in text  # best step, train time: no best
    tex = report.to_latex([t, ck], report.Style(label="tab:robust-dqn", float_env="table*"))
    assert r"\label{tab:robust-dqn-cartpole-v1-returns}" in tex
    assert r"\label{tab:robust-dqn-cartpole-v1-checkpoint}" in tex
    assert r"\textbf{451.0}\,{\scriptsize[450,452]}" in tex and r"\begin{table*}" in tex


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


def test_robust_ppo_tables_render_through_certrl_report(tmp_path):
    import robust_ppo

    runs = [{"env": "InvertedPendulum-v5", "method": m, "seed": s, "natural": 1000.0,
             "mad": mad + 10 * s, "random": 1000.0, "train_steps": 50000, "train_eps": 0.1,
             "eval_eps": 0.5, "episodes": 10, "cert_episodes": 5, "train_cpu_s": 60.0,
             "budgets": {"rs_budget": 61440, "sarl_budget": 999424, "paad_budget": 999424}}
            for m, mad in (("vanilla", 170.0), ("sa", 990.0)) for s in range(3)]
    (md_path,) = robust_ppo.render_rows(runs, results=tmp_path)
    md = md_path.read_text()
    assert "| SA-PPO (convex relax.), 3 seeds | **1000.0 [1000.0, 1000.0]** | " \
        "**1000.0 [1000.0, 1000.0]** | n/a | **1000.0 [990.0, 1010.0]**" in md
    tex = md_path.with_suffix(".tex").read_text()
    assert r"\label{tab:robust_ppo_pendulum" in tex
    assert r"\textbf{1000.0}\,{\scriptsize[990,1010]}" in tex
    lines = md_path.with_suffix(".csv").read_text().splitlines()
    assert lines[0].startswith("env_id,") and any(",mad," in x for x in lines)
