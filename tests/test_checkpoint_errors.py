"""Bad checkpoints and bad eps values give one clear error, never a traceback (issue 9)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

import certrl
from certrl.agent import AGENTS_DIR, Agent
from certrl.cli import main
from certrl.io import CheckpointError, load_checkpoint, save_checkpoint
from certrl.nets import build_network
from certrl.threat import ThreatModel, check_eps

SHIPPED = AGENTS_DIR / "cartpole-dqn-vanilla.pt"


@pytest.fixture(scope="module")
def payload():
    return load_checkpoint(SHIPPED)


def _save(tmp_path, data, name="a.pt"):
    p = tmp_path / name
    save_checkpoint(data, p)
    return p


# ---------------------------------------------------------------- action count
def test_discrete_action_count_disagrees_with_network(tmp_path, payload):
    data = copy.deepcopy(payload)
    data["action_space"]["n"] = 5
    with pytest.raises(CheckpointError, match=r"5 actions.*2 outputs"):
        certrl.load(_save(tmp_path, data))


def _gaussian_payload(payload, n_out: int, shape: list[int]) -> dict:
    spec = {"type": "gaussian_policy", "n_out": n_out,
            "body": {"kind": "mlp", "in_dim": 4, "hidden": [8], "activation": "tanh"}}
    net = build_network(spec)
    data = copy.deepcopy(payload)
    data["algo"] = "ppo"
    data["nets"] = {"policy": {"spec": spec, "state_dict": net.state_dict()}}
    data["action_space"] = {"kind": "continuous", "shape": shape,
                            "low": [-1.0] * int(np.prod(shape)),
                            "high": [1.0] * int(np.prod(shape))}
    return data


def test_continuous_action_shape_disagrees_with_mean_head(tmp_path, payload):
    ok = _gaussian_payload(payload, 3, [3])
    agent = certrl.load(_save(tmp_path, ok, "ok.pt"))
    assert agent.predict(np.zeros(4, dtype=np.float32)).shape == (3,)
    bad = _gaussian_payload(payload, 3, [6])
    with pytest.raises(CheckpointError, match=r"\(6,\).*6 values.*3"):
        certrl.load(_save(tmp_path, bad))


# ---------------------------------------------------------------- preprocessing
def test_unknown_preprocessing_kind(tmp_path, payload):
    data = copy.deepcopy(payload)
    data["preprocessing"] = {"kind": "bogus"}
    with pytest.raises(CheckpointError, match="'bogus'.*identity.*normalize.*pixels"):
        certrl.load(_save(tmp_path, data))


# ---------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_names_the_tensor(tmp_path, payload, bad):
    data = copy.deepcopy(payload)
    sd = data["nets"]["q"]["state_dict"]
    key = sorted(sd)[-1]
    sd[key].view(-1)[0] = bad
    with pytest.raises(CheckpointError, match=f"'q'.*'{key}'"):
        certrl.load(_save(tmp_path, data))


def test_non_finite_obs_rms(tmp_path, payload):
    data = copy.deepcopy(payload)
    data["preprocessing"] = {"kind": "normalize"}
    data["obs_rms"] = {"mean": [0.0, float("nan"), 0.0, 0.0], "var": [1.0] * 4,
                       "count": 10.0, "epsilon": 1e-8, "frozen": True}
    with pytest.raises(CheckpointError, match="obs_rms.mean"):
        certrl.load(_save(tmp_path, data))


# ---------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("content", ["random", "pickle_numpy"])
def test_unreadable_file_does_not_relay_weights_only_advice(tmp_path, content):
    p = tmp_path / "x.pt"
    if content == "random":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"a": np.zeros(3)}, p)
    with pytest.raises(CheckpointError, match="not a readable certrl checkpoint") as info:
        certrl.load(p)
    msg = str(info.value)
    assert "weights_only" not in msg and "trust" not in msg, msg
    assert "\n" not in msg


def test_cli_random_bytes_checkpoint_one_line(tmp_path, capsys):
    p = tmp_path / "x.pt"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    out = tmp_path / "o.jsonl"
    assert main(["certify", str(p), "--eps", "0.1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ---------------------------------------------------------------- eps overflow
@pytest.mark.parametrize("eps", [1e39, "1e39", 3.5e38, np.float64(1e39)])
def test_check_eps_refuses_values_not_finite_in_float32(eps):
    with pytest.raises(ValueError, match="eps"):
        check_eps(eps)
    with pytest.raises(ValueError, match="eps"):
        ThreatModel(eps=eps)


def test_eps_overflow_message_states_the_value():
    with pytest.raises(ValueError, match=r"1e\+39") as info:
        check_eps(1e39)
    assert "tensor" not in str(info.value)
    assert check_eps(3.0e38) == 3.0e38  # still finite in float32
    with pytest.raises(ValueError, match=r"1e\+39"):
        ThreatModel(eps=0.1).ball(torch.zeros(1, 4), eps=1e39)


@pytest.mark.parametrize("command", ["certify", "attack"])
def test_cli_eps_overflow_exit_2_no_file(tmp_path, capsys, command):
    out = tmp_path / "o.jsonl"
    argv = [command, "cartpole-dqn-vanilla", "--eps", "1e39", "--episodes", "1",
            "--max-steps", "5", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1e+39" in err and "tensor(" not in err and "Traceback" not in err, err
    assert not out.exists()


def test_agent_constructor_checks_consistency(payload):
    agent = Agent.from_payload(copy.deepcopy(payload))
    with pytest.raises(ValueError, match="preprocessing kind"):
        Agent(agent.nets, env_id=agent.env_id, algo="dqn", obs_shape=(4,),
              action_space=agent.action_space, preprocessing={"kind": "nope"},
              threat_model=agent.threat_model)
    with pytest.raises(ValueError, match="3 actions"):
        Agent(agent.nets, env_id=agent.env_id, algo="dqn", obs_shape=(4,),
              action_space={"kind": "discrete", "n": 3}, preprocessing={"kind": "identity"},
              threat_model=agent.threat_model)
    assert os.path.exists(SHIPPED)
