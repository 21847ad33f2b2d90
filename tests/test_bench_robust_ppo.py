"""benchmarks/robust_ppo.py: task list and argv cover every method and column; a tiny real
run (InvertedPendulum, 256 env steps, the cheap columns) writes a result.json that renders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("robust_ppo_bench", BENCH / "robust_ppo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ISSUE_ATTACKS = {"random", "mad", "rs", "rs+mad", "sa-rl", "pa-ad"}


def test_tasks_and_argv_cover_every_method_and_column(bench, tmp_path):
    args = bench.parse_args(["--envs", "Hopper-v5", "--seeds", "0", "1", "--out",
                             str(tmp_path), "--rs-budget", "4096", "--sarl-budget", "8192",
                             "--paad-budget", "2048"])
    tasks = bench.make_run_tasks(args)
    assert {(t["method"], t["seed"]) for t in tasks} == {
        (m, s) for m in ("vanilla", "sa", "car", "wocar") for s in (0, 1)}
    t = tasks[0]
    assert t["steps"] == 2_000_000 and t["episodes"] == 50
    assert ISSUE_ATTACKS <= set(t["columns"]) and {"natural", "cert"} <= set(t["columns"])
    for m in bench.METHODS:
        argv = bench.train_argv("Hopper-v5", m, 0, tmp_path, 1000)
        assert argv[:2] == ["train", "--env"] and "--steps" in argv
        if m == "vanilla":
            assert "--loss" not in argv
        else:
            assert argv[argv.index("--loss") + 1] == m
            assert argv[argv.index("--train-eps") + 1] == "0.075"
    seen = {}
    for col in t["columns"]:
        argv = bench.column_argv(col, Path("a.pt"), Path(t["dir"]), t)
        assert argv[argv.index("--out") + 1].endswith(f"{col}.jsonl")
        if col in bench.ATTACKS:
            assert argv[0] == "attack" and argv[argv.index("--attack") + 1] == col
            assert argv[argv.index("--eps") + 1] == "0.075"
        if col in bench.BUDGET_FLAGS:
            seen[col] = (int(argv[argv.index("--budget") + 1]), argv[argv.index("--attacker") + 1])
    assert seen["rs"][0] == seen["rs+mad"][0] == 4096 and seen["rs"][1] == seen["rs+mad"][1]
    assert seen["sa-rl"][0] == 8192 and seen["pa-ad"][0] == 2048
    assert bench.column_argv("cert", Path("a.pt"), Path(t["dir"]), t)[:4] == [
        "certify", "a.pt", "--method", "crown"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--rs-budget", "0"])


def test_worst_is_the_per_seed_minimum(bench):
    cols = {"random": {"returns": {1000: 5.0, 1001: 9.0}},
            "mad": {"returns": {1000: 7.0, 1001: 3.0}}, "natural": {"returns": {1000: 1.0}}}
    assert bench.worst_returns(cols) == {1000: 5.0, 1001: 3.0}


def test_tiny_run_renders(bench, tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    base = bench.train_argv
    monkeypatch.setattr(bench, "train_argv", lambda *a: base(*a) + [
        "--set", "num_envs=1", "--set", "num_steps=128", "--set", "num_minibatches=2",
        "--set", "update_epochs=1"])
    args = bench.parse_args(["--envs", "InvertedPendulum-v5", "--seeds", "0", "--methods",
                             "vanilla", "--steps", "128", "--episodes", "2",
                             "--cert-episodes", "1", "--columns", "natural", "random", "mad",
                             "cert", "--out", str(tmp_path / "runs")])
    (task,) = bench.make_run_tasks(args)
    try:
        row = bench.run_one(task)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((Path(task["dir"]) / "result.json").read_text())
    assert saved["train_steps"] == 128 and saved["train_cpu_s"] > 0
    assert saved["worst"] <= min(saved["random"], saved["mad"]) + 1e-9
    assert saved["cert"] >= 0 and set(saved["columns"]) == {"natural", "random", "mad", "cert"}
    assert all(saved[f"cpu_s_{c}"] >= 0 for c in ("natural", "random", "mad", "cert"))
    assert bench.run_one(task) == row  # resumable: the finished run is read back
    (md,) = bench.render_rows([saved], "_test", results=tmp_path / "res")
    text = md.read_text()
    assert "PILOT" in text and "Vanilla PPO, 1 seed" in text and "Worst" in text
    assert md.with_suffix(".csv").exists() and md.with_suffix(".tex").exists()


@pytest.mark.parametrize("name", ["robust_ppo_hopper", "robust_ppo"])
def test_sweep_specs_match_the_benchmark(bench, name, tmp_path):
    """Every unit of the specs parses; the trainings are the benchmark's; the Hopper spec
    runs every attack column of the benchmark in its worst job."""
    from certrl.cli import build_parser
    from certrl.sweeps import expand, load_spec

    parser, _ = build_parser()
    units = expand(load_spec(BENCH / "specs" / f"{name}.yaml"), tmp_path)
    for u in units:
        parser.parse_args(list(u.argv))
    env = "Hopper-v5" if name == "robust_ppo_hopper" else "InvertedPendulum-v5"
    trains = {tuple(u.argv) for u in units if u.argv[0] == "train"}
    for m in bench.METHODS:
        want = bench.train_argv(env, m, 0, Path("X"), bench.ENVS[env]["steps"])
        assert any(set(want) - {"X"} <= set(t) and "0" == t[t.index("--seed") + 1]
                   for t in trains), m
    if name == "robust_ppo_hopper":
        assert len(units) == 4 * 5 * 4
        atk = [u for u in units if u.argv[0] == "attack"]
        worst_of = atk[0].argv[atk[0].argv.index("--worst-of") + 1].split(",")
        assert set(worst_of) == set(bench.ATTACKS)


def test_column_summary_keeps_the_attacker_fields(bench, tmp_path):
    from certrl.records import write_jsonl

    rows = [{"record": "episode", "episode_seed": 1000 + i, "return": 10.0 * i, "length": 5,
             "attacker_budget": 2048, "attacker_train_cpu_s": 1.5} for i in range(2)]
    write_jsonl(tmp_path / "rs.jsonl", rows)
    s = bench.column_summary("rs", tmp_path / "rs.jsonl")
    assert s["returns"] == {"1000": 0.0, "1001": 10.0} and s["value"] == 5.0
    assert s["steps"] == 10 and s["attacker_budget"] == 2048
    assert s["attacker_train_cpu_s"] == 1.5
