import numpy as np
import pytest
import torch

import certrl
from certrl.algos import DQN, DQNConfig
from certrl.io import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def dqn_agent():
    torch.set_num_threads(1)
    return DQN(DQNConfig(total_steps=200, learning_starts=50, seed=1, dueling=True)).learn().agent


def test_round_trip(tmp_path, dqn_agent):
    path = tmp_path / "a.pt"
    dqn_agent.save(path)
    raw = torch.load(path, weights_only=True)  # plain content only
    assert raw["format"] == "certrl-checkpoint" and raw["env_version"] == "v1"
    for key in ("versions", "config", "threat_model", "preprocessing", "seed", "nets"):
        assert key in raw
    agent = certrl.load(path)
    assert agent.env_id == "CartPole-v1" and agent.algo == "dqn" and agent.seed == 1
    assert agent.threat_model == dqn_agent.threat_model
    assert agent.action_space_kind == "discrete" and agent.loss_name == "vanilla"
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), dqn_agent.predict(obs))
    x = agent.preprocess(obs)
    torch.testing.assert_close(agent.bounded_form()(x), agent.q_values(x))
    assert agent.predict(obs[0]).shape == ()


def test_missing_corrupt_foreign(tmp_path, dqn_agent):
    with pytest.raises(CheckpointError, match="does not exist"):
        certrl.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file and no shipped agent"):
        certrl.load("no-such-agent")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="not a readable"):
        certrl.load(bad)
    good = tmp_path / "good.pt"
    dqn_agent.save(good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError):
        certrl.load(trunc)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a certrl checkpoint"):
        certrl.load(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_inconsistent_and_future(tmp_path, dqn_agent):
    payload = dqn_agent.to_payload()
    payload["nets"]["q"]["state_dict"] = {"oops": torch.zeros(1)}
    p = tmp_path / "inc.pt"
    save_checkpoint(payload, p)
    with pytest.raises(CheckpointError, match="inconsistent"):
        certrl.load(p)
    payload = dqn_agent.to_payload()
    save_checkpoint(payload, p)
    data = torch.load(p, weights_only=True)
    data["format_version"] = 99
    torch.save(data, p)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(p)
    del data["nets"]
    data["format_version"] = 1
    torch.save(data, p)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(p)


def test_obs_shape_mismatch(dqn_agent):
    with pytest.raises(ValueError, match="does not match"):
        dqn_agent.preprocess(np.zeros((2, 5)))


def test_shipped_agent_loads_by_name():
    from certrl.agent import shipped_agents

    if "cartpole-dqn-vanilla" not in shipped_agents():
        pytest.skip("shipped agent not present")
    agent = certrl.load("cartpole-dqn-vanilla")
    assert agent.env_id == "CartPole-v1" and agent.algo == "dqn"
