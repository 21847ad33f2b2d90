"""What DQN and PPO share: config (de)serialization, seeding, checkpoint/resume."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import typing
from collections.abc import Callable

import numpy as np
import torch

from certrl.agent import Agent
from certrl.envs import env_family
from certrl.io import CheckpointError, load_checkpoint
from certrl.threat import ThreatModel, default_threat_model


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy Generator for the algorithm."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def config_to_dict(cfg) -> dict:
    """JSON-able dict of a config dataclass (robust_loss -> its config() or None)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "robust_loss":
            v = None if v is None else v.config()
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def config_from_dict(cls, d: dict, **overrides):
    """Build config ``cls`` from a dict (unknown keys -> ValueError)."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in dict(d).items() if k != "robust_loss"}
    data.update(overrides)
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(data.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            data[k] = tuple(v)
    return cls(**data)


def coerce_field(cls, name: str, text: str):
    """Parse a ``--set name=text`` value into the type of config field ``name``."""
    hints = typing.get_type_hints(cls)
    if name not in hints or name == "robust_loss":
        raise ValueError(f"{cls.__name__} has no settable field {name!r}")
    h = str(hints[name])
    try:
        if "dict" in h:
            if "None" in h and text.lower() == "none":
                return None
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
        if "tuple" in h:
            return tuple(int(v) for v in text.split(",") if v.strip())
        if "bool" in h:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            if "None" in h and text.lower() == "none":
                return None
            raise ValueError(text)
        if "None" in h and text.lower() == "none":
            return None
        if "int" in h and "float" not in h:
            return int(text)
        if "float" in h:
            return float(text)
        return text
    except ValueError:  # json.JSONDecodeError is a ValueError too
        raise ValueError(f"bad value {text!r} for {cls.__name__}.{name} ({h})") from None


def resolve_threat(env_id: str, threat: dict | None) -> ThreatModel:
    """The configured threat model, or the env family's convention at eps 0."""
    base = default_threat_model(env_family(env_id))
    if threat is None:
        return base
    d = base.to_dict()
    d.update(threat)
    return ThreatModel.from_dict(d)


class Algorithm:
    """Base of DQN / PPO: a step counter, episode log and checkpoint plumbing.

    Subclasses set ``self.cfg``, ``self.agent_obj``, ``self.global_step`` and
    ``self.episodes`` (list of {"episode", "step", "return", "length"}), and
    implement ``learn`` and ``train_state`` / ``load_train_state``.
    """

    algo_name = ""
    config_cls: type = object

    cfg: typing.Any
    agent_obj: Agent
    global_step: int
    episodes: list[dict]

    @property
    def agent(self) -> Agent:
        """The agent being trained (shares its networks with the algorithm)."""
        self.agent_obj.metadata.update({"trained_steps": int(self.global_step),
                                        "episodes": len(self.episodes)})
        if self.episodes:
            last = [e["return"] for e in self.episodes[-20:]]
            self.agent_obj.metadata["last20_train_return"] = float(np.mean(last))
        return self.agent_obj

    def train_state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_train_state(self, state: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path: str | os.PathLike, with_train_state: bool = True) -> None:
        """Checkpoint the agent (and, for resuming, the training state)."""
        self.agent.save(path, train_state=self.train_state() if with_train_state else None)

    @classmethod
    def resume(cls, path: str | os.PathLike, robust_loss=None, **overrides):
        """Rebuild the algorithm from a checkpoint with train state and continue from it."""
        data = load_checkpoint(path)
        if data.get("algo") != cls.algo_name:
            raise CheckpointError(f"{str(path)!r} holds a {data.get('algo')!r} agent, "
                                  f"not {cls.algo_name!r}")
        if "train_state" not in data:
            raise CheckpointError(f"{str(path)!r} has no training state to resume from")
        cfg = config_from_dict(cls.config_cls, data["config"], **overrides)
        if robust_loss is not None:
            cfg.robust_loss = robust_loss
        algo = cls(cfg)
        agent = Agent.from_payload(data, source=repr(str(path)))
        for name, net in algo.agent_obj.nets.items():
            net.load_state_dict(agent.nets[name].state_dict())
        if agent.obs_rms is not None and algo.agent_obj.obs_rms is not None:
            algo.agent_obj.obs_rms.load_state_dict(data["obs_rms"])
            algo.agent_obj.obs_rms.unfreeze()
        algo.load_train_state(data["train_state"])
        return algo


StepCallback = Callable[[Algorithm], None]
