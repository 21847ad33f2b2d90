"""certrl table keys rows by agent identity or declared seed group, columns by norm and
eps space, and never tabulates truncated episodes as complete (issue 9)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math

import pytest

from certrl.cli import main
from certrl.report import build_tables, load_rows, parse_group, render


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def agent(name: str, seed: int = 0, loss: str = "vanilla", run_group: str | None = None,
          env: str = "CartPole-v1", norm: str = "inf", space: str = "raw observation",
          legacy: bool = False) -> dict:
    """The fields every result row of one agent carries."""
    a = {"env_id": env, "env_version": env.rsplit("-", 1)[-1], "algo": "dqn", "loss": loss,
         "seed": seed, "norm": norm, "eps_space": space, "checkpoint": name}
    if not legacy:
        a.update(agent_id=_hex(name), agent_label=name, run_group=run_group)
    return a


def natural(a: dict, returns, truncated=()) -> list[dict]:
    return [{**a, "record": "episode", "attack": "none", "eps": 0.0, "episode": i,
             "episode_seed": i, "return": float(r), "truncated": i in truncated}
            for i, r in enumerate(returns)]


def attacked(a: dict, eps: float, returns, norm: str | None = None,
             truncated=()) -> list[dict]:
    n = {"norm": norm} if norm else {}
    return [{**a, **n, "record": "episode", "attack": "pgd", "eps": eps, "episode": i,
             "episode_seed": i, "return": float(r), "truncated": i in truncated}
            for i, r in enumerate(returns)]


def acr(a: dict, eps: float, fractions, truncated=(), method: str = "crown") -> list[dict]:
    return [{**a, "record": "episode", "source": "certify", "method": method, "eps": eps,
             "episode": i, "episode_seed": i, "certificate_kind": "sound", "return": 100.0,
             "steps": 100, "certified_fraction": float(f), "truncated": i in truncated}
            for i, f in enumerate(fractions)]


def write(tmp_path, rows, name="r.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def only(tables):
    assert len(tables) == 1
    return tables[0]


# ------------------------------------------------------------------ rows = identities
def test_two_agents_with_same_env_algo_loss_are_two_rows():
    mine, shipped = agent("runs/mine.pt", seed=0), agent("cartpole-dqn-vanilla", seed=1)
    t = only(build_tables(natural(mine, [100, 110]) + natural(shipped, [500, 500])))
    assert len(t.rows) == 2 and {r.kind for r in t.rows} == {"agent"}
    labels = sorted(r.label for r in t.rows)
    assert labels[0].startswith("cartpole-dqn-vanilla #" + _hex("cartpole-dqn-vanilla")[:8])
    assert labels[1].startswith("runs/mine.pt #" + _hex("runs/mine.pt")[:8])
    assert all("(DQN, vanilla)" in s for s in labels)
    nat = t.columns[0]
    by_label = {r.label.split(" #")[0]: r.cells[nat] for r in t.rows}
    assert by_label["runs/mine.pt"].center == 105 and by_label["runs/mine.pt"].spread == 5
    assert by_label["cartpole-dqn-vanilla"].center == 500


def test_run_group_merges_seeds_and_aggregation_is_uniform():
    """A group row is IQM [CI] in every cell, even one only some seeds have (marked)."""
    seeds = [agent(f"runs/s{s}", seed=s, run_group="cfg1") for s in range(3)]
    rows = [r for s, a in enumerate(seeds) for r in natural(a, [400 + 10 * s, 410 + 10 * s])]
    rows += attacked(seeds[0], 0.05, [300, 310])  # only seed 0 was attacked
    t = only(build_tables(rows))
    (row,) = t.rows
    assert row.kind == "group" and row.seeds == [0, 1, 2] and "3 seeds" in row.label
    nat, pgd = t.columns
    assert row.cells[nat].ci is not None and row.cells[nat].n_seeds == 3
    assert row.cells[pgd].ci == (305.0, 305.0) and math.isnan(row.cells[pgd].spread)
    assert row.cells[pgd].partial
    md = render([t], "md")
    assert "305.0 [305.0, 305.0] n=1/3" in md and "±" not in md.split("\n\n")[1]
    assert "IQM" in t.caption() and "mean +- std" not in t.caption()


def test_caption_names_both_row_kinds_when_present():
    g = [agent(f"runs/s{s}", seed=s, run_group="cfg1") for s in range(2)]
    rows = natural(g[0], [1, 2]) + natural(g[1], [3, 4]) + natural(agent("other"), [5, 6])
    t = only(build_tables(rows))
    assert sorted(r.kind for r in t.rows) == ["agent", "group"]
    cap = t.caption()
    assert "mean +- std over its episodes" in cap and "IQM of the per-seed means" in cap


def test_no_run_group_no_merge_and_by_agent_splits_run_groups():
    rows = natural(agent("a", seed=0), [1]) + natural(agent("b", seed=1), [2])
    assert len(only(build_tables(rows)).rows) == 2
    grouped = natural(agent("a", 0, run_group="g"), [1]) + natural(agent("b", 1, run_group="g"),
                                                                    [2])
    assert len(only(build_tables(grouped)).rows) == 1
    assert len(only(build_tables(grouped, by_agent=True)).rows) == 2


def test_declared_group_by_label_and_id_prefix():
    rows = (natural(agent("runs/a", 0), [1, 1]) + natural(agent("runs/b", 1), [3, 3])
            + natural(agent("runs/c", 2), [9, 9]))
    g = parse_group(f"mine=runs/a,{_hex('runs/b')[:6]}")
    t = only(build_tables(rows, groups=[g]))
    kinds = {r.label: r.kind for r in t.rows}
    assert kinds == {"mine (DQN, vanilla; 2 seeds)": "group",
                     f"runs/c #{_hex('runs/c')[:8]} (DQN, vanilla)": "agent"}


def test_same_seed_twice_in_a_group_is_refused():
    twin = natural(agent("runs/a", 0, run_group="g"), [1]) + \
        natural(agent("runs/a-perturbed", 0, run_group="g"), [2])
    with pytest.raises(ValueError, match="two different agents with seed 0.*--by-agent"):
        build_tables(twin)
    assert len(only(build_tables(twin, by_agent=True)).rows) == 2
    plain = natural(agent("runs/a", 0), [1]) + natural(agent("runs/b", 0), [2])
    with pytest.raises(ValueError, match="group 'x' holds two different agents with seed 0"):
        build_tables(plain, groups=[parse_group("x=runs/a,runs/b")])


@pytest.mark.parametrize("spec,match", [
    ("x=nothing", "no agent in the results matches 'nothing'"),
    ("x=runs/a,runs/v", "mixes agents of different env/algo/loss"),
    ("x=runs/a;x=runs/b", "declared twice"),
    ("x=runs/a;y=runs/a", "is in two groups"),
])
def test_group_errors(spec, match):
    rows = (natural(agent("runs/a", 0), [1]) + natural(agent("runs/b", 1), [2])
            + natural(agent("runs/v", 2, loss="car"), [3]))
    with pytest.raises(ValueError, match=match):
        build_tables(rows, groups=[parse_group(s) for s in spec.split(";")])


@pytest.mark.parametrize("text", ["x", "=a", "x=", "x=,"])
def test_parse_group_rejects(text):
    with pytest.raises(ValueError, match="LABEL=ID_OR_LABEL"):
        parse_group(text)


def test_ambiguous_id_prefix_is_refused():
    a, b = agent("p", 0), agent("q", 1)
    a["agent_id"], b["agent_id"] = "abcdef01" + "0" * 56, "abcdef02" + "0" * 56
    with pytest.raises(ValueError, match="ambiguous id prefix"):
        build_tables(natural(a, [1]) + natural(b, [2]), groups=[parse_group("x=abcdef")])


def test_legacy_rows_are_each_their_own_row():
    """Files without agent_id: one row per (checkpoint, seed), labelled legacy, never merged."""
    rows = natural(agent("runs/cp", 0, legacy=True), [10, 20]) + \
        natural(agent("runs/cp", 1, legacy=True), [30, 30])
    t = only(build_tables(rows))
    assert [r.label for r in t.rows] == ["runs/cp (DQN, vanilla; seed 0; legacy)",
                                         "runs/cp (DQN, vanilla; seed 1; legacy)"]
    assert [r.cells[t.columns[0]].center for r in t.rows] == [15, 30]
    assert any("legacy" in n for n in t.notes())
    assert "no agent_id" in render([t], "md")


def test_training_logs_are_not_tabulated():
    """certrl train's episode rows (exploration, no attack field) are not Natural returns."""
    a = agent("runs/cp", 0)
    train = [{k: a[k] for k in ("env_id", "env_version", "algo", "loss", "seed")}
             | {"record": "episode", "episode": i, "return": 9.0, "step": 10 * i}
             for i in range(3)]
    t = only(build_tables(natural(a, [500]) + train))
    assert len(t.rows) == 1 and t.rows[0].cells[t.columns[0]].center == 500
    assert build_tables(train) == []


# ------------------------------------------------------------------ columns
def test_l2_and_linf_never_share_a_column():
    a = agent("cartpole-dqn-vanilla")
    rows = attacked(a, 0.05, [100, 100], norm="2") + attacked(a, 0.05, [20, 30], norm="inf")
    t = only(build_tables(rows))
    md = render([t], "md")
    assert "| PGD l∞ @0.05 | PGD l2 @0.05 |" in md
    assert [(c.norm, c.eps) for c in t.columns] == [("inf", 0.05), ("2", 0.05)]
    row = t.rows[0]
    assert [row.cells[c].center for c in t.columns] == [25, 100]
    cap = t.caption()
    assert "norm per column (l_inf, l_2)" in cap and "l_inf perturbations" not in cap
    tex = render([t], "latex")
    assert r"PGD $\ell_\infty$ & PGD $\ell_2$" in tex
    assert r"norm per column ($\ell_\infty$, $\ell_2$)" in tex


def test_attack_strengths_never_share_a_column():
    """PGD-10 and PGD-50 at one eps (two files) are two labelled columns, not one merged."""
    a = agent("cartpole-dqn-vanilla")
    weak = [{**r, "attack_steps": 10, "objective": "ce"} for r in attacked(a, 0.05, [90, 100])]
    strong = [{**r, "attack_steps": 50, "objective": "ce"} for r in attacked(a, 0.05, [10, 20])]
    t = only(build_tables(weak + strong))
    assert [row_c.variant for row_c in t.columns] == ["10 steps", "50 steps"]
    assert [t.rows[0].cells[c].center for c in t.columns] == [95, 15]
    md = render([t], "md")
    assert "PGD l∞ [10 steps] @0.05" in md and "PGD l∞ [50 steps] @0.05" in md


def test_certify_settings_never_share_a_column():
    """CROWN run with two different settings (e.g. backend) is two columns."""
    a = agent("cartpole-dqn-vanilla")
    rows = [{**r, "settings": {"seed": 0, "backend": b, "max_steps": None}}
            for b, fr in (("native", [0.5, 0.5]), ("lirpa", [0.9, 0.9])) for r in acr(a, 0.01, fr)]
    t = only(build_tables(rows))
    acr_cols = [c for c in t.columns if c.group == "acr"]
    assert len(acr_cols) == 2 and sorted(t.rows[0].cells[c].center for c in acr_cols) == [0.5, 0.9]
    one = only(build_tables(rows[:2]))  # one variant: no label
    assert "[settings" not in render([one], "md")


def test_acr_header_names_norm():
    t = only(build_tables(acr(agent("x"), 0.01, [0.5, 0.7])))
    assert "ACR (CROWN) l∞ @0.01" in render([t], "md")
    assert "ACR (CROWN) $\\ell_\\infty$" in render([t], "latex")


def test_eps_spaces_never_share_a_column():
    a = agent("raw", space="raw observation")
    b = agent("norm", seed=1, space="normalized observation")
    t = only(build_tables(attacked(a, 0.1, [1]) + attacked(b, 0.1, [2])))
    assert len(t.columns) == 2 and "eps space per column" in t.caption()
    md = render([t], "md")
    assert "PGD l∞ (normalized observation) @0.1" in md
    assert "PGD l∞ (raw observation) @0.1" in md


# ------------------------------------------------------------------ truncation
def test_truncated_episodes_are_excluded_and_marked():
    a = agent("pong", env="ALE/Pong-v5")
    rows = natural(a, [0.0, 0.0, 0.0], truncated=(0, 1, 2))
    rows += attacked(a, 0.01, [5.0, 7.0, 0.0], truncated=(2,))
    rows += acr(a, 0.01, [0.4, 0.6], truncated=(1,))
    t = only(build_tables(rows))
    md = render([t], "md")
    assert "0.0 ± 0.0" not in md
    row = t.rows[0]
    nat, pgd, cert = t.columns
    assert row.cells[nat].empty and row.cells[nat].n_truncated == 3
    assert row.cells[pgd].center == 6.0 and row.cells[pgd].n_episodes == 2
    assert row.cells[cert].center == 0.5 and row.cells[cert].n_truncated == 1
    assert "| n/a †3 | 6.0 ± 1.0 †1 | 0.500 ± 0.100 ‡1 |" in md
    assert "cut short by --max-steps" in md
    tex = render([t], "latex")
    assert r"n/a$^{\dagger 3}$" in tex and r"^{\ddagger 1}$" in tex
    lines = list(csv.DictReader(io.StringIO(render([t], "csv"))))
    assert [x["n_truncated"] for x in lines] == ["3", "1", "1"]
    assert lines[0]["text"] == "n/a †3" and lines[0]["mean"] == ""


@pytest.mark.parametrize("order", [1, -1])
def test_complete_episode_beats_truncated_copy_in_any_order(order):
    a = agent("x")
    rows = [natural(a, [5.0, 5.0], truncated=(0, 1)), natural(a, [200.0, 300.0])][::order]
    t = only(build_tables(rows[0] + rows[1]))
    cell = t.rows[0].cells[t.columns[0]]
    assert cell.center == 250.0 and cell.n_truncated == 0


def test_truncated_only_cell_is_not_best():
    rows = natural(agent("a", 0), [0.0], truncated=(0,)) + natural(agent("b", 1), [-5.0]) + \
        natural(agent("c", 2), [-7.0])
    t = only(build_tables(rows))
    best = [r.label.split(" ")[0] for r in t.rows if r.cells[t.columns[0]].best]
    assert best == ["b"]


def test_best_is_per_row_kind():
    """Bold compares like with like: agent rows among themselves, group rows likewise."""
    g = [agent(f"g{s}", seed=s, run_group="cfg") for s in range(2)]
    rows = natural(agent("a", 5, loss="x"), [100]) + natural(agent("b", 6, loss="y"), [200])
    rows += natural(g[0], [300]) + natural(g[1], [300])
    t = only(build_tables(rows))
    best = {r.kind + ":" + r.loss: r.cells[t.columns[0]].best for r in t.rows}
    assert best == {"agent:x": False, "agent:y": True, "group:vanilla": False}


# ------------------------------------------------------------------ CLI
def test_cli_group_and_by_agent(tmp_path, capsys):
    rows = natural(agent("runs/a", 0, run_group="g"), [1]) + \
        natural(agent("runs/b", 0, run_group="g"), [2])
    p = write(tmp_path, rows)
    assert main(["table", str(p)]) == 2
    assert "two different agents with seed 0" in capsys.readouterr().err
    assert main(["table", str(p), "--by-agent"]) == 0
    out = capsys.readouterr().out
    assert "runs/a #" in out and "runs/b #" in out
    assert main(["table", str(p), "--by-agent", "--group", "both=runs/a"]) == 0
    assert "both: runs/a #" in capsys.readouterr().out
    assert main(["table", str(p), "--group", "oops"]) == 2
    assert "expected LABEL=ID_OR_LABEL" in capsys.readouterr().err
    assert main(["table", str(p), "--group", "x=runs/zzz"]) == 2
    assert "no agent in the results matches 'runs/zzz'" in capsys.readouterr().err


def test_cli_out_refuses_existing_file_unless_force(tmp_path, capsys):
    p = write(tmp_path, natural(agent("a"), [1.0]))
    out = tmp_path / "t.md"
    out.write_text("my notes\n")
    assert main(["table", str(p), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "my notes\n"
    assert main(["table", str(p), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("**Table 1.**")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.jsonl", "t.md"]  # no temp left


def test_cli_out_checked_before_any_work(tmp_path, capsys):
    """An unwritable --out is reported even when reading the results would fail too."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["table", str(tmp_path / "missing.jsonl"), "--out",
                 str(blocker / "t.md")]) == 2
    err = capsys.readouterr().err
    assert "file.txt is a file, not a folder" in err and "missing.jsonl" not in err
    assert main(["table", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_unterminated_last_line_is_skipped_with_a_warning(tmp_path):
    p = write(tmp_path, natural(agent("a"), [1.0, 3.0]))
    with open(p, "a") as f:
        f.write('{"env_id": "CartPole-v1", "rec')
    with pytest.warns(UserWarning, match="unterminated last line"):
        t = only(build_tables(load_rows([p])))
    assert t.rows[0].cells[t.columns[0]].center == 2.0


# ------------------------------------------------------------------ real agents via the CLI
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict:
    """Results of real agents: two shipped agents, a perturbed copy (same env/algo/loss and
    seed, different weights), l_2 and l_inf PGD at one eps, and --max-steps cut episodes."""
    import torch

    import certrl

    d = tmp_path_factory.mktemp("real")
    copy = certrl.load("cartpole-dqn-sa")
    with torch.no_grad():
        next(copy.net.parameters()).add_(1e-3)
    copy.metadata.pop("run_group", None)  # an edited copy: not a seed of the shipped run
    copy.save(d / "sa-copy.pt")
    for seed_copy in ("g1", "g2"):  # two more copies claiming one run group and seed
        g = certrl.load(d / "sa-copy.pt")
        with torch.no_grad():
            next(g.net.parameters()).add_(1e-3 if seed_copy == "g1" else 2e-3)
        g.metadata["run_group"] = "same-config"
        g.save(d / f"{seed_copy}.pt")
    runs = {
        "sa": ["evaluate", "cartpole-dqn-sa"],
        "radial": ["evaluate", "cartpole-dqn-radial"],
        "copy": ["evaluate", str(d / "sa-copy.pt")],
        "g1": ["evaluate", str(d / "g1.pt")],
        "g2": ["evaluate", str(d / "g2.pt")],
        "linf": ["attack", "cartpole-dqn-sa", "--eps", "0.05", "--steps", "2"],
        "l2": ["attack", "cartpole-dqn-sa", "--eps", "0.05", "--steps", "2", "--norm", "2"],
        "cut": ["evaluate", "cartpole-dqn-sa", "--max-steps", "5"],
    }
    paths = {"dir": d}
    for name, argv in runs.items():
        paths[name] = d / f"{name}.jsonl"
        assert main([*argv, "--episodes", "2", "--out", str(paths[name])]) == 0
    return paths


def _md(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["table", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_real_different_agents_are_different_rows(real, capsys):
    out = _md(capsys, real["sa"], real["radial"], real["copy"])
    rows = [line for line in out.splitlines() if line.startswith("| ") and "#" in line]
    assert len(rows) == 3
    assert sum("(DQN, sa)" in r for r in rows) == 2 and sum("(DQN, radial)" in r for r in rows) == 1
    assert any(r.startswith("| cartpole-dqn-sa #") for r in rows)
    assert any("sa-copy.pt #" in r for r in rows)
    assert "IQM" not in out and "[" not in "".join(rows)


def test_real_same_seed_copies_are_never_two_seeds(real, capsys):
    assert main(["table", str(real["g1"]), str(real["g2"])]) == 2
    assert "two different agents with seed" in capsys.readouterr().err
    out = _md(capsys, real["g1"], real["g2"], "--by-agent")
    assert "g1.pt #" in out and "g2.pt #" in out
    assert main(["table", str(real["sa"]), str(real["copy"]), "--group",
                 f"both=cartpole-dqn-sa,{real['dir'] / 'sa-copy.pt'}"]) == 2
    assert "group 'both' holds two different agents" in capsys.readouterr().err


def test_real_l2_and_linf_attacks_are_two_columns(real, capsys):
    out = _md(capsys, real["linf"], real["l2"], real["sa"])
    assert "| Natural | PGD l∞ @0.05 | PGD l2 @0.05 |" in out
    assert "norm per column (l_inf, l_2)" in out
    assert len([line for line in out.splitlines() if line.startswith("| cartpole")]) == 1
    tex = _md(capsys, real["linf"], real["l2"], "--format", "latex")
    assert r"PGD $\ell_\infty$ & PGD $\ell_2$" in tex


def test_real_truncated_episodes_show_na(real, capsys):
    out = _md(capsys, real["cut"])
    assert "| n/a †2 |" in out and "0.0 ± 0.0" not in out and "5.0 ± 0.0" not in out
    complete = _md(capsys, real["sa"])
    for files in ((real["cut"], real["sa"]), (real["sa"], real["cut"])):
        assert _md(capsys, *files) == complete  # a complete run of an episode beats a cut one
