"""certrl sweep: spec parsing, grid expansion and skip logic (fast, no Ray), and a tiny
2x2 grid (CartPole DQN vanilla / SA x 2 seeds + a certify job) on a local Ray instance,
rerun after a killed task (slow)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from certrl.cli import main
from certrl.sweeps import Unit, expand, load_spec, parse_spec, plan, run_unit, table_args
from certrl.sweeps.units import MARKER, portable

TINY = Path(__file__).resolve().parent.parent / "benchmarks" / "specs" / "tiny.yaml"
SPECS = TINY.parent


def base_spec(**over) -> dict:
    g = {"name": "base", "env": "CartPole-v1", "algo": "dqn", "seeds": [0, 1, 2], "steps": 100}
    return {"train": [{**g, **over}]}


def test_tiny_spec_expands_to_the_2x2_grid(tmp_path):
    units = expand(load_spec(TINY), tmp_path)
    train = [u for u in units if u.kind == "train"]
    jobs = [u for u in units if u.kind == "certify"]
    assert len(train) == 4 and len(jobs) == 4
    uids = {u.uid for u in train}
    assert "CartPole-v1/dqn/dqn-vanilla/seed1/train" in uids
    assert "CartPole-v1/dqn/dqn-sa-eps0.05/seed0/train" in uids
    sa = next(u for u in train if u.uid.startswith("CartPole-v1/dqn/dqn-sa-eps0.05/seed0"))
    assert sa.argv[:3] == ("train", "--env", "CartPole-v1")
    assert ("--loss", "sa", "--train-eps", "0.05") == sa.argv[sa.argv.index("--loss"):][:4]
    assert "--set" in sa.argv and "learning_starts=50" in sa.argv
    van = next(u for u in train if "vanilla/seed0" in u.uid)
    assert "--loss" not in van.argv and "--train-eps" not in van.argv  # vanilla: no eps axis
    for j in jobs:  # each job certifies its own run's agent, after it
        assert j.deps == (j.uid.rsplit("/", 1)[0] + "/train",)
        assert j.argv[1] == str(tmp_path / j.deps[0])
        assert j.argv[-2:] == ("--out", str(tmp_path / j.results))


def test_grid_axes_and_finetunes():
    spec = parse_spec({"train": [
        {"name": "base", "env": ["CartPole-v1", "Acrobot-v1"], "algo": "dqn",
         "seeds": [0, 1], "steps": 100},
        {"name": "ft", "init_from": "base", "loss": ["vanilla", "radial", "car"],
         "train_eps": [0.01, 0.05], "seeds": [1], "args": ["--solver", "ibp"]}],
        "jobs": [{"name": "pgd", "command": "attack", "groups": ["ft"],
                  "args": ["--attack", "pgd", "--eps", 0.05]}]})
    units = expand(spec, "/sw")
    base = [u for u in units if "/base/" in u.uid]
    ft = [u for u in units if "/ft/" in u.uid and u.kind == "train"]
    assert len(base) == 4  # 2 envs x 2 seeds
    assert len(ft) == 2 * (1 + 2 * 2)  # per env, seed 1: vanilla once + 2 losses x 2 eps
    one = next(u for u in ft if u.uid == "Acrobot-v1/ft/dqn-car-eps0.01/seed1/train")
    assert one.deps == ("Acrobot-v1/base/dqn-vanilla/seed1/train",)
    assert one.argv[:3] == ("train", "--init-from", "/sw/Acrobot-v1/base/dqn-vanilla/seed1/train")
    assert one.argv[-2:] == ("--solver", "ibp")
    pgd = [u for u in units if u.kind == "pgd"]
    assert len(pgd) == len(ft) and all(u.argv[-4:-2] == ("--eps", "0.05") for u in pgd)
    order = [u.uid for u in units]  # every unit after its dependencies
    assert all(order.index(d) < order.index(u.uid) for u in units for d in u.deps)


@pytest.mark.parametrize("bad, message", [
    ({"train": []}, "non-empty list"),
    ({**base_spec(), "extra": 1}, "unknown keys"),
    (base_spec(loss="sa"), "need train_eps"),
    (base_spec(loss="nope"), "unknown loss"),
    (base_spec(algo="a2c"), "unknown algo"),
    (base_spec(seeds=[-1]), "seeds must be"),
    (base_spec(name="a/b"), "name must be"),
    ({"train": [base_spec()["train"][0], {"name": "ft", "init_from": "nobody"}]},
     "not a group defined above"),
    ({"train": [base_spec()["train"][0], {"name": "ft", "init_from": "base", "seeds": [7]}]},
     "not all seeds"),
    ({**base_spec(), "jobs": [{"name": "c", "command": "train"}]}, "command must be"),
    ({**base_spec(), "jobs": [{"name": "c", "command": "certify", "args": ["--out", "x"]}]},
     "sets ['--out']"),
    ({**base_spec(), "jobs": [{"name": "c", "command": "certify", "groups": ["nobody"]}]},
     "unknown train groups"),
])
def test_bad_specs_are_refused(bad, message):
    with pytest.raises(ValueError, match=None) as e:
        parse_spec(bad)
    assert message in str(e.value)


@pytest.mark.parametrize("name", ["tiny", "robust_dqn", "robust_dqn_acrobot", "car_probe",
                                  "robust_ppo", "robust_ppo_hopper"])
def test_benchmark_specs_expand_to_valid_commands(name, tmp_path):
    """Every unit of the shipped specs is a command line certrl's own parser accepts."""
    from certrl.cli import build_parser

    parser, _ = build_parser()
    units = expand(load_spec(SPECS / f"{name}.yaml"), tmp_path)
    for u in units:
        try:
            parser.parse_args(list(u.argv))
        except SystemExit:
            pytest.fail(f"{name}: certrl {' '.join(u.argv)} does not parse")
    if name.startswith("robust_dqn"):  # 9 methods x 5 seeds, 4 jobs each
        assert len(units) == 9 * 5 * 5
        cert = [u for u in units if u.kind == "certify" and "/sortnet/" in u.uid]
        assert len(cert) == 5 and all("lipschitz" in u.argv for u in cert)


def flag_pairs(argv) -> dict:
    """{--flag: its values} of a certrl command line (paths of --out / --init-from dropped)."""
    out, key = {}, None
    for a in argv[1:]:
        if a.startswith("--"):
            key = a
            out[key] = ()
        elif key is not None:
            out[key] += (a,)
    out.pop("--out", None)
    out.pop("--init-from", None)
    return out


@pytest.mark.parametrize("name,env", [("robust_dqn", "CartPole-v1"),
                                      ("robust_dqn_acrobot", "Acrobot-v1")])
def test_robust_dqn_specs_train_what_the_benchmark_script_trains(name, env, tmp_path):
    """Every train unit of the robust DQN specs has the flags (loss, eps, solver, selection,
    steps, evaluation) that benchmarks/robust_dqn.py gives the same (env, method, seed)."""
    sys.path.insert(0, str(SPECS.parent))
    try:
        import robust_dqn
    finally:
        sys.path.remove(str(SPECS.parent))
    units = [u for u in expand(load_spec(SPECS / f"{name}.yaml"), tmp_path) if u.kind == "train"]
    methods = {u.uid.split("/")[1] for u in units}
    assert methods == set(robust_dqn.METHODS)
    for u in units:
        method, seed = u.uid.split("/")[1], int(u.uid.split("/")[3].removeprefix("seed"))
        ref = robust_dqn.train_argv(env, method, seed, tmp_path / "x",
                                    robust_dqn.ENVS[env]["steps"])
        assert flag_pairs(u.argv) == flag_pairs(ref), u.uid
        if robust_dqn.METHODS[method][2] == "finetune":
            init = u.argv[u.argv.index("--init-from") + 1]
            assert init.endswith(f"{env}/vanilla/dqn-vanilla/seed{seed}/train")


def test_job_names_repeat_on_disjoint_groups_only():
    two = {"train": [base_spec()["train"][0], {**base_spec()["train"][0], "name": "b2"}]}
    ok = {**two, "jobs": [{"name": "c", "command": "certify", "groups": ["base"]},
                          {"name": "c", "command": "certify", "groups": ["b2"]}]}
    assert len(expand(parse_spec(ok), "/sw")) == 6 + 6
    with pytest.raises(ValueError, match="already runs on"):
        parse_spec({**two, "jobs": [{"name": "c", "command": "certify"},
                                    {"name": "c", "command": "certify", "groups": ["b2"]}]})
    with pytest.raises(ValueError, match="boolean"):  # YAML reads on: as true
        parse_spec(yaml.safe_load("train: [{name: a, env: CartPole-v1, algo: dqn, "
                                  "seeds: [0], steps: 5}]\njobs: [{name: c, command: "
                                  "certify, on: [a]}]"))


def test_bad_spec_file_clean_exit_nothing_written(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [{name: x, env: CartPole-v1, algo: dqn, loss: sa, seeds: [0], "
                   "steps: 10}]\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "need train_eps" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    bad.write_text("train: [\n")
    assert main(["sweep", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_skip_logic_uses_markers(tmp_path):
    units = expand(load_spec(TINY), tmp_path)
    u = units[0]
    (tmp_path / u.uid).mkdir(parents=True)
    (tmp_path / u.uid / MARKER).write_text(json.dumps({"argv": portable(u.argv, tmp_path)}))
    done, todo = plan(units, tmp_path)
    assert done == [u] and todo == units[1:]
    moved = tmp_path.parent / (tmp_path.name + "-moved")  # a moved OUT keeps its markers
    shutil.copytree(tmp_path, moved)
    assert plan(expand(load_spec(TINY), moved), moved)[0] == [expand(load_spec(TINY),
                                                                     moved)[0]]
    (tmp_path / u.uid / MARKER).write_text(json.dumps({"argv": ["train", "--other"]}))
    with pytest.raises(ValueError, match="spec changed"):
        plan(units, tmp_path)
    shutil.rmtree(moved)


def test_dry_run_lists_units_without_ray(tmp_path, capsys):
    assert main(["sweep", str(TINY), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 units, 0 done, 8 to run" in out and out.count("todo ") == 8


def test_failed_unit_leaves_no_marker(tmp_path):
    unit = Unit("x/certify", "certify", ("certify", str(tmp_path / "no-such-agent.pt"),
                                         "--eps", "0.01", "--out",
                                         str(tmp_path / "x" / "certify" / "r.jsonl")),
                results="x/certify/r.jsonl")
    with pytest.raises(RuntimeError, match="exited 2"):
        run_unit(unit, tmp_path)
    assert not (tmp_path / "x" / "certify" / MARKER).exists()
    assert "no-such-agent" in (tmp_path / "x" / "certify" / "sweep.log").read_text()


def test_table_args_name_each_row_by_its_spec_entry(tmp_path):
    """OUT/table.args: every finished job's file, one --group per (entry, env, tag), members
    the agent labels the files record; unfinished jobs and unlabelled files left out."""
    spec = parse_spec({"train": [
        {"name": "base", "env": "CartPole-v1", "algo": "dqn", "seeds": [0, 1], "steps": 100},
        {"name": "robust", "init_from": "base", "loss": ["sa", "radial"], "train_eps": 0.01}],
        "jobs": [{"name": "natural", "command": "evaluate"}]})
    units = expand(spec, tmp_path)
    jobs = [u for u in units if u.kind == "natural"]
    for u in jobs:
        if "radial" in u.uid and "seed1" in u.uid:
            continue  # not finished: no marker
        f = tmp_path / u.results
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"agent_label": f"LBL/{u.deps[0]}"}) + "\n{}\n")
        (tmp_path / u.uid / MARKER).write_text("{}")
    words = table_args(units, tmp_path)
    files = [w for w in words if w.endswith(".jsonl")]
    assert len(files) == 5 and all(Path(f).is_absolute() for f in files)
    groups = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--group")
    tag = "CartPole-v1:dqn-{}-eps0.01"
    assert set(groups) == {"base", "robust:" + tag.format("sa"), "robust:" + tag.format("radial")}
    assert groups["base"].split(",") == [f"LBL/CartPole-v1/base/dqn-vanilla/seed{k}/train"
                                         for k in (0, 1)]
    assert groups["robust:" + tag.format("radial")] == \
        "LBL/CartPole-v1/robust/dqn-radial-eps0.01/seed0/train"


def test_missing_ray_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["sweep", str(TINY), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'certrl[sweep]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ on a local Ray
def markers(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out)): json.loads(p.read_text())
            for p in out.rglob(MARKER)}


@pytest.mark.slow
def test_tiny_sweep_on_local_ray_resumes_after_a_kill(tmp_path, capsys, keep_threads):
    pytest.importorskip("ray", reason="Ray is optional: pip install 'certrl[sweep]'")
    out = tmp_path / "sw"
    assert main(["sweep", str(TINY), "--out", str(out), "--no-progress"]) == 0
    first = markers(out)
    assert len(first) == 8
    # a killed certify task and a killed training (after its last checkpoint): no markers
    job = "CartPole-v1/dqn/dqn-sa-eps0.05/seed1/certify"
    run = "CartPole-v1/dqn/dqn-vanilla/seed0/train"
    (out / job / MARKER).unlink()
    (out / job / "results.jsonl").unlink()
    (out / run / MARKER).unlink()
    # and a job that always fails (bad eps), retried once then reported
    spec = yaml.safe_load(TINY.read_text())
    spec["jobs"].append({"name": "bad", "command": "attack", "groups": ["dqn"],
                         "args": ["--eps", "-1", "--episodes", "1"]})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 1
    text = capsys.readouterr()
    assert "12 units, 6 done, 6 to run" in text.out
    second = markers(out)
    assert set(second) == set(first)  # the bad units have none
    redone = {k for k in first if second[k]["attempt"] != first[k]["attempt"]}
    assert redone == {job, run}
    assert second[run]["ran"][-1] == "--resume"  # resumed from its checkpoint
    failed = json.loads((out / "sweep.json").read_text())["failed"]
    assert sorted(failed) == sorted(f"{k.rsplit('/', 1)[0]}/bad" for k in first
                                    if k.endswith("/train"))
    log = (out / next(iter(failed)) / "sweep.log").read_text()
    assert log.count("$ certrl attack") == 2  # first try + max_retries 1
    files = sorted(str(p) for p in out.rglob("results.jsonl"))
    assert len(files) == 4
    capsys.readouterr()
    assert main(["table", *files]) == 0
    table = capsys.readouterr().out
    assert "CartPole-v1" in table and "(DQN, sa; 2 seeds)" in table \
        and "(DQN, vanilla; 2 seeds)" in table
    assert main(["table", f"@{out / 'table.args'}"]) == 0  # rows named by spec entry
    table = capsys.readouterr().out
    assert "dqn:CartPole-v1:dqn-sa-eps0.05 (DQN, sa; 2 seeds)" in table \
        and "dqn:CartPole-v1:dqn-vanilla (DQN, vanilla; 2 seeds)" in table


def test_failure_report_names_the_failed_dependency():
    """A unit whose dependency failed is reported as not run, whatever order Ray returns
    the failures in (a fake Ray: results come back dependants first)."""
    from certrl.sweeps.ray_run import collect

    base = Unit("r/train", "train", ("train",))
    job = Unit("r/certify", "certify", ("certify",), ("r/train",))
    other = Unit("s/train", "train", ("train",))

    class FakeRay:
        def wait(self, pending, num_returns):
            return pending[-1:], pending[:-1]  # the last submitted comes back first

        def get(self, ref):
            if ref == "s":
                return {"uid": "s/train"}
            raise RuntimeError(f"boom {ref}")

    res = collect(FakeRay(), {"r/train": "r", "r/certify": "c", "s/train": "s"},
                   {u.uid: u for u in (base, job, other)}, progress=False)
    assert res.finished == [{"uid": "s/train"}]
    assert res.failed == {"r/train": "RuntimeError: boom r",
                          "r/certify": "not run: dependency r/train failed"}
