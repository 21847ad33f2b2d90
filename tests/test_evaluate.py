import numpy as np
import pytest
import torch

import certrl
from certrl.agent import shipped_agents
from certrl.attacks import make_attack
from certrl.evaluate import evaluate

pytestmark = pytest.mark.skipif("cartpole-dqn-vanilla" not in shipped_agents(),
                                reason="no shipped agent")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_natural_returns_are_seeded_and_summarized():
    agent = certrl.load("cartpole-dqn-vanilla")
    res = evaluate(agent, 3, seed=10, max_steps=100)
    assert res.seeds == [10, 11, 12] and len(res.returns) == 3
    assert res.mean == pytest.approx(np.mean(res.returns))
    assert res.std == pytest.approx(np.std(res.returns))
    assert res.returns == evaluate(agent, 3, seed=10, max_steps=100).returns
    assert all(n == 100 for n in res.lengths)  # a solved CartPole survives


def test_attacked_returns_record_action_changes():
    agent = certrl.load("cartpole-dqn-vanilla")
    atk = make_attack("pgd", agent.forward, agent.threat_model.with_eps(0.2), steps=5)
    res = evaluate(agent, 2, seed=0, attack=atk, max_steps=100)
    assert 0 < res.extra["action_change_rate"] <= 1
    assert res.mean < 100


def test_bad_episode_count():
    agent = certrl.load("cartpole-dqn-vanilla")
    with pytest.raises(ValueError):
        evaluate(agent, 0)
