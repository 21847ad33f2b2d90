"""Train or load a learned attacker for a victim, and turn it into an attack x -> x'.

Attackers live in checkpoints (``certrl.adversaries.checkpoint``); the default path is
``runs/attackers/<victim id[:16]>-<kind>-<settings hash>.pt``, so the same victim and
settings reuse one attacker and another budget, seed or eps trains a new one. An
existing file is loaded only if it was trained against this victim (identity) with
these settings; otherwise a clear error (``CheckpointError``) names the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from torch import nn

from certrl.adversaries.checkpoint import load_attacker, save_attacker
from certrl.adversaries.paad import DirectorEnv
from certrl.adversaries.ppo_lite import PPOLiteConfig, train_ppo
from certrl.adversaries.sarl import AdversaryEnv
from certrl.adversaries.sarsa import SarsaConfig, train_sarsa
from certrl.adversaries.victim import flat_input_dim
from certrl.agent import Agent
from certrl.identity import agent_identity
from certrl.io import CheckpointError
from certrl.threat import ThreatModel

ATTACKER_DIR = Path("runs") / "attackers"


def settings_hash(d: dict) -> str:
    """sha1 prefix of sorted-key JSON."""
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def default_path(agent: Agent, kind: str, settings: dict) -> Path:
    """runs/attackers/<victim id[:16]>-<kind>-<settings hash>.pt"""
    return ATTACKER_DIR / f"{agent_identity(agent)[:16]}-{kind}-{settings_hash(settings)}.pt"


def _check_settings(payload: dict, settings: dict, path) -> None:
    if payload.get("settings") != settings:
        raise CheckpointError(
            f"attacker {str(path)!r} was trained with other settings "
            f"({payload.get('settings')}), not {settings}: use another --attacker path")


def obtain_rs(agent: Agent, label: str, cfg: SarsaConfig, path: str | os.PathLike | None = None,
              progress=None) -> tuple[dict, nn.Module]:
    """(payload, Q-network) of the Robust Sarsa attacker for ``agent`` and ``cfg``: loaded
    from ``path`` (default ``default_path``) when there, else trained and saved there."""
    settings = cfg.to_dict()
    path = Path(path) if path is not None else default_path(agent, "rs", settings)
    aid = agent_identity(agent)
    if not path.exists():
        t0 = time.process_time()
        q, info = train_sarsa(agent, cfg, progress)
        info["train_cpu_s"] = time.process_time() - t0
        save_attacker(path, "rs", aid, label, agent.env_id, settings, {"q": q}, info)
    payload, nets = load_attacker(path, "rs", aid)
    _check_settings(payload, settings, path)
    payload["path"] = str(path)
    return payload, nets["q"]


def obtain_sarl(agent: Agent, label: str, threat: ThreatModel, eps: float, cfg: PPOLiteConfig,
                deterministic: bool = True, path: str | os.PathLike | None = None,
                progress=None, kind: str = "sa-rl", steps: int = 10) -> tuple[dict, nn.Module]:
    """(payload, policy) of the SA-RL adversary (``kind`` "sa-rl") or the PA-AD director
    (``kind`` "pa-ad", whose actor takes ``steps``) for ``agent`` at radius ``eps`` of
    ``threat``: loaded from ``path`` when there, else trained by PPO and saved there."""
    d = flat_input_dim(agent)
    tm = threat.with_eps(eps).to_dict()
    settings = {**cfg.to_dict(), "victim_deterministic": bool(deterministic)}
    if kind == "pa-ad":
        settings["actor_steps"] = int(steps)
    path = Path(path) if path is not None else default_path(
        agent, kind, {**settings, "threat_model": tm})
    aid = agent_identity(agent)
    if not path.exists():
        if kind == "pa-ad":
            env = DirectorEnv(agent, threat.with_eps(eps), eps, cfg.seed, deterministic, steps)
        else:
            env = AdversaryEnv(agent, threat.with_eps(eps), eps, cfg.seed, deterministic)
        t0 = time.process_time()
        try:
            nets, info = train_ppo(env, d, env.action_space.shape[0], cfg, progress)
        finally:
            env.close()
        info["train_cpu_s"] = time.process_time() - t0
        save_attacker(path, kind, aid, label, agent.env_id, settings, nets, info, tm)
    payload, nets = load_attacker(path, kind, aid)
    _check_settings(payload, settings, path)
    if payload.get("threat_model") != tm:
        raise CheckpointError(f"attacker {str(path)!r} was trained for the threat model "
                              f"{payload.get('threat_model')}, not {tm}")
    payload["path"] = str(path)
    return payload, nets["policy"]
