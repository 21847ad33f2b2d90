"""Natural and attacked returns over N seeded episodes, and their resumable results files.

Episode i is reset with seed ``seed + i``; actions are deterministic by default,
so a deterministic env gives the same returns every run (stochastic actions use
a generator seeded from (seed, i), so an episode's result does not depend on
which other episodes ran before it). An attack (a callable on network-input
batches, see ``certrl.attacks.make_attack``) perturbs the observation before
each action (per-step budget); the env itself is untouched.

``run_episodes`` writes one row per episode to a results file, unit by unit
(unit = agent identity, eps, norm, attack, episode), under the file lock of
``certrl.records``: re-running the same command finishes only the missing
episodes, and several processes may share one file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from certrl.agent import Agent
from certrl.envs import make_env
from certrl.identity import agent_identity, compute_identity
from certrl.obs_stats import reference_std
from certrl.records import EpisodeRow, UnitLog, agent_fields, read_results, reset_file
from certrl.rollout import EpisodeEnd, Step, acting, play
from certrl.threat import SPACE_RAW, parse_scale

# episodes per evaluate / attack / certify run unless --episodes says otherwise: RADIAL-DQN
# and CAR-DQN report 20 episodes (SA-DQN 50)
DEFAULT_EPISODES = 20

Attack = Callable[[torch.Tensor], torch.Tensor]

# --eps-scale of evaluate / attack / certify / demo: the per-dimension eps scale to run under
EPS_SCALE_WORDS = ("agent", "none", "ref")
EPS_SCALE_HELP = ("per-dimension eps scale of the threat model: agent (default: the agent's "
                  "own), none (the plain ball, raw eps), ref (the reference code's "
                  "observation std: SA-DQN / CAR-DQN CARTPOLE_STD, ACROBOT_STD) or "
                  "comma-separated factors, one per input element. It is part of the "
                  "agent identity: pass the same value to evaluate, attack and certify")


def parse_eps_scale(text: str) -> str | tuple[float, ...]:
    """An --eps-scale value: one of ``EPS_SCALE_WORDS`` or a tuple of positive factors."""
    word = str(text).strip().lower()
    if word in EPS_SCALE_WORDS:
        return word
    scale = parse_scale(text)
    if scale is None:
        raise ValueError(f"--eps-scale: give agent, none, ref or comma-separated factors; "
                         f"got {text!r}")
    return scale


def eps_scale_arg(text: str) -> str | tuple[float, ...]:
    """argparse type of --eps-scale (``parse_eps_scale``, errors as argparse errors)."""
    try:
        return parse_eps_scale(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def apply_eps_scale(agent: Agent, spec: str | tuple | None) -> Agent:
    """Set ``agent``'s threat-model scale s from ``spec`` (see ``parse_eps_scale``; None or
    "agent": unchanged) in place and return it: the threat set becomes
    {x' : ||(x' - x) / s||_p <= eps}. ValueError when s does not have one entry per input
    element, for "ref" on an agent whose eps is not in raw observation units, or for an
    agent whose (cached) identity was already computed: call it right after loading."""
    if spec is None or spec == "agent":
        return agent
    tm = agent.threat_model
    if spec == "none":
        scale = None
    elif spec == "ref":
        if tm.space != SPACE_RAW:
            raise ValueError(f"--eps-scale ref: the reference std is in raw observation "
                             f"units, but this agent's eps is in {tm.space}")
        scale = reference_std(agent.env_id)
    else:
        scale = parse_scale(spec)
    n = int(np.prod(agent.obs_shape))
    if scale is not None and len(scale) != n:
        raise ValueError(f"--eps-scale has {len(scale)} entries but {agent.env_id} inputs "
                         f"have {n} elements (one factor per input element)")
    agent.threat_model = tm.with_scale(scale)
    if agent_identity(agent) != compute_identity(agent):  # identity cached before the change
        agent.threat_model = tm
        raise ValueError("apply_eps_scale: the agent's identity was already computed; "
                         "apply the scale to a freshly loaded agent")
    return agent



@dataclass
class EvalResult:
    """Per-episode returns and lengths with their summary.

    ``truncated[i]``: episode i was cut by ``max_steps`` before the env itself
    ended it (by termination or its own time limit). ``action_changes[i]``: steps
    of episode i where the attack changed a discrete agent's action.
    """

    returns: list[float]
    lengths: list[int]
    seeds: list[int]
    mean: float = 0.0
    std: float = 0.0
    extra: dict = field(default_factory=dict)
    truncated: list[bool] = field(default_factory=list)
    action_changes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def episode_rng_seed(seed: int, index: int) -> int:
    """Seed of episode ``index``'s own random generator (actions, attack noise)."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63)


def check_env_shape(agent: Agent, env) -> None:
    """ValueError if the env's observations do not fit the agent."""
    shape = tuple(env.observation_space.shape)
    if shape != agent.obs_shape:
        raise ValueError(f"env {agent.env_id} gives observations of shape {shape} but the "
                         f"agent expects {agent.obs_shape}")


class _FlipCounter:
    """Steps of one episode where an attack changed a discrete agent's action."""

    def __init__(self, agent: Agent, attacked: bool):
        self.agent, self.count = agent, 0
        self.on = attacked and agent.action_space_kind == "discrete"

    def __call__(self, step: Step) -> None:
        if self.on:
            self.count += int(step.action[0] != self.agent.act(step.x, True)[0])


def evaluate(agent: Agent, episodes: int = DEFAULT_EPISODES, seed: int = 0,
             attack: Attack | None = None, deterministic: bool = True, max_steps: int | None = None,
             on_episode: Callable[[int, float, int], None] | None = None,
             env_kwargs: dict | None = None, indices: list[int] | None = None,
             device: str | torch.device | None = None) -> EvalResult:
    """Run ``episodes`` episodes (seeds seed..seed+N-1), or the episode ``indices`` given;
    mean and std (ddof 0) of their returns. ``device``: move the agent's networks there
    first (``Agent.to``; None: where they are); the attack runs on the agent's device."""
    agent.to(device)
    idx = list(range(episodes)) if indices is None else [int(i) for i in indices]
    if not idx:
        raise ValueError(f"episodes must be >= 1; got {episodes}")
    res = EvalResult([], [], [])
    flips: dict[int, _FlipCounter] = {}

    def policy_for(i: int):
        flips[i] = _FlipCounter(agent, attack is not None)
        gen = torch.Generator().manual_seed(episode_rng_seed(seed, i))
        return acting(agent, attack, deterministic, gen)

    def done(ep: EpisodeEnd) -> None:
        res.returns.append(ep.ret)
        res.lengths.append(ep.length)
        res.seeds.append(ep.seed)
        res.truncated.append(ep.truncated)
        res.action_changes.append(flips[ep.index].count)
        if on_episode is not None:
            on_episode(ep.index, ep.ret, ep.length)

    play(agent, idx, seed, policy_for, max_steps, lambda i, s: flips[i](s), env_kwargs,
         check_env_shape, on_end=done)
    res.mean, res.std = float(np.mean(res.returns)), float(np.std(res.returns))
    if attack is not None and agent.action_space_kind == "discrete":
        res.extra["action_change_rate"] = sum(res.action_changes) / max(1, sum(res.lengths))
    return res


# ------------------------------------------------------------ results files
@dataclass(frozen=True)
class EpisodeRun:
    """An evaluate / attack request: its episodes, radii, and every setting that
    changes their numbers (hashed into each row's ``settings_hash``)."""

    source: str  # "evaluate" or "attack"
    episodes: int
    eps: tuple[float, ...] = (0.0,)
    attack: str = "none"
    norm: str = "inf"
    seed: int = 0
    max_steps: int | None = None
    deterministic: bool = True
    attack_steps: int = 0
    step_size: float | None = None
    objective: str | None = None

    def settings(self) -> dict:
        return {"seed": self.seed, "max_steps": self.max_steps,
                "deterministic": self.deterministic, "attack_steps": self.attack_steps,
                "step_size": self.step_size, "norm": self.norm, "objective": self.objective}

    def settings_hash(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def group(self, aid: str, eps: float) -> str:
        """The unit key without the episode: agent, eps, norm and attack."""
        return f"{aid}|eps={float(eps)!r}|norm={self.norm}|{self.attack}"

    def unit_key(self, aid: str, eps: float, episode: int) -> str:
        return f"{self.group(aid, eps)}|ep={int(episode)}"

    def unit_keys(self, aid: str) -> list[tuple[float, int, str]]:
        return [(e, i, self.unit_key(aid, e, i)) for e in self.eps for i in range(self.episodes)]


def episode_log(path: str | os.PathLike, run: EpisodeRun, aid: str) -> UnitLog:
    """Finished episode units of ``run`` in ``path``; refreshing raises ValueError for
    rows of another kind, or of this agent and radius made with other settings."""
    groups = {run.group(aid, e) for e in run.eps}
    want = run.settings_hash()

    def key_of(r: dict) -> str | None:
        if r.get("source") != run.source:
            raise ValueError(f"{path} holds {r.get('source') or 'non-certrl'} rows, not only "
                             f"{run.source} results: use another --out, or --force")
        key = r.get("unit")
        if r.get("record") != "episode" or not isinstance(key, str):
            return None
        if key.rsplit("|ep=", 1)[0] not in groups:
            return None
        if r.get("settings_hash") != want:
            raise ValueError(f"{path} already holds {run.source} results for this agent at eps "
                             f"{r.get('eps')} made with other settings ({r.get('settings')}): "
                             "use another --out, the same settings, or --force")
        return key

    return UnitLog(path, key_of)


def run_episodes(agent: Agent, label: str, run: EpisodeRun, out: str | os.PathLike,
                 fields: Callable[[float], dict],
                 attack_for: Callable[[float, int], Attack | None] | None = None,
                 fresh: bool = False, env_kwargs: dict | None = None,
                 progress: bool = False,
                 device: str | torch.device | None = None) -> list[EpisodeRow]:
    """Run the episodes of ``run`` missing from ``out`` and append one row each.

    ``fields(eps)`` gives the row fields of a radius (attack name, threat model,
    ...); ``attack_for(eps, episode)`` the attack of one episode (None: natural).
    Before each unit the finished units are re-read and one finished by another
    process is skipped; ``fresh`` empties ``out`` first (``--force``), after the
    request is checked. ``progress``: a tqdm bar (episodes, ETA) on stderr. Returns
    the episode rows of ``run`` now in ``out``. ``device``: as for ``evaluate``.
    """
    agent.to(device)
    aid = agent_identity(agent)
    _preflight(agent, run, attack_for, env_kwargs)
    if fresh:
        reset_file(out)
    log = episode_log(out, run, aid)
    base = {**agent_fields(agent, label), "source": run.source,
            "settings": run.settings(), "settings_hash": run.settings_hash(),
            "eval_seed": run.seed, "deterministic": run.deterministic}
    keys = run.unit_keys(aid)
    finished = set(log.refresh())
    bar = tqdm(total=len(keys), initial=sum(k in finished for _, _, k in keys),
               desc=run.source, unit="ep", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, leave=False)
    try:
        for eps, i, key in keys:
            if key in finished:
                continue
            if key not in log.refresh():  # another process may have finished it since
                _run_unit(agent, run, base, (eps, i, key), log, fields, attack_for, env_kwargs)
            bar.update(1)
    finally:
        bar.close()
    return run_rows(out, run, aid)


def _run_unit(agent: Agent, run: EpisodeRun, base: dict, unit: tuple[float, int, str],
              log: UnitLog, fields, attack_for, env_kwargs: dict | None) -> None:
    """Play one episode unit of ``run_episodes`` and commit its row."""
    eps, i, key = unit
    atk = attack_for(eps, i) if attack_for is not None else None
    res = evaluate(agent, seed=run.seed, attack=atk, deterministic=run.deterministic,
                   max_steps=run.max_steps, env_kwargs=env_kwargs, indices=[i])
    changes = res.action_changes[0] if atk is not None and \
        agent.action_space_kind == "discrete" else None
    row = EpisodeRow(**{**base, **fields(eps)}, record="episode", unit=key, episode=i,
                     episode_seed=res.seeds[0], return_=res.returns[0],
                     length=res.lengths[0], truncated=res.truncated[0],
                     action_changes=changes)
    log.commit(key, [row])


def _preflight(agent: Agent, run: EpisodeRun, attack_for, env_kwargs: dict | None) -> None:
    """Raise the request's errors (env shape, attack settings) before anything is written."""
    if run.episodes < 1:
        raise ValueError(f"episodes must be >= 1; got {run.episodes}")
    env = make_env(agent.env_id, run.seed, **(env_kwargs or {}))
    try:
        check_env_shape(agent, env)
    finally:
        env.close()
    if attack_for is not None:
        for eps in run.eps:
            attack_for(eps, 0)


def run_rows(out: str | os.PathLike, run: EpisodeRun, aid: str) -> list[EpisodeRow]:
    """The episode rows of ``run`` for agent ``aid`` in ``out`` (first row per unit)."""
    want = {key for _, _, key in run.unit_keys(aid)}
    rows: dict[str, EpisodeRow] = {}
    for r in read_results(out):
        if isinstance(r, EpisodeRow) and r.unit in want:
            rows.setdefault(r.unit, r)
    return list(rows.values())


def summarize_episodes(rows: list[EpisodeRow]) -> dict[float, dict]:
    """Per eps: episodes, mean and std (ddof 0) of returns, truncated episodes and
    (attacks on discrete agents) the fraction of steps whose action changed."""
    out: dict[float, dict] = {}
    for eps in sorted({float(r.eps) for r in rows}):
        sel = [r for r in rows if float(r.eps) == eps]
        rets = np.asarray([r.return_ for r in sel], dtype=np.float64)
        s = {"episodes": len(sel), "mean": float(rets.mean()), "std": float(rets.std()),
             "truncated": sum(bool(r.truncated) for r in sel)}
        if all(r.action_changes is not None for r in sel):
            s["action_change_rate"] = (sum(r.action_changes for r in sel)
                                       / max(1, sum(r.length for r in sel)))
        out[eps] = s
    return out
