"""Critic, Robust Sarsa (RS, RS+MAD) and SA-RL attacks: ball and domain, a task whose
optimal perturbation is known by hand, checkpoints tied to their victim, the CLI."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from certrl import ThreatModel
from certrl.adversaries import value_attack
from certrl.adversaries.checkpoint import load_attacker, save_attacker
from certrl.adversaries.learned import obtain_rs, obtain_sarl
from certrl.adversaries.ppo_lite import PPOLiteConfig, make_nets
from certrl.adversaries.sarsa import SarsaConfig, sarsa_spec
from certrl.adversaries.worst import worst_of
from certrl.agent import Agent
from certrl.attacks import make_attack
from certrl.cli import main
from certrl.evaluate import evaluate
from certrl.io import CheckpointError
from certrl.nets import build_network

SIGN_ENV = "CertrlTest/Sign-v0"
SIGN_STEPS = 20


class SignEnv(gym.Env):
    """obs s ~ U[-1, 1] drawn afresh each step; reward 1 iff the action is 1[s > 0];
    20 steps. A victim playing sign(obs) scores 20; an adversary with eps pushes every
    |s| < eps across 0, so the optimal attack leaves 20 (1 - eps) on average, while
    uniform noise flips only a quarter of those states (20 (1 - eps / 4))."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.s, self.t = 0.0, 0

    def _draw(self):
        self.s = float(self.np_random.uniform(-1.0, 1.0))
        return np.asarray([self.s], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        r = float(int(action) == int(self.s > 0))
        self.t += 1
        return self._draw(), r, False, self.t >= SIGN_STEPS, {}


@pytest.fixture
def sign_env(monkeypatch):
    """Every env the attacks make is the SignEnv (certrl's make_env knows only real envs)."""
    def make(env_id, seed=0, **kw):
        env = SignEnv()
        env.reset(seed=int(seed))
        return env

    import certrl.adversaries.rollouts as ro
    import certrl.adversaries.victim_env as ve
    import certrl.rollout as rollout
    for mod in (ro, ve, rollout):
        monkeypatch.setattr(mod, "make_env", make)
    return make


def sign_victim() -> Agent:
    """A DQN victim with Q(x) = (-10 x, 10 x): it plays 1[x > 0]."""
    q = build_network({"type": "q", "body": {"kind": "mlp", "in_dim": 1, "hidden": []},
                       "n_out": 2})
    with torch.no_grad():
        q.head.weight.copy_(torch.tensor([[-10.0], [10.0]]))
        q.head.bias.zero_()
    return Agent({"q": q}, env_id=SIGN_ENV, algo="dqn", obs_shape=(1,),
                 action_space={"kind": "discrete", "n": 2},
                 preprocessing={"kind": "identity"},
                 threat_model=ThreatModel(eps=0.0, space="raw observation"))


def mean_return(agent, attack_of, n=30) -> float:
    return float(np.mean([evaluate(agent, 1, 0, attack_of(i), indices=[i]).returns[0]
                          for i in range(n)]))


def ppo_victim(clip: bool) -> Agent:
    """A small continuous PPO agent (Pendulum shapes), optionally with a domain clip and a
    per-dimension scale, to exercise every projection."""
    torch.manual_seed(0)
    body = {"kind": "mlp", "in_dim": 3, "hidden": [16, 16], "activation": "tanh"}
    nets = {"policy": build_network({"type": "gaussian_policy", "body": body, "n_out": 1}),
            "value": build_network({"type": "value", "body": body})}
    tm = ThreatModel(eps=0.0, space="raw observation", lower=-1.0 if clip else None,
                     upper=1.0 if clip else None, scale=(0.5, 1.0, 2.0) if clip else None)
    return Agent(nets, env_id="Pendulum-v1", algo="ppo", obs_shape=(3,),
                 action_space={"kind": "continuous", "shape": [1], "low": [-2.0],
                               "high": [2.0]},
                 preprocessing={"kind": "identity"}, threat_model=tm)


def in_set(x_adv, x, tm, eps) -> bool:
    s = tm.scale_tensor(x)
    n = torch.linalg.vector_norm(((x_adv - x) / s).reshape(x.shape[0], -1), ord=tm.norm,
                                 dim=1)
    ok = bool((n <= eps * (1 + 1e-5) + 1e-6).all())
    if tm.lower is not None:
        ok &= bool((x_adv >= tm.lower - 1e-7).all() and (x_adv <= tm.upper + 1e-7).all())
    return ok


def loud(net):
    """Scale a network's last layer so that its outputs are large (pushes to the border)."""
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(100.0)
    return net


@pytest.mark.parametrize("norm", [math.inf, 2.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name", ["critic", "rs", "rs+mad", "sa-rl", "pa-ad"])
def test_attacks_stay_in_ball_and_domain(name, clip, norm):
    agent = ppo_victim(clip)
    tm = ThreatModel.from_dict({**agent.threat_model.to_dict(), "norm": "inf" if norm ==
                                math.inf else "2"})
    net = None
    if name in ("rs", "rs+mad"):
        net = loud(build_network(sarsa_spec(agent)))
    elif name == "sa-rl":
        net = loud(make_nets(3, 3)["policy"])
    elif name == "pa-ad":
        net = loud(make_nets(3, 1)["policy"])
    g = torch.Generator().manual_seed(1)
    for eps in (0.0, 0.05, 0.3, 2.0):
        x = torch.rand((64, 3), generator=g) * 2.4 - 1.2
        if clip:
            x = x.clamp(-1, 1)
        x_adv = value_attack(name, agent, tm, eps, 5, None, 0, net)(x)
        assert x_adv.shape == x.shape and in_set(x_adv, x, tm, eps), (name, eps)


def test_critic_on_dqn_stays_in_ball(frozen_cartpole):
    tm = frozen_cartpole.threat_model.with_scale((0.5, 1.0, 0.1, 2.0))
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    for eps in (0.01, 0.2):
        assert in_set(value_attack("critic", frozen_cartpole, tm, eps)(x), x, tm, eps)


@pytest.mark.slow
def test_rs_finds_the_known_optimal_perturbation(sign_env, tmp_path):
    """On SignEnv the best attack flips every |s| < eps: RS gets near 20 (1 - eps), far
    below uniform noise (about 20 (1 - eps / 4)). A short Sarsa fit (4 rounds of 1024
    steps, lr 1e-3, gamma 0.9) so that the test is fast; the defaults are the reference's."""
    agent, eps = sign_victim(), 0.5
    tm = agent.threat_model.with_eps(eps)
    _, q = obtain_rs(agent, "sign", SarsaConfig(budget=4096, steps_per_iter=1024, lr=1e-3,
                                                gamma=0.9, explore=0.3), tmp_path / "rs.pt")
    rs = mean_return(agent, lambda i: value_attack("rs", agent, tm, eps, 10, None, i, q))
    rnd = mean_return(agent, lambda i: make_attack("random", agent.forward, tm, eps, seed=i))
    assert abs(mean_return(agent, lambda i: None, 5) - SIGN_STEPS) < 1e-9
    assert rs < 20 * (1 - eps) + 1.5 and rs < rnd - 3, (rs, rnd)


def test_rs_beats_random_on_sign_env_fast(sign_env, tmp_path):
    """Fast variant of the RS test: one round of 1024 Sarsa steps already beats noise."""
    agent, eps = sign_victim(), 0.5
    tm = agent.threat_model.with_eps(eps)
    _, q = obtain_rs(agent, "sign", SarsaConfig(budget=1024, steps_per_iter=1024, epochs=4,
                                                lr=1e-3, gamma=0.9, explore=0.3),
                     tmp_path / "rs.pt")
    rs = mean_return(agent, lambda i: value_attack("rs", agent, tm, eps, 10, None, i, q), 20)
    rnd = mean_return(agent, lambda i: make_attack("random", agent.forward, tm, eps, seed=i),
                      20)
    assert rs < rnd - 3, (rs, rnd)


@pytest.mark.slow
def test_sarl_finds_the_known_optimal_perturbation(sign_env, tmp_path):
    """SA-RL reaches the optimum of SignEnv (about 25 CPU s: 16 PPO rounds of 1024 steps)."""
    agent, eps = sign_victim(), 0.5
    tm = agent.threat_model.with_eps(eps)
    cfg = PPOLiteConfig(budget=16384, steps_per_iter=1024, lr=3e-3, value_lr=3e-3)
    _, pol = obtain_sarl(agent, "sign", tm, eps, cfg, path=tmp_path / "sarl.pt")
    sarl = mean_return(agent, lambda i: value_attack("sa-rl", agent, tm, eps, attacker=pol))
    rnd = mean_return(agent, lambda i: make_attack("random", agent.forward, tm, eps, seed=i))
    assert sarl < 20 * (1 - eps) + 1.5 and sarl < rnd - 3, (sarl, rnd)


@pytest.mark.slow
def test_paad_beats_random_on_sign_env(sign_env, tmp_path):
    """PA-AD's director (PPO, 4 rounds of 512 steps) with its actor clearly beats uniform
    noise on SignEnv (measured 11.5 against the optimum 10 and noise 17.7: at this budget it
    is near, not at, the optimum; the test does not claim more)."""
    agent, eps = sign_victim(), 0.5
    tm = agent.threat_model.with_eps(eps)
    cfg = PPOLiteConfig(budget=2048, steps_per_iter=512, minibatches=4)
    _, director = obtain_sarl(agent, "sign", tm, eps, cfg, path=tmp_path / "paad.pt",
                              kind="pa-ad")
    paad = mean_return(agent, lambda i: value_attack("pa-ad", agent, tm, eps, 10, None, i,
                                                     director))
    rnd = mean_return(agent, lambda i: make_attack("random", agent.forward, tm, eps, seed=i))
    assert paad < rnd - 3, (paad, rnd)


@pytest.mark.parametrize("kind", ["sa-rl", "pa-ad"])
def test_policy_attackers_train_save_and_reload(sign_env, tmp_path, kind):
    """Fast variant: a 1024-step adversary / director is saved with its victim and reloads
    to the same deterministic perturbation, inside the ball (learning: the slow tests)."""
    agent, eps = sign_victim(), 0.5
    tm = agent.threat_model.with_eps(eps)
    cfg = PPOLiteConfig(budget=1024, steps_per_iter=512, minibatches=4, epochs=2)
    path = tmp_path / "adv.pt"
    p1, pol1 = obtain_sarl(agent, "sign", tm, eps, cfg, path=path, kind=kind)
    p2, pol2 = obtain_sarl(agent, "sign", tm, eps, cfg, path=path, kind=kind)
    assert p1["attacker_id"] == p2["attacker_id"] and p1["settings"]["budget"] == 1024
    x = torch.linspace(-1, 1, 41)[:, None]
    a1 = value_attack(kind, agent, tm, eps, 10, None, 0, pol1)(x)
    assert torch.equal(a1, value_attack(kind, agent, tm, eps, 10, None, 0, pol2)(x))
    assert in_set(a1, x, tm, eps)
    with pytest.raises(CheckpointError, match="threat model"):
        obtain_sarl(agent, "sign", tm, 0.25, cfg, path=path, kind=kind)


def test_attacker_checkpoint_is_tied_to_its_victim(tmp_path, frozen_cartpole):
    agent = sign_victim()
    q = build_network(sarsa_spec(agent))
    from certrl.identity import agent_identity
    aid = agent_identity(agent)
    path = tmp_path / "a.pt"
    att = save_attacker(path, "rs", aid, "sign", SIGN_ENV, {"budget": 1}, {"q": q}, {})
    payload, nets = load_attacker(path, "rs", aid)
    assert payload["attacker_id"] == att and set(nets) == {"q"}
    with pytest.raises(CheckpointError, match="trained against agent"):
        load_attacker(path, "rs", agent_identity(frozen_cartpole))
    with pytest.raises(CheckpointError, match="not 'sa-rl'"):
        load_attacker(path, "sa-rl", aid)
    data = torch.load(path, weights_only=True)
    data["nets"]["q"]["state_dict"]["head.bias"] += 1.0
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="altered"):
        load_attacker(path, "rs", aid)


def test_worst_takes_the_minimum_per_episode():
    from certrl.records import EpisodeRow
    def row(ep, ret, **extra):
        return EpisodeRow(eps=0.1, episode=ep, return_=ret, extra=extra)
    rows_of = {"pgd": [row(0, 10.0), row(1, 50.0)],
               "rs": [row(0, 30.0, attacker_id="abc"), row(1, 20.0, attacker_id="abc")]}
    w = worst_of(rows_of)
    assert w[(0.1, 0)]["name"] == "pgd" and w[(0.1, 1)]["name"] == "rs"
    assert w[(0.1, 1)]["returns"] == {"pgd": 50.0, "rs": 20.0}
    assert w[(0.1, 0)]["attacker_ids"] == {"rs": "abc"}


def test_cli_worst_rows_resume_and_name_attacker(tmp_path, frozen_cartpole):
    out, att = tmp_path / "w.jsonl", tmp_path / "rs.pt"
    args = ["attack", "tests/data/cartpole-dqn-vanilla-v0.pt", "--attack", "worst",
            "--worst-of", "random,rs", "--eps", "0.05", "--episodes", "2", "--max-steps",
            "30", "--budget", "256", "--attacker", str(att), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    worst = [r for r in rows if r["attack"] == "worst"]
    rs = [r for r in rows if r["attack"] == "rs"]
    assert len(worst) == 2 and len(rs) == 2
    assert all(r["attacker_id"] == rs[0]["attacker_id"] and r["attacker_budget"] == 256
               for r in rs)
    for w in worst:
        assert w["return"] == min(w["worst_of"].values())
        assert w["worst_attack"] in ("random", "rs") and w["attacker_ids"]["rs"]
    assert main(args) == 0  # resumed: nothing new
    assert len(out.read_text().splitlines()) == len(rows)


def test_cli_refuses_bad_learned_flags(tmp_path, capsys):
    base = ["attack", "tests/data/cartpole-dqn-vanilla-v0.pt", "--eps", "0.1", "--out",
            str(tmp_path / "x.jsonl")]
    assert main(base + ["--attack", "rs", "--rs-mad-ratio", "2"]) == 2
    assert main(base + ["--attack", "pgd", "--worst-of", "pgd,rs"]) == 2
    assert not (tmp_path / "x.jsonl").exists()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(base + ["--attack", "rs", "--attacker", str(bad)]) == 2
    assert "attacker checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def _rs_vs_pgd(agent, budget: int, episodes: int, max_steps, tmp_path):
    eps = 0.05  # raw CartPole observation, l_inf: the frozen agent keeps ~460 under PGD
    tm = agent.threat_model.with_eps(eps)
    _, q = obtain_rs(agent, "frozen", SarsaConfig(budget=budget, steps_per_iter=1024),
                     tmp_path / "rs.pt")
    def run(attack_of):
        return [evaluate(agent, 1, 0, attack_of(i), indices=[i], max_steps=max_steps)
                .returns[0] for i in range(episodes)]
    rs = run(lambda i: value_attack("rs", agent, tm, eps, 10, None, i, q))
    pgd = run(lambda i: make_attack("pgd", agent.forward, tm, eps, 10, None, i))
    return rs, pgd


def test_rs_beats_pgd_on_cartpole_fast(frozen_cartpole, tmp_path):
    """Fast variant: a 2048-step Sarsa model, 3 episodes cut at 100 steps: RS ends them
    (measured: 26, 28, 29) where PGD mostly does not (100, 64, 100)."""
    rs, pgd = _rs_vs_pgd(frozen_cartpole, 2048, 3, 100, tmp_path)
    assert sum(rs) <= sum(pgd) and max(rs) < 100, (rs, pgd)


@pytest.mark.slow
def test_rs_beats_pgd_on_cartpole(frozen_cartpole, tmp_path):
    """8192-step Sarsa model, 10 full episodes (measured: RS 42.1, PGD 456.4)."""
    rs, pgd = _rs_vs_pgd(frozen_cartpole, 8192, 10, None, tmp_path)
    assert np.mean(rs) <= np.mean(pgd), (rs, pgd)


def test_learned_attacks_run_on_a_continuous_victim(tmp_path):
    """Continuous PPO victim (Pendulum): Sarsa on [x, action], RS / RS+MAD / critic and a
    short PA-AD director run end to end inside the ball."""
    agent = ppo_victim(False)
    _, q = obtain_rs(agent, "pend", SarsaConfig(budget=512, steps_per_iter=256, epochs=2,
                                                minibatches=4), tmp_path / "rs.pt")
    tm = agent.threat_model.with_eps(0.1)
    _, director = obtain_sarl(agent, "pend", tm, 0.1, PPOLiteConfig(
        budget=256, steps_per_iter=256, epochs=1, minibatches=2), path=tmp_path / "pa.pt",
        kind="pa-ad")
    seen = []
    for name, net in (("critic", None), ("rs", q), ("rs+mad", q), ("pa-ad", director)):
        atk = value_attack(name, agent, tm, 0.1, 5, None, 0, net)

        def check(x, atk=atk):
            x_adv = atk(x)
            seen.append(in_set(x_adv, x, tm, 0.1))
            return x_adv

        res = evaluate(agent, 1, 0, check, max_steps=10)
        assert res.lengths == [10]
    assert seen and all(seen)
