"""Fine-tuning from a solved agent (--init-from), reward scale, best-checkpoint selection."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import certrl
from certrl.algos import DQN, DQNConfig
from certrl.algos.base import rescale_q_output
from certrl.algos.selection import EVAL_SEED, natural_score
from certrl.cli import main
from certrl.io import CheckpointError
from certrl.losses import make_loss
from certrl.nets import build_network
from tests.conftest import FROZEN, SHIPPED, has_shipped

pytestmark = has_shipped


def _ft(**over) -> DQNConfig:
    base = dict(total_steps=200, learning_starts=40, buffer_size=500, eval_every=0)
    base.update(over)
    return DQNConfig.for_finetune(SHIPPED, **base)


def _weights(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _td_loss(q, batch, gamma):
    """Double-DQN Huber TD loss with q as both online and target net."""
    with torch.no_grad():
        a2 = q(batch["next_obs"]).argmax(1, keepdim=True)
        y = batch["rewards"] + gamma * (1 - batch["dones"]) * \
            q(batch["next_obs"]).gather(1, a2).squeeze(1)
        qa = q(batch["obs"]).gather(1, batch["actions"].unsqueeze(1)).squeeze(1)
    return float(F.huber_loss(qa, y))


def test_finetune_starts_from_the_init_weights_and_first_loss_is_the_init_agents():
    init = certrl.load(SHIPPED)
    algo = DQN(_ft(reward_scale=1.0), init_agent=SHIPPED)
    q = algo.agent_obj.nets["q"]
    for k, v in init.nets["q"].state_dict().items():
        assert torch.equal(q.state_dict()[k], v) and torch.equal(algo.target.state_dict()[k], v)
    algo.learn(40)  # fills the buffer; no update yet (learning_starts 40)
    for k, v in init.nets["q"].state_dict().items():
        assert torch.equal(q.state_dict()[k], v)
    state = algo.rng.bit_generator.state
    expected = _td_loss(init.nets["q"], algo.sample_batch(), algo.cfg.gamma)
    algo.rng.bit_generator.state = state  # the same batch again
    logs = algo.update()
    assert logs["td_loss"] == pytest.approx(expected, rel=1e-6)
    assert not torch.equal(q.state_dict()["head.weight"], init.nets["q"].state_dict()[
        "head.weight"])
    meta = algo.agent.metadata["init_agent"]
    assert meta["name"] == SHIPPED and meta["id"] == certrl.identity.agent_identity(init)


def test_reward_scaled_init_scales_q_exactly_and_keeps_argmax():
    init = certrl.load(SHIPPED)
    algo = DQN(_ft(reward_scale=0.01), init_agent=SHIPPED)
    x = torch.randn(256, 4)
    q_old, q_new = init.forward(x), algo.agent_obj.forward(x)
    torch.testing.assert_close(q_new, 0.01 * q_old, rtol=1e-5, atol=1e-7)
    assert torch.equal(q_new.argmax(1), q_old.argmax(1))
    assert algo.agent.reward_scale == 0.01


@pytest.mark.parametrize("hidden_streams", [0, 8])
def test_rescale_q_output_dueling(hidden_streams):
    spec = {"type": "q", "body": {"kind": "mlp", "in_dim": 4, "hidden": [16],
                                  "activation": "relu"}, "n_out": 3, "dueling": True,
            "stream_hidden": hidden_streams}
    torch.manual_seed(0)
    net = build_network(spec)
    x = torch.randn(64, 4)
    before = net(x).detach()
    rescale_q_output(net, 0.25)
    torch.testing.assert_close(net(x), 0.25 * before)
    assert torch.equal(net(x).argmax(1), before.argmax(1))


@pytest.mark.parametrize("over, needle", [
    ({"hidden": (32, 32)}, "network spec"),
    ({"dueling": True}, "network spec"),
    ({"env_id": "Acrobot-v1"}, "env id"),
])
def test_mismatched_init_agent_is_refused(over, needle):
    with pytest.raises(ValueError, match=needle):
        DQN(_ft(**over), init_agent=SHIPPED)


def test_mismatched_init_agent_is_refused_by_the_algorithm():
    with pytest.raises(ValueError, match="env id"):
        DQN(DQNConfig.for_env("Acrobot-v1", total_steps=100), init_agent=SHIPPED)
    other = certrl.load(SHIPPED)
    other.obs_shape = (5,)
    with pytest.raises(ValueError, match="observation shape"):
        DQN(_ft(), init_agent=other)
    other = certrl.load(SHIPPED)
    other.algo = "ppo"
    with pytest.raises(ValueError, match="algorithm"):
        DQN(_ft(), init_agent=other)


def test_cli_refuses_mismatched_init_agent(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--init-from", SHIPPED, "--out", str(out), "--no-progress",
                 "--set", "hidden=32,32"]) == 2
    assert "network spec" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--init-from", SHIPPED, "--env", "Acrobot-v1", "--out", str(out),
                 "--no-progress"]) == 2
    assert main(["train", "--init-from", SHIPPED, "--algo", "ppo", "--out", str(out),
                 "--no-progress"]) == 2
    assert main(["train", "--init-from", "no-such-agent", "--out", str(out)]) == 2
    assert main(["train", "--env", "CartPole-v1", "--algo", "dqn", "--steps", "100",
                 "--eps-scale", "std", "--out", str(out)]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert not out.exists()


def _car():
    return make_loss("dqn", "car", lam=1.0, solver="ibp", warmup=0.0, ramp=0.0)


def _scaled_run(scale: float, mult: float, loss: str | None, init=SHIPPED) -> DQN:
    """A fine-tuning run whose env paid ``mult`` x the CartPole reward (buffer rewards x mult;
    ``init``'s Q in those units), trained with ``reward_scale`` = ``scale``."""
    rl = _car() if loss == "car" else None
    algo = DQN(_ft(reward_scale=scale, threat={"eps": 0.05}), robust_loss=rl, init_agent=init)
    algo.learn(40)  # fills the buffer; no update yet
    algo.buf["rewards"] *= mult
    return algo


@pytest.mark.parametrize("loss", [None, "car"])
def test_reward_scale_makes_constants_scale_free(loss):
    """An env paying 10x (init agent's Q 10x too) trained with reward_scale / 10 gives the
    same batches, losses, CAR loss weights and weights as the 1x run."""
    init10 = certrl.load(SHIPPED)
    rescale_q_output(init10.nets["q"], 10.0)  # the same agent, in units of the 10x env
    a = _scaled_run(0.01, 1.0, loss)
    b = _scaled_run(0.001, 10.0, loss, init=init10)
    c = _scaled_run(0.01, 10.0, loss)  # rewards x10, reward_scale not divided: Q off scale
    for i in range(5):
        la, lb, lc = a.update(), b.update(), c.update()
        for k in ("td_loss", "loss", "car_weight_max", "car_worst_td"):
            if k in la:
                assert lb[k] == pytest.approx(la[k], rel=1e-4, abs=1e-7), k
        if i == 0:  # the control: same init, same batch, 10x rewards -> another loss
            assert lc["td_loss"] > 100 * la["td_loss"]
    qa, qb = (x.agent_obj.nets["q"].state_dict() for x in (a, b))
    for k in qa:
        torch.testing.assert_close(qb[k], qa[k], rtol=1e-4, atol=1e-6)


def test_car_loss_weights_depend_on_the_q_scale():
    """Why the scale matters: CAR's softmax (lambda 1) over Huber worst-case TD errors is
    near uniform at reward_scale 0.01 (Q ~ 1) and concentrated at reward_scale 1 (Q ~ 87),
    fine-tuning the frozen agent the effect was first measured on."""
    small = _scaled_run(0.01, 1.0, "car", init=FROZEN)
    big = _scaled_run(1.0, 1.0, "car", init=FROZEN)
    ws = max(small.update()["car_weight_max"] for _ in range(3))
    wb = max(big.update()["car_weight_max"] for _ in range(3))
    n = small.cfg.batch_size
    assert ws < 1.5 / n and wb > 4.0 / n  # ~uniform (the mean) vs concentrated


def test_best_checkpoint_selection_with_a_stub_evaluator():
    algo = DQN(_ft(eval_every=10, total_steps=60, learning_starts=5), init_agent=SHIPPED)
    scores = iter([0.0, 1.0, 5.0, 3.0, 5.0, 2.0, 4.0])  # steps 0 (init), 10, ..., 60
    algo.selection.evaluator = lambda agent: next(scores)
    snaps = {}
    algo.learn(callback=lambda a: snaps.__setitem__(a.global_step,
                                                    _weights(a.agent_obj.nets["q"])))
    sel = algo.selection
    assert [h[0] for h in sel.history] == [0, 10, 20, 30, 40, 50, 60]
    assert sel.best_step == 40 and sel.best_score == 5.0  # tie with step 20 -> the later
    best = algo.best_agent
    for k, v in best.nets["q"].state_dict().items():
        assert torch.equal(v, snaps[40][k])
    assert not torch.equal(snaps[20]["head.weight"], snaps[40]["head.weight"])
    assert not torch.equal(best.nets["q"].state_dict()["head.weight"],
                           algo.agent_obj.nets["q"].state_dict()["head.weight"])
    assert best.metadata["selection"]["chosen"] == "best"
    assert "ties -> the later" in best.metadata["selection"]["rule"]
    assert algo.agent.metadata["selection"]["chosen"] == "final"


def test_finetune_evaluates_the_init_weights_at_step_0():
    algo = DQN(_ft(eval_every=1000, eval_episodes=1, total_steps=5), init_agent=SHIPPED)
    algo.learn()
    assert algo.selection.history == [[0, natural_score(certrl.load(SHIPPED), 1)]]
    assert algo.selection.best_step == 0


def test_evaluation_does_not_change_training():
    a = DQN(_ft(eval_every=25, eval_episodes=1, total_steps=100)).learn()
    b = DQN(_ft(eval_every=0, total_steps=100)).learn()
    assert len(a.selection.history) == 4 and b.selection is None
    for k, v in a.agent_obj.nets["q"].state_dict().items():
        assert torch.equal(v, b.agent_obj.nets["q"].state_dict()[k])


def test_resume_keeps_the_best_so_far(tmp_path):
    cfg = _ft(eval_every=20, eval_episodes=1, total_steps=120)
    full = DQN(cfg, init_agent=SHIPPED).learn()
    half = DQN(cfg, init_agent=SHIPPED).learn(60)
    half.save(tmp_path / "latest.pt")
    again = DQN.resume(tmp_path / "latest.pt")
    assert again.selection.history == half.selection.history
    assert again.selection.history[0][0] == 0  # the init weights' evaluation is kept
    assert again.selection.best_step == half.selection.best_step
    for k, v in half.selection.best_weights["q"].items():
        assert torch.equal(v, again.selection.best_weights["q"][k])
    again.learn()
    assert again.selection.history == full.selection.history
    assert again.agent.metadata["init_agent"] == full.agent.metadata["init_agent"]
    assert again.run_group == full.run_group
    for k, v in full.best_agent.nets["q"].state_dict().items():
        assert torch.equal(v, again.best_agent.nets["q"].state_dict()[k])


def test_cli_finetune_writes_best_and_final(tmp_path):
    out = tmp_path / "ft"
    assert main(["train", "--init-from", SHIPPED, "--steps", "150", "--out", str(out),
                 "--no-progress", "--eval-every", "100", "--eval-episodes", "1",
                 "--set", "learning_starts=50", "--set", "buffer_size=500"]) == 0
    agent, final = certrl.load(out), certrl.load(out / "final.pt")
    assert (out / "checkpoints" / "best.pt").exists()
    sel = agent.metadata["selection"]
    assert sel["chosen"] == "best" and [h[0] for h in sel["evaluations"]] == [0, 100]
    assert sel["eval_seed"] == EVAL_SEED and final.metadata["selection"]["chosen"] == "final"
    assert agent.metadata["init_agent"]["name"] == SHIPPED and agent.reward_scale == 0.01
    command = json.loads((out / "command.json").read_text())
    assert command["init_agent"]["id"] == certrl.identity.agent_identity(certrl.load(SHIPPED))
    assert command["init_agent"]["name"] == SHIPPED
    summary = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()][-1]
    assert summary["init_agent"] == command["init_agent"]
    assert summary["selection"]["rule"] == sel["rule"] and "every 100 env steps" in sel["rule"]
    cfg = command["config"]
    assert cfg["lr"] == 1e-4 and cfg["exploration_start"] == cfg["exploration_end"] == 0.01
    assert cfg["target_update_interval"] == 1000 and cfg["batch_size"] == 32


def test_eps_scale_std_stores_the_init_agents_observation_std():
    from certrl.algos.dqn import OBS_STD_EPISODES, OBS_STD_SEED
    from certrl.obs_stats import measure_obs_std

    algo = DQN(_ft(eps_scale="std", threat={"eps": 0.05}), init_agent=SHIPPED)
    std = measure_obs_std(certrl.load(SHIPPED), OBS_STD_EPISODES, OBS_STD_SEED)
    np.testing.assert_allclose(algo.agent.threat_model.scale, std)
    with pytest.raises(ValueError, match="init agent"):
        DQN(DQNConfig(eps_scale="std", total_steps=10))


def test_cli_resume_keeps_the_best_so_far(tmp_path):
    common = ["--init-from", SHIPPED, "--no-progress", "--eval-every", "50",
              "--eval-episodes", "1", "--set", "learning_starts=20", "--set", "buffer_size=300"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--steps", "200", "--out", str(full)]) == 0
    assert main(["train", *common, "--steps", "100", "--out", str(part)]) == 0
    assert main(["train", "--resume", "--steps", "200", "--no-progress", "--out",
                 str(part)]) == 0
    a, b = certrl.load(full), certrl.load(part)
    for key in ("evaluations", "best_step", "best_score", "rule"):
        assert b.metadata["selection"][key] == a.metadata["selection"][key]
    assert [h[0] for h in b.metadata["selection"]["evaluations"]] == [0, 50, 100, 150, 200]
    for k, v in a.nets["q"].state_dict().items():
        assert torch.equal(v, b.nets["q"].state_dict()[k])
    assert b.metadata["init_agent"] == a.metadata["init_agent"]


def test_old_checkpoints_load_with_reward_scale_1(tmp_path):
    agent = certrl.load(SHIPPED)
    assert agent.reward_scale == 1.0 and agent.source == SHIPPED
    agent.reward_scale = 0.5
    agent.save(tmp_path / "a.pt")
    assert certrl.load(tmp_path / "a.pt").reward_scale == 0.5
    with pytest.raises(ValueError, match="reward_scale"):
        DQNConfig(reward_scale=0.0)
    payload = agent.to_payload()
    for bad in (-1.0, 0.0, "x"):
        payload["reward_scale"] = bad
        with pytest.raises(CheckpointError, match="reward_scale"):
            certrl.Agent.from_payload(payload)
    del payload["reward_scale"]
    assert certrl.Agent.from_payload(payload).reward_scale == 1.0
