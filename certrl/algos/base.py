"""What DQN and PPO share: config (de)serialization, seeding, checkpoint/resume."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import random
import typing
import warnings
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


def capture_rngs(gen: np.random.Generator) -> dict:
    """Every RNG training draws from, in ``weights_only``-loadable form.

    torch's CPU generator (a uint8 tensor), numpy's and python's global generators and
    the algorithm's ``np.random.Generator`` (JSON strings: exact for their big ints).
    """
    np_state = np.random.get_state(legacy=False)
    np_state = {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                      "pos": int(np_state["state"]["pos"])}}
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np_state),
            "python": json.dumps([version, list(internal), gauss]),
            "algo": json.dumps(gen.bit_generator.state)}


def restore_rngs(state: dict, gen: np.random.Generator) -> None:
    """Inverse of ``capture_rngs`` (also reads the older {np_rng, torch_rng} layout)."""
    if "rng" not in state:  # checkpoints written before the full RNG capture
        gen.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        return
    st = state["rng"]
    torch.set_rng_state(st["torch"])
    np_state = json.loads(st["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(st["python"])
    random.setstate((version, tuple(internal), gauss))
    gen.bit_generator.state = json.loads(st["algo"])


def check_config(cfg, *, pos_int=(), nonneg_int=(), pos=(), nonneg=(), unit=(),
                 unit_open0=(), finite=()) -> None:
    """Validate config fields; ``ValueError`` names the field and the value.

    pos_int: integers > 0; nonneg_int: integers >= 0; pos: finite numbers > 0;
    nonneg: finite numbers >= 0; unit: numbers in [0, 1]; unit_open0: in (0, 1];
    finite: any finite number. A None value is allowed where the field's default is None.
    """
    name = type(cfg).__name__

    def bad(field: str, what: str) -> ValueError:
        return ValueError(f"{name}.{field} must be {what}; got {getattr(cfg, field)!r}")

    def number(field: str, integer: bool = False) -> float | None:
        v = getattr(cfg, field)
        if v is None and getattr(type(cfg), field, 0) is None:
            return None
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(v, bool) or not isinstance(v, kind):
            raise bad(field, "an integer" if integer else "a number")
        if not math.isfinite(float(v)):
            raise bad(field, "finite")
        return v

    for f in pos_int:
        v = number(f, integer=True)
        if v is not None and v < 1:
            raise bad(f, "a positive integer")
    for f in nonneg_int:
        v = number(f, integer=True)
        if v is not None and v < 0:
            raise bad(f, "an integer >= 0")
    for f in pos:
        v = number(f)
        if v is not None and not v > 0:
            raise bad(f, "> 0")
    for f in nonneg:
        v = number(f)
        if v is not None and v < 0:
            raise bad(f, ">= 0")
    for f in unit:
        v = number(f)
        if v is not None and not 0 <= v <= 1:
            raise bad(f, "in [0, 1]")
    for f in unit_open0:
        v = number(f)
        if v is not None and not 0 < v <= 1:
            raise bad(f, "in (0, 1]")
    for f in finite:
        number(f)
    hidden = getattr(cfg, "hidden", ())
    if not isinstance(hidden, (tuple, list)) or any(
            isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise bad("hidden", "a list of positive layer widths (e.g. 64,64)")
    for f in ("threat", "env_kwargs", "q_spec"):
        if hasattr(cfg, f) and getattr(cfg, f) is not None and not isinstance(getattr(cfg, f),
                                                                              dict):
            raise bad(f, "a dict")
    if not isinstance(cfg.env_id, str) or not cfg.env_id:
        raise bad("env_id", "an env id")
    if cfg.seed >= 2**63:
        raise bad("seed", "below 2**63")


def run_group(algo_name: str, cfg, threat: dict) -> str:
    """sha256 of the canonical JSON of what defines a run apart from its seed.

    Env id, algorithm, robust loss and its settings, the whole algorithm config
    (total steps included) and the resolved threat model; not the seed, the output
    folder or the thread count. Runs that differ only by seed share it.
    """
    config = config_to_dict(cfg)
    config.pop("seed", None)
    ident = {"algo": algo_name, "env_id": cfg.env_id, "config": config, "threat_model": threat}
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


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

    Exact resume: ``train_state()`` holds everything the rest of the run depends on
    (optimizer, counters, every RNG via ``capture_rngs``, the env state as
    ``EpisodeSeeding.state()``, ...), so ``resume`` + ``learn`` ends with the same
    weights as the uninterrupted run. ``resume_caveats`` lists what, if anything,
    made this run deviate from that (empty when exact).
    """

    algo_name = ""
    config_cls: type = object

    cfg: typing.Any
    agent_obj: Agent
    global_step: int
    episodes: list[dict]
    resume_caveats: list[str]

    @property
    def run_group(self) -> str:
        """``run_group(algo, cfg, threat)`` of this run (shared by runs differing by seed)."""
        return run_group(self.algo_name, self.cfg, self.agent_obj.threat_model.to_dict())

    @property
    def agent(self) -> Agent:
        """The agent being trained (shares its networks with the algorithm)."""
        self.agent_obj.metadata.update({"trained_steps": int(self.global_step),
                                        "episodes": len(self.episodes),
                                        "run_group": self.run_group})
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

    def _note(self, caveat: str) -> None:
        """Record (and warn about) something that makes this run deviate from exact."""
        if caveat not in self.resume_caveats:
            self.resume_caveats.append(caveat)
            warnings.warn(f"resume not exact: {caveat}", RuntimeWarning, stacklevel=3)

    @classmethod
    def resume(cls, path: str | os.PathLike | dict, robust_loss=None, **overrides):
        """Rebuild the algorithm from a checkpoint with train state and continue from it.

        ``path`` may also be the dict ``certrl.io.load_checkpoint`` returned. With the
        same config (no ``overrides`` that change it), continuing with ``learn()`` ends
        with the same weights as the uninterrupted run; anything that prevents this
        is listed in ``resume_caveats`` (and warned about).
        """
        if isinstance(path, dict):
            data, source = path, "checkpoint"
        else:
            data, source = load_checkpoint(path), repr(str(path))
        if data.get("algo") != cls.algo_name:
            raise CheckpointError(f"{source} holds a {data.get('algo')!r} agent, "
                                  f"not {cls.algo_name!r}")
        if not isinstance(data.get("train_state"), dict):
            raise CheckpointError(f"{source} has no training state to resume from")
        if not isinstance(data["config"], dict):
            raise CheckpointError(f"{source}: the training config is not a dict")
        cfg = config_from_dict(cls.config_cls, data["config"], **overrides)
        if robust_loss is not None:
            cfg.robust_loss = robust_loss
        algo = cls(cfg)
        agent = Agent.from_payload(data, source=source)
        try:
            for name, net in algo.agent_obj.nets.items():
                net.load_state_dict(agent.nets[name].state_dict())
            if agent.obs_rms is not None and algo.agent_obj.obs_rms is not None:
                algo.agent_obj.obs_rms.load_state_dict(data["obs_rms"])
                algo.agent_obj.obs_rms.unfreeze()
            algo.resume_caveats = [str(c) for c in data["train_state"].get("resume_caveats", [])]
            old = {k: v for k, v in data["config"].items() if k != "robust_loss"}
            new = {k: v for k, v in config_to_dict(cfg).items() if k != "robust_loss"}
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                algo._note("resumed with changed settings (" + ", ".join(
                    f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed) + ")")
            algo.load_train_state(data["train_state"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{source}: inconsistent training state: "
                                  f"{type(e).__name__}: {e}") from None
        return algo


StepCallback = Callable[[Algorithm], None]
