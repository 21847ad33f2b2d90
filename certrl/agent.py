"""A trained agent: networks + preprocessing + threat model, saved as one file."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certrl.device import module_device, resolve_device
from certrl.envs import RunningMeanStd, env_family, env_version
from certrl.io import CheckpointError, library_versions, load_checkpoint, save_checkpoint
from certrl.nets import build_network
from certrl.threat import ThreatModel

AGENTS_DIR = Path(__file__).parent / "agents"

# preprocessing kinds: raw observation -> network input (see Agent.preprocess)
PREPROCESSING_KINDS = ("identity", "normalize", "pixels")


class Agent:
    """A policy that acts from raw observations and exposes its network for bounds.

    ``preprocess`` maps a raw observation batch to the network input (Atari:
    uint8 pixels / 255; MuJoCo: frozen running mean/std normalization; classic:
    float32 as is). ``forward``/``q_values`` map the network input to Q-values
    (DQN), logits (discrete PPO) or the action mean (continuous PPO), and
    ``bounded_form()`` is the same map as an ``nn.Sequential`` for ``bounds``.

    ``reward_scale`` (DQN): the factor the rewards were multiplied by in the TD target
    during training, so ``q_values`` are about ``reward_scale`` times the Q-values in the
    env's true reward units: divide reported Q values / value bounds by it (returns are
    always in true units). 1.0 for PPO agents and for checkpoints written before it
    existed. ``source``: the path or shipped name the agent was loaded from (a label,
    not part of its identity; None for agents built in memory).
    """

    def __init__(self, nets: dict[str, nn.Module], *, env_id: str, algo: str,
                 obs_shape: tuple[int, ...], action_space: dict, preprocessing: dict,
                 threat_model: ThreatModel, obs_rms: RunningMeanStd | None = None,
                 config: dict | None = None, seed: int = 0, loss_name: str = "vanilla",
                 metadata: dict | None = None, reward_scale: float = 1.0):
        self.nets = nets
        self.env_id = env_id
        self.algo = algo
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.action_space = action_space
        self.preprocessing = preprocessing
        self.threat_model = threat_model
        self.obs_rms = obs_rms
        self.config = config or {}
        self.seed = int(seed)
        self.loss_name = loss_name
        self.metadata = metadata or {}
        self.reward_scale = _check_reward_scale(reward_scale)
        self.source: str | None = None
        self._check_preprocessing()
        self._check_outputs()

    def _check_preprocessing(self) -> None:
        pre = self.preprocessing
        if not isinstance(pre, dict):
            raise ValueError(f"preprocessing must be a dict; got {type(pre).__name__}")
        kind = pre.get("kind")
        if kind not in PREPROCESSING_KINDS:
            raise ValueError(
                f"unknown preprocessing kind {kind!r}; known kinds: "
                f"{', '.join(PREPROCESSING_KINDS)}"
            )
        if kind == "normalize" and self.obs_rms is None:
            raise ValueError("preprocessing 'normalize' needs obs_rms")
        if kind == "pixels":
            scale = pre.get("scale", 255.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
                    math.isfinite(scale) and scale > 0):
                raise ValueError(f"preprocessing 'pixels' needs a positive scale; got {scale!r}")

    def _check_outputs(self) -> None:
        """The acting network's output must match the action space (count / shape)."""
        name = "q" if "q" in self.nets else "policy"
        if name not in self.nets:
            raise ValueError(
                f"an agent needs a network named 'q' (DQN) or 'policy' (PPO); got "
                f"{sorted(self.nets)}"
            )
        aspace = self.action_space
        if not isinstance(aspace, dict) or aspace.get("kind") not in ("discrete", "continuous"):
            raise ValueError(f"action_space must have kind 'discrete' or 'continuous'; got "
                             f"{aspace!r}")
        net = self.nets[name]
        ref = next(net.parameters(), None)
        x = torch.zeros((1, *self.obs_shape), dtype=ref.dtype if ref is not None else None,
                        device=ref.device if ref is not None else None)
        try:
            with torch.no_grad():
                out = net(x)
        except RuntimeError as e:
            raise ValueError(
                f"network {name!r} does not accept inputs of the observation shape "
                f"{self.obs_shape}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        k = math.prod(out.shape[1:])
        if aspace["kind"] == "discrete":
            n = int(aspace["n"])
            if out.dim() != 2 or k != n:
                raise ValueError(
                    f"the action space has {n} actions but network {name!r} has {k} outputs"
                )
        else:
            shape = tuple(int(v) for v in aspace["shape"])
            if k != math.prod(shape):
                raise ValueError(
                    f"the action space has shape {shape} ({math.prod(shape)} values) but the "
                    f"mean head of network {name!r} outputs {k}"
                )

    # ------------------------------------------------------------------ basics
    @property
    def action_space_kind(self) -> str:
        return self.action_space["kind"]

    @property
    def net(self) -> nn.Module:
        """The acting network: 'q' for DQN, 'policy' for PPO."""
        return self.nets["q"] if "q" in self.nets else self.nets["policy"]

    def eval(self) -> Agent:
        for n in self.nets.values():
            n.eval()
        return self

    @property
    def device(self) -> torch.device:
        """The device of the acting network (where inputs from ``preprocess`` live)."""
        return module_device(self.net)

    def to(self, device: str | torch.device | None) -> Agent:
        """Move every network to ``device`` (``resolve_device``: auto, cpu, cuda[:N];
        None: leave as is), in place; returns the agent."""
        if device is not None:
            dev = resolve_device(device)
            for n in self.nets.values():
                n.to(dev)
        return self

    def preprocess(self, obs) -> torch.Tensor:
        """Raw observation batch (B, *obs_shape) -> float32 network input tensor."""
        arr = np.asarray(obs)
        if tuple(arr.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"observation batch shape {tuple(arr.shape)} does not match the agent's "
                f"(B, {', '.join(map(str, self.obs_shape))}) for env {self.env_id}"
            )
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise ValueError(
                f"observation contains NaN or inf (first at index {where} of the batch of "
                f"shape {tuple(arr.shape)}); the agent acts on finite observations only"
            )
        kind, dev = self.preprocessing["kind"], self.device
        if kind == "pixels" and dev.type != "cpu" and arr.dtype == np.uint8:
            return pixels_on_device(arr, float(self.preprocessing.get("scale", 255.0)), dev)
        if kind == "pixels":
            x = arr.astype(np.float32) / float(self.preprocessing.get("scale", 255.0))
        elif kind == "normalize":
            x = self.obs_rms.normalize(arr)
        elif kind == "identity":
            x = arr.astype(np.float32)
        else:
            raise ValueError(
                f"unknown preprocessing kind {kind!r}; known kinds: "
                f"{', '.join(PREPROCESSING_KINDS)}"
            )
        return torch.as_tensor(x, dtype=torch.float32, device=dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> Q-values / logits / action mean."""
        return self.net(x)

    q_values = forward
    __call__ = forward

    def bounded_form(self) -> nn.Sequential:
        """The acting network as an ``nn.Sequential`` of layers ``bounds`` supports."""
        return self.net.bounded_form().eval()

    def act(self, x: torch.Tensor, deterministic: bool = True,
            generator: torch.Generator | None = None) -> np.ndarray:
        """Actions for a batch of network inputs (B, *shape)."""
        with torch.no_grad():
            out = self.net(x.to(self.device))
            if self.action_space_kind == "discrete":
                if deterministic or self.algo == "dqn":
                    return out.argmax(dim=1).cpu().numpy()
                # sampled on the CPU (the generator's device): the same actions on any device
                probs = torch.softmax(out, dim=1).cpu()
                return torch.multinomial(probs, 1, generator=generator).squeeze(1).numpy()
            if not deterministic:
                std = self.net.log_std.exp()
                noise = torch.randn(out.shape, generator=generator).to(out.device)
                out = out + std * noise
            return self.clip_action(out.cpu().numpy())

    def clip_action(self, a: np.ndarray) -> np.ndarray:
        """Clip continuous actions to the action box."""
        low = np.array([-np.inf if v is None else v for v in self.action_space["low"]])
        high = np.array([np.inf if v is None else v for v in self.action_space["high"]])
        shape = tuple(self.action_space["shape"])
        return np.clip(a, low.reshape(shape), high.reshape(shape)).astype(np.float32)

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Action(s) for one raw observation or a batch (same preprocessing as in training)."""
        arr = np.asarray(obs)
        single = tuple(arr.shape) == self.obs_shape
        batch = arr[None] if single else arr
        actions = self.act(self.preprocess(batch), deterministic=deterministic)
        return actions[0] if single else actions

    # ------------------------------------------------------------------ files
    def to_payload(self) -> dict:
        """The checkpoint dict (without train state)."""
        return {
            "nets": {k: {"spec": copy.deepcopy(n.spec), "state_dict": n.state_dict()}
                     for k, n in self.nets.items()},
            "algo": self.algo, "loss": self.loss_name, "env_id": self.env_id,
            "env_version": env_version(self.env_id), "env_family": env_family(self.env_id),
            "obs_shape": list(self.obs_shape), "action_space": copy.deepcopy(self.action_space),
            "preprocessing": dict(self.preprocessing),
            "obs_rms": None if self.obs_rms is None else self.obs_rms.state_dict(),
            "threat_model": self.threat_model.to_dict(), "config": copy.deepcopy(self.config),
            "seed": self.seed, "versions": library_versions(),
            "metadata": copy.deepcopy(self.metadata), "reward_scale": float(self.reward_scale),
        }

    def save(self, path: str | os.PathLike, train_state: dict | None = None) -> None:
        """Write the agent (normalization frozen) to one checkpoint file, atomically."""
        payload = self.to_payload()
        if payload["obs_rms"] is not None:
            payload["obs_rms"]["frozen"] = True
        if train_state is not None:
            payload["train_state"] = train_state
        save_checkpoint(payload, path)

    @classmethod
    def from_payload(cls, data: dict, source: str = "checkpoint") -> Agent:
        """Rebuild an agent from a validated checkpoint dict."""
        try:
            _check_finite(data, source)
            nets = {}
            for name, entry in data["nets"].items():
                net = build_network(entry["spec"])
                net.load_state_dict(entry["state_dict"])
                nets[name] = net.eval()
            rms = None
            if data.get("obs_rms") is not None:
                rms = RunningMeanStd.from_state_dict(data["obs_rms"])
                rms.freeze()
            agent = cls(
                nets, env_id=data["env_id"], algo=data["algo"],
                obs_shape=tuple(data["obs_shape"]), action_space=data["action_space"],
                preprocessing=data["preprocessing"],
                threat_model=ThreatModel.from_dict(data["threat_model"]), obs_rms=rms,
                config=data["config"], seed=data["seed"], loss_name=data.get("loss", "vanilla"),
                metadata=data.get("metadata", {}),
                reward_scale=data.get("reward_scale", 1.0),
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: inconsistent checkpoint contents: {e}") from None
        agent.versions = data.get("versions", {})
        return agent

    @classmethod
    def from_sb3(cls, zip_path: str | os.PathLike, vecnormalize: str | os.PathLike | None = None,
                 *, env_id: str, env_kwargs: dict | None = None) -> Agent:
        """A Stable-Baselines3 DQN / PPO / A2C model (``model.save`` zip) as an agent with
        the same actions and outputs; ``vecnormalize``: the ``VecNormalize.save`` file, whose
        statistics (and ``clip_obs``) become the frozen observation normalization.
        See ``certrl.importers.sb3`` and docs/byo-policy.md."""
        from certrl.importers.sb3 import agent_from_sb3

        return agent_from_sb3(zip_path, env_id, vecnormalize, env_kwargs)

    @classmethod
    def from_module(cls, net: nn.Module, env_id: str, preprocess="identity", kind: str = "q",
                    **kw) -> Agent:
        """A plain ``nn.Module`` mapping network input = preprocess(obs) to Q-values
        (``kind="q"``) or logits / action mean (``kind="policy"``) as an agent; modules
        outside certrl's network specs are bounded by auto_LiRPA. See
        ``certrl.importers.module`` and docs/byo-policy.md."""
        from certrl.importers.module import agent_from_module

        return agent_from_module(net, env_id, preprocess, kind, **kw)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Agent:
        """Load an agent from a checkpoint file (``CheckpointError`` if bad), its networks
        on ``device`` (see ``certrl.device.resolve_device``; None: the CPU)."""
        agent = cls.from_payload(load_checkpoint(path), source=repr(str(path)))
        agent.source = str(path)
        return agent.to(device)


def pixels_on_device(arr: np.ndarray, scale: float, device: torch.device) -> torch.Tensor:
    """uint8 pixels -> float32 x / scale computed on ``device``: the bytes are copied, not
    the 4x larger floats. Equals the host's ``arr.astype(float32) / scale`` bit for bit
    (one correctly rounded float32 division either way)."""
    return torch.as_tensor(arr, device=device).to(torch.float32) / scale


def _check_reward_scale(value) -> float:
    """The reward scale as a float; ValueError unless a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"reward_scale must be a finite number > 0; got {value!r}")
    return float(value)


def _check_finite(data: dict, source: str) -> None:
    """CheckpointError naming the first tensor (weights or obs_rms stats) with NaN/inf."""
    for name, entry in data["nets"].items():
        for key, t in entry["state_dict"].items():
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) \
                    and not torch.isfinite(t).all():
                raise CheckpointError(
                    f"{source}: network {name!r} has non-finite values (NaN/inf) in tensor "
                    f"{key!r}"
                )
    rms = data.get("obs_rms")
    if isinstance(rms, dict):
        for key in ("mean", "var", "count"):
            if key not in rms:
                continue
            try:
                arr = np.asarray(rms[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise CheckpointError(f"{source}: obs_rms.{key} is not numeric") from None
            if not np.isfinite(arr).all():
                raise CheckpointError(
                    f"{source}: obs_rms.{key} (observation normalization statistics) has "
                    f"non-finite values (NaN/inf)"
                )


def shipped_agents() -> list[str]:
    """Names of the agents packaged in ``certrl/agents/``."""
    return sorted(p.stem for p in AGENTS_DIR.glob("*.pt"))


def load(path_or_name: str | os.PathLike, device: str | torch.device | None = None) -> Agent:
    """Load an agent from a checkpoint path, a training output folder or a shipped name,
    its networks on ``device`` (auto, cpu, cuda[:N]; None: the CPU)."""
    p = Path(path_or_name)
    if p.is_dir() and (p / "agent.pt").exists():  # a `certrl train --out` folder
        return Agent.load(p / "agent.pt", device)
    if p.exists():
        return Agent.load(p, device)
    name = str(path_or_name)
    if name in shipped_agents():
        agent = Agent.load(AGENTS_DIR / f"{name}.pt", device)
        agent.source = name
        return agent
    if os.sep in name or "/" in name or p.suffix in (".pt", ".pth"):
        return Agent.load(p, device)  # raises "does not exist"
    raise CheckpointError(
        f"no checkpoint file and no shipped agent named {name!r} "
        f"(shipped agents: {', '.join(shipped_agents()) or 'none'})"
    )
