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
from certrl.agent import load as load_agent
from certrl.device import resolve_device
from certrl.envs import env_family
from certrl.io import CheckpointError, load_checkpoint
from certrl.losses import loss_from_config
from certrl.nets import QNetwork
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
    out = {"torch": torch.get_rng_state(), "numpy": json.dumps(np_state),
           "python": json.dumps([version, list(internal), gauss]),
           "algo": json.dumps(gen.bit_generator.state)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # training on a GPU
        out["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rngs(state: dict, gen: np.random.Generator) -> None:
    """Inverse of ``capture_rngs`` (also reads the older {np_rng, torch_rng} layout)."""
    if "rng" not in state:  # checkpoints written before the full RNG capture
        gen.bit_generator.state = state["np_rng"]
        torch.set_rng_state(state["torch_rng"])
        return
    st = state["rng"]
    torch.set_rng_state(st["torch"])
    if st.get("torch_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["torch_cuda"]))
    np_state = json.loads(st["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(st["python"])
    random.setstate((version, tuple(internal), gauss))
    gen.bit_generator.state = json.loads(st["algo"])


# check_config groups: (integer?, test, what the error says the value must be)
_RULES: dict[str, tuple[bool, Callable[[float], bool], str]] = {
    "pos_int": (True, lambda v: v >= 1, "a positive integer"),
    "nonneg_int": (True, lambda v: v >= 0, "an integer >= 0"),
    "pos": (False, lambda v: v > 0, "> 0"),
    "nonneg": (False, lambda v: v >= 0, ">= 0"),
    "unit": (False, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "unit_open0": (False, lambda v: 0 < v <= 1, "in (0, 1]"),
    "finite": (False, lambda v: True, "finite"),
}


def _config_error(cfg, field: str, what: str) -> ValueError:
    return ValueError(f"{type(cfg).__name__}.{field} must be {what}; got {getattr(cfg, field)!r}")


def _number(cfg, field: str, integer: bool) -> float | None:
    """The field's value checked to be a finite (integer) number; None where allowed."""
    v = getattr(cfg, field)
    if v is None and getattr(type(cfg), field, 0) is None:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind):
        raise _config_error(cfg, field, "an integer" if integer else "a number")
    if not math.isfinite(float(v)):
        raise _config_error(cfg, field, "finite")
    return v


def _check_structure(cfg) -> None:
    """hidden widths, dict-valued fields, env id and seed range."""
    hidden = getattr(cfg, "hidden", ())
    if not isinstance(hidden, (tuple, list)) or any(
            isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise _config_error(cfg, "hidden", "a list of positive layer widths (e.g. 64,64)")
    for f in ("threat", "env_kwargs", "q_spec"):
        v = getattr(cfg, f, None)
        if v is not None and not isinstance(v, dict):
            raise _config_error(cfg, f, "a dict")
    if not isinstance(cfg.env_id, str) or not cfg.env_id:
        raise _config_error(cfg, "env_id", "an env id")
    if cfg.seed >= 2**63:
        raise _config_error(cfg, "seed", "below 2**63")


def check_config(cfg, **groups: tuple[str, ...]) -> None:
    """Validate config fields; ``ValueError`` names the field and the value.

    Groups (keyword -> field names): pos_int: integers > 0; nonneg_int: integers >= 0;
    pos: finite numbers > 0; nonneg: finite numbers >= 0; unit: numbers in [0, 1];
    unit_open0: in (0, 1]; finite: any finite number. A None value is allowed where the
    field's default is None.
    """
    for group, fields in groups.items():
        integer, ok, what = _RULES[group]
        for f in fields:
            v = _number(cfg, f, integer)
            if v is not None and not ok(v):
                raise _config_error(cfg, f, what)
    _check_structure(cfg)


def legacy_names(cls) -> dict[str, str]:
    """Old config field name -> current name for config class ``cls`` (``LEGACY_NAMES``)."""
    return dict(getattr(cls, "LEGACY_NAMES", {}))


def canonical_config(cls, d: dict) -> dict:
    """``d`` with old field names (e.g. DQN's ``eps_start``) renamed to the current ones."""
    old = legacy_names(cls)
    return {old.get(k, k): v for k, v in d.items()}


def added_fields(cls) -> dict:
    """Fields added to config ``cls`` after runs were recorded -> the default that leaves
    them out of ``run_group`` (``ADDED_FIELDS``; old runs keep their group)."""
    return dict(getattr(cls, "ADDED_FIELDS", {}))


def run_group(algo_name: str, cfg, threat: dict, robust_loss: dict | None = None,
              init: str | None = None) -> str:
    """sha256 of the canonical JSON of what defines a run apart from its seed.

    Env id, algorithm, robust loss (``loss.config()``) and its settings, the whole
    algorithm config (total steps included), the resolved threat model and, for a
    fine-tuned run, ``init`` (the init agent's own run group: seeds fine-tuned from the
    seeds of one pretraining share it); not the seed, the output folder or the thread
    count. Runs that differ only by seed share it. Renamed fields are hashed under their
    old names and fields added later (``ADDED_FIELDS``) only when not at their default,
    so a run keeps its group.
    """
    config = config_to_dict(cfg)
    config.pop("seed", None)
    for k, default in added_fields(type(cfg)).items():
        if config.get(k) == default:
            config.pop(k, None)
    to_old = {new: old for old, new in legacy_names(type(cfg)).items()}
    config = {to_old.get(k, k): v for k, v in config.items()}
    config["robust_loss"] = robust_loss
    ident = {"algo": algo_name, "env_id": cfg.env_id, "config": config, "threat_model": threat}
    if init is not None:
        ident["init"] = init
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_to_dict(cfg) -> dict:
    """JSON-able dict of a config dataclass (tuples -> lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def split_config(d: dict) -> tuple[dict, dict | None]:
    """A stored training config -> (algorithm config fields, robust loss config or None).

    Checkpoints store the loss's ``config()`` under ``"robust_loss"`` beside the fields.
    """
    d = dict(d)
    return d, d.pop("robust_loss", None)


def config_from_dict(cls, d: dict, **overrides):
    """Build config ``cls`` from a dict of its fields (old field names accepted; unknown
    keys -> ValueError). A stored training config goes through ``split_config`` first."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = canonical_config(cls, d)
    data.update(canonical_config(cls, overrides))
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    for k, v in list(data.items()):
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            data[k] = tuple(v)
    return cls(**data)


def _parse_typed(h: str, text: str):
    """Parse ``text`` as a value of the type hint string ``h`` (ValueError if it is not)."""
    none = "None" in h and text.lower() == "none"
    if "dict" in h:
        value = None if none else json.loads(text)
        if value is not None and not isinstance(value, dict):
            raise ValueError(text)
        return value
    if "tuple" in h:
        return tuple(int(v) for v in text.split(",") if v.strip())
    if "bool" in h:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        if none:
            return None
        raise ValueError(text)
    if none:
        return None
    if "int" in h and "float" not in h:
        return int(text)
    return float(text) if "float" in h else text


def coerce_field(cls, name: str, text: str):
    """Parse a ``--set name=text`` value into the type of config field ``name``
    (an old field name is accepted: ``canonical_config`` maps it)."""
    name = legacy_names(cls).get(name, name)
    hints = typing.get_type_hints(cls)
    if name not in hints or name.isupper():
        raise ValueError(f"{cls.__name__} has no settable field {name!r}")
    try:
        return _parse_typed(str(hints[name]), text)
    except ValueError:  # json.JSONDecodeError is a ValueError too
        raise ValueError(f"bad value {text!r} for {cls.__name__}.{name} "
                         f"({hints[name]})") from None


def resolve_threat(env_id: str, threat: dict | None) -> ThreatModel:
    """The configured threat model, or the env family's convention at eps 0."""
    base = default_threat_model(env_family(env_id))
    if threat is None:
        return base
    d = base.to_dict()
    d.update(threat)
    return ThreatModel.from_dict(d)


def resolve_init(init: Agent | str | os.PathLike) -> tuple[Agent, str]:
    """(agent, label) for an init agent given as an ``Agent``, a checkpoint path, a
    ``certrl train`` output folder or a shipped name (``certrl.load``)."""
    if isinstance(init, Agent):
        return init, str(init.source or init.metadata.get("name") or "an Agent object")
    return load_agent(init), str(init)


def spec_difference(a, b, path: str = "spec") -> str | None:
    """The first place where two JSON-like values differ (tuples compare as lists)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: {a.get(k)!r} vs {b.get(k)!r}"
            d = spec_difference(a[k], b[k], f"{path}.{k}")
            if d is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {list(a)!r} vs {list(b)!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = spec_difference(x, y, f"{path}[{i}]")
            if d is not None:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def check_init_agent(init: Agent, label: str, agent: Agent, net: str = "q") -> None:
    """ValueError naming the first mismatch between the init agent and the new run:
    algorithm, env id, observation shape, action space, preprocessing kind, the spec of
    network ``net``."""
    pairs = [("algorithm", init.algo, agent.algo), ("env id", init.env_id, agent.env_id),
             ("observation shape", list(init.obs_shape), list(agent.obs_shape)),
             ("action space", init.action_space, agent.action_space),
             ("preprocessing", init.preprocessing.get("kind"), agent.preprocessing.get("kind"))]
    for what, theirs, ours in pairs:
        diff = spec_difference(theirs, ours, what)
        if diff is not None:
            raise ValueError(f"init agent {label}: its {what} does not match this run's "
                             f"({diff}, init vs new)")
    if net not in init.nets:
        raise ValueError(f"init agent {label} has no network {net!r} (has {sorted(init.nets)})")
    diff = spec_difference(init.nets[net].spec, agent.nets[net].spec, f"{net} spec")
    if diff is not None:
        raise ValueError(f"init agent {label}: its network spec differs from this run's at "
                         f"{diff} (init vs new); fine-tuning keeps the network: set hidden, "
                         f"dueling and q_spec as the init agent has them")


def rescale_q_output(net: torch.nn.Module, ratio: float) -> None:
    """Multiply a Q-network's outputs by ``ratio`` in place: Q_new = ratio * Q_old.

    The last affine layer(s) are scaled (weight and bias): the head, or for a dueling
    head both streams' last Linear (Q = V + A - mean A is linear in (V, A)). The greedy
    action is unchanged for ratio > 0. ValueError for other network types.
    """
    if ratio == 1.0:
        return
    if not isinstance(net, QNetwork):
        raise ValueError(f"cannot rescale the outputs of a {type(net).__name__} "
                         "(only 'q' networks): keep the init agent's reward_scale")
    layers = [net.value_stream[-1], net.adv_stream[-1]] if net.dueling else [net.head]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(ratio)
            layer.bias.mul_(ratio)


Callback = Callable[["Algorithm"], "bool | None"]


class Algorithm:
    """Base of DQN / PPO: the ``learn`` loop, episode log and checkpoint plumbing.

    Subclasses set ``self.cfg``, ``self.robust_loss``, ``self.agent_obj``,
    ``self.global_step`` and ``self.episodes`` (list of {"episode", "step", "return",
    "length"}), and implement ``advance`` (one env step for DQN, one rollout + update for
    PPO), ``checkpoint_ready`` and ``train_state`` / ``load_train_state``.

    Exact resume: ``train_state()`` holds everything the rest of the run depends on
    (optimizer, counters, every RNG via ``capture_rngs``, the env state as
    ``EpisodeSeeding.state()``, ...), so ``resume`` + ``learn`` ends with the same
    weights as the uninterrupted run. ``resume_caveats`` lists what, if anything,
    made this run deviate from that (empty when exact).
    """

    algo_name = ""
    config_cls: type = object
    # checkpoints leave out a replay buffer larger than this (None: no cap; DQN only)
    max_replay_bytes: int | None = None

    cfg: typing.Any
    robust_loss: typing.Any
    agent_obj: Agent
    global_step: int
    episodes: list[dict]
    resume_caveats: list[str]
    # the init agent of a fine-tuned run (metadata "init_agent"); {} when from scratch
    init_info: dict = {}
    # best-checkpoint selection (certrl.algos.selection.BestKeeper) or None
    selection: typing.Any = None

    def learn(self, total_steps: int | None = None, callback: Callback | None = None,
              telemetry: typing.Any = None):
        """Train until ``global_step >= total_steps`` (default ``cfg.total_steps``).

        ``callback(algo)`` runs after every DQN env step / every PPO update (progress,
        checkpoints); returning False stops training there. ``telemetry`` (e.g.
        ``certrl.telemetry.TrainTelemetry``) has ``observe(algo)`` called just before
        the callback. Returns ``self``.
        """
        until = self.cfg.total_steps if total_steps is None else total_steps
        while self.global_step < until:
            self.advance(until)
            if telemetry is not None:
                telemetry.observe(self)
            if callback is not None and callback(self) is False:
                break
        return self

    def train_metrics(self) -> dict[str, float | None]:
        """Scalars of the current training state, for telemetry: ``train/eps`` (the
        robust loss's eps at this step, ``eps_at``; 0 without one), ``train/exploration_rate``
        (DQN's epsilon-greedy rate; None for PPO) and the logs of the latest update
        (``self.logs``: losses and every robust-loss term) as ``update/<name>``."""
        tm = self.agent_obj.threat_model
        eps = 0.0 if self.robust_loss is None else self.robust_loss.eps_at(self.global_step, tm)
        explore = getattr(self, "epsilon", None)
        out: dict[str, float | None] = {
            "train/exploration_rate": float(explore(self.global_step)) if callable(explore)
            else None, "train/eps": float(eps)}
        for k, v in (getattr(self, "logs", None) or {}).items():
            if isinstance(v, numbers.Real):
                out[f"update/{k}"] = float(v)
        return out

    def advance(self, until: int) -> None:  # pragma: no cover - abstract
        """One unit of training (never past ``until`` env steps where the unit allows)."""
        raise NotImplementedError

    @property
    def checkpoint_ready(self) -> bool:  # pragma: no cover - abstract
        """True where a checkpoint needs no env replay of a started unit (see subclasses)."""
        raise NotImplementedError

    def replay_nbytes(self) -> int:
        """Bytes of the filled part of the replay buffer (0 without one)."""
        return 0

    def training_config(self) -> dict:
        """The config as checkpoints store it: its fields plus ``robust_loss`` (its
        ``config()``, or None for vanilla training)."""
        loss = None if self.robust_loss is None else self.robust_loss.config()
        return {**config_to_dict(self.cfg), "robust_loss": loss}

    @property
    def loss_name(self) -> str:
        """The robust loss's name, "vanilla" without one."""
        return "vanilla" if self.robust_loss is None else self.robust_loss.name

    @property
    def run_group(self) -> str:
        """``run_group(algo, cfg, threat, loss, init)`` of this run (shared by runs
        differing by seed). A per-dimension eps scale measured on the init agent
        (``eps_scale``) is hashed as its rule, not its (per-seed) values; a fine-tuned run
        hashes its init agent's run group (or identity when it has none)."""
        loss = None if self.robust_loss is None else self.robust_loss.config()
        threat = self.agent_obj.threat_model.to_dict()
        mode = getattr(self.cfg, "eps_scale", "none")
        if mode != "none":
            threat["scale"] = mode
        init = self.init_info.get("run_group") or self.init_info.get("id") \
            if self.init_info else None
        return run_group(self.algo_name, self.cfg, threat, loss, init)

    @property
    def agent(self) -> Agent:
        """The agent being trained (shares its networks with the algorithm): the final
        weights. ``best_agent`` is the selected one when ``eval_every`` > 0."""
        meta = self.agent_obj.metadata
        meta.update({"trained_steps": int(self.global_step), "episodes": len(self.episodes),
                     "run_group": self.run_group})
        if self.init_info:
            meta["init_agent"] = dict(self.init_info)
        if self.selection is not None:
            meta["selection"] = self.selection.info("final")
        if self.episodes:
            last = [e["return"] for e in self.episodes[-20:]]
            meta["last20_train_return"] = float(np.mean(last))
        return self.agent_obj

    @property
    def best_agent(self) -> Agent:
        """A copy of the agent with the best evaluated weights (``BestKeeper``; see
        ``certrl.algos.selection``); the final agent itself without selection."""
        agent = self.agent
        return agent if self.selection is None else self.selection.best_agent(agent)

    def train_state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_train_state(self, state: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device: str | torch.device | None):
        """Train on ``device`` (``certrl.device.resolve_device``; None: stay): moves the
        agent's networks and every network and optimizer state the algorithm and its
        robust loss hold (parameters keep their identity, so optimizers stay bound).
        Returns ``self``."""
        if device is None:
            return self
        dev = resolve_device(device)
        holders = [self, self.robust_loss] if self.robust_loss is not None else [self]
        modules = list(self.agent_obj.nets.values())
        optimizers = []
        for h in holders:
            for v in vars(h).values():
                if isinstance(v, torch.nn.Module):
                    modules.append(v)
                elif isinstance(v, torch.optim.Optimizer):
                    optimizers.append(v)
        for m in modules:
            m.to(dev)
        for opt in optimizers:  # loading casts the moments to their parameters' device
            opt.load_state_dict(opt.state_dict())
        return self

    def save(self, path: str | os.PathLike, with_train_state: bool = True) -> None:
        """Checkpoint the agent (and, for resuming, the training state)."""
        self.agent.save(path, train_state=self.train_state() if with_train_state else None)

    def note(self, caveat: str) -> None:
        """Record (and warn about) something that makes this run deviate from exact."""
        if caveat not in self.resume_caveats:
            self.resume_caveats.append(caveat)
            warnings.warn(f"resume not exact: {caveat}", RuntimeWarning, stacklevel=3)

    @classmethod
    def resume(cls, path: str | os.PathLike | dict, robust_loss=None, **overrides):
        """Rebuild the algorithm from a checkpoint with train state and continue from it.

        ``path`` may also be the dict ``certrl.io.load_checkpoint`` returned. The robust
        loss is rebuilt from the checkpoint's config unless ``robust_loss`` is given.
        With the same config (no ``overrides`` that change it), continuing with
        ``learn()`` ends with the same weights as the uninterrupted run; anything that
        prevents this is listed in ``resume_caveats`` (and warned about).
        """
        data, source = _training_checkpoint(cls, path)
        stored, loss_cfg = split_config(data["config"])
        cfg = config_from_dict(cls.config_cls, stored, **overrides)
        if robust_loss is None:
            robust_loss = loss_from_config(loss_cfg)
        algo = cls(cfg, robust_loss=robust_loss)
        try:
            algo.load_weights(data, source)
            algo.resume_caveats = [str(c) for c in data["train_state"].get("resume_caveats", [])]
            algo.note_changed_settings(canonical_config(cls.config_cls, stored))
            algo.load_train_state(data["train_state"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"{source}: inconsistent training state: "
                                  f"{type(e).__name__}: {e}") from None
        return algo

    def load_weights(self, data: dict, source: str) -> None:
        """Copy the checkpoint's networks (and observation statistics) into this run."""
        agent = Agent.from_payload(data, source=source)
        for name, net in self.agent_obj.nets.items():
            net.load_state_dict(agent.nets[name].state_dict())
        if isinstance(agent.metadata.get("init_agent"), dict):
            self.init_info = dict(agent.metadata["init_agent"])
        if agent.obs_rms is not None and self.agent_obj.obs_rms is not None:
            self.agent_obj.obs_rms.load_state_dict(data["obs_rms"])
            self.agent_obj.obs_rms.unfreeze()

    def note_changed_settings(self, old: dict) -> None:
        """Note the config fields that differ from the checkpoint's (``old``)."""
        new = config_to_dict(self.cfg)
        old = {**added_fields(type(self.cfg)), **old}  # fields added later: their default
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            self.note("resumed with changed settings (" + ", ".join(
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed) + ")")


def _training_checkpoint(cls, path: str | os.PathLike | dict) -> tuple[dict, str]:
    """(checkpoint dict, its name for messages) after checking it holds a ``cls`` run."""
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
    return data, source
