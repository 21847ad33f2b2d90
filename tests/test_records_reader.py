"""The one JSON lines reader (certrl.records.read_rows), the typed rows and the locked
appender."""

from __future__ import annotations

import warnings

import pytest

from certrl.records import (
    CertEpisodeRow,
    EpisodeRow,
    GwcRow,
    Row,
    StateRow,
    TrajectoryBoundRow,
    UnitLog,
    append_rows_atomic,
    read_results,
    read_rows,
    row_from_json,
)


def _write(tmp_path, data: bytes):
    p = tmp_path / "r.jsonl"
    p.write_bytes(data)
    return p


EVALUATE_ROW = {"agent_id": "ab" * 32, "env_id": "CartPole-v1", "source": "evaluate",
                "record": "episode", "eps": 0.0, "attack": "none", "attack_steps": 0,
                "episode": 3, "return": 500.0, "length": 500, "truncated": False}


@pytest.mark.parametrize("row, kind", [
    (EVALUATE_ROW, EpisodeRow),
    ({**EVALUATE_ROW, "source": "attack", "attack": "pgd", "step_size": None,
      "action_changes": 4}, EpisodeRow),
    ({**EVALUATE_ROW, "source": None}, EpisodeRow),  # older files: no source
    ({"source": "certify", "record": "episode", "method": "crown", "return": 9.0,
      "certified_fraction": 0.5, "mean_radius": 0.1}, CertEpisodeRow),
    ({"source": "certify", "record": "batch", "method": "ibp", "return": None}, CertEpisodeRow),
    ({"source": "certify", "record": "episode", "method": "gwc", "gwc_return": 8.0}, GwcRow),
    ({"source": "certify", "record": "trajectory_bound", "certified_return": 1.5},
     TrajectoryBoundRow),
    ({"source": "certify", "record": "state", "step": 2, "radius": "inf", "p_lower": 0.9},
     StateRow),
    ({"record": "episode", "return": 3.0}, Row),  # certrl train's log: no result type
])
def test_typed_rows_round_trip_the_same_keys_and_values(row, kind):
    typed = row_from_json(row)
    assert type(typed) is kind
    assert typed.to_json() == row


def test_typed_row_fields_and_extra_keys():
    r = row_from_json({**EVALUATE_ROW, "future_field": [1, 2]})
    assert (r.return_, r.episode, r.truncated, r.agent_id) == (500.0, 3, False, "ab" * 32)
    assert r.extra == {"future_field": [1, 2]}  # unknown keys are kept, not refused
    assert r.get("return") == 500.0 and r.get("future_field") == [1, 2]
    assert r.get("missing", "d") == "d" and r.action_changes is None


def test_built_rows_write_declared_fields_and_omit_unset_optional_ones(tmp_path):
    row = EpisodeRow(source="evaluate", record="episode", eps=0.0, return_=12.0,
                     config={"lr": 1e-3}, extra={"note": "x"})
    d = row.to_json()
    assert d["return"] == 12.0 and d["agent_id"] is None and d["note"] == "x"
    assert "action_changes" not in d and "step_size" not in d
    append_rows_atomic(tmp_path / "r.jsonl", [row, {"a": float("inf")}])
    typed, plain = read_results(tmp_path / "r.jsonl")
    assert typed == row and plain.extra == {"a": "inf"}


def test_rows_and_blank_lines(tmp_path):
    p = _write(tmp_path, b'{"a": 1}\n\n  \n{"b": [1, 2]}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rows(p) == [{"a": 1}, {"b": [1, 2]}]


def test_unterminated_last_line_is_skipped_with_a_warning(tmp_path):
    p = _write(tmp_path, b'{"a": 1}\n{"a": 2}')  # even a complete JSON object: no newline
    with pytest.warns(UserWarning, match=r"r\.jsonl:2: skipped an unterminated last line"):
        assert read_rows(p) == [{"a": 1}]


@pytest.mark.parametrize("data,line,what", [
    (b'{"a": 1}\n{"a": \n{"b": 2}\n', 2, "not a JSON line"),
    (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    (b'3\n', 1, "expected a JSON object, got int"),
    (b'{"a": 1}\n"text"\n', 2, "expected a JSON object, got str"),
])
def test_malformed_line_names_file_and_line(tmp_path, data, line, what):
    p = _write(tmp_path, data)
    with pytest.raises(ValueError) as e:
        read_rows(p)
    assert str(e.value).startswith(f"{p}:{line}: {what}")


def test_binary_file_is_named(tmp_path):
    p = _write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n")
    with pytest.raises(ValueError, match="binary file") as e:
        read_rows(p)
    assert str(p) in str(e.value)


def test_non_utf8_file_is_named(tmp_path):
    p = _write(tmp_path, b'{"a": 1}\n{"a": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match="not UTF-8") as e:
        read_rows(p)
    assert str(e.value).startswith(f"{p}:2:")


def test_folder_is_not_a_results_file(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        read_rows(tmp_path)


def test_append_repairs_tail_under_the_lock(tmp_path):
    p = _write(tmp_path, b'{"a": 1}\n{"a": 2, "tru')
    append_rows_atomic(p, [{"a": 3}])
    assert p.read_bytes() == b'{"a": 1}\n{"a": 3}\n'


def test_unit_log_discards_a_unit_another_writer_finished(tmp_path):
    """Two writers: the second to commit a unit writes nothing."""
    p = tmp_path / "r.jsonl"

    def key_of(r):
        return r.get("unit")

    first, second = UnitLog(p, key_of), UnitLog(p, key_of)
    assert first.refresh() == set() and second.refresh() == set()
    assert first.commit("u1", [{"unit": "u1", "by": "first"}])
    assert not second.commit("u1", [{"unit": "u1", "by": "second"}])
    assert second.commit("u2", [{"unit": "u2", "by": "second"}])
    assert first.refresh() == {"u1", "u2"}  # incremental: sees the other writer's unit
    assert [r["unit"] for r in read_rows(p)] == ["u1", "u2"]


def test_unit_log_restarts_when_the_file_is_replaced(tmp_path):
    p = tmp_path / "r.jsonl"
    log = UnitLog(p, lambda r: r.get("unit"))
    append_rows_atomic(p, [{"unit": "u1"}, {"unit": "u2"}])
    assert log.refresh() == {"u1", "u2"}
    p.unlink()
    append_rows_atomic(p, [{"unit": "u3"}])
    assert log.refresh() == {"u3"}


EPISODE_KEYS = {"agent_id", "agent_label", "algo", "attack", "attack_steps", "checkpoint",
                "config", "deterministic", "env_id", "env_version", "episode", "episode_seed",
                "eps", "eps_space", "eval_seed", "length", "loss", "norm", "record", "return",
                "run_group", "seed", "settings", "settings_hash", "source", "truncated", "unit",
                "versions", "train_versions"}  # the keys written before the row types existed
ATTACK_KEYS = EPISODE_KEYS | {"action_changes", "objective", "step_size", "threat_model"}


@pytest.mark.usefixtures("keep_threads")
def test_evaluate_and_attack_rows_keep_their_keys(tmp_path, cartpole):
    from certrl.cli import main

    ev, atk = tmp_path / "e.jsonl", tmp_path / "a.jsonl"
    assert main(["evaluate", "cartpole-dqn-vanilla", "--episodes", "1", "--max-steps", "5",
                 "--out", str(ev)]) == 0
    assert main(["attack", "cartpole-dqn-vanilla", "--attack", "pgd", "--eps", "0.05",
                 "--episodes", "1", "--max-steps", "5", "--out", str(atk)]) == 0
    (e,), (a,) = read_rows(ev), read_rows(atk)
    assert set(e) == EPISODE_KEYS and set(a) == ATTACK_KEYS
    assert a["step_size"] is None and a["objective"] == "ce"  # written even when null
    assert row_from_json(a).to_json() == a
