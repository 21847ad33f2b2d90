"""A trained agent: networks + preprocessing + threat model, saved as one file."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from certrl.envs import RunningMeanStd, env_family, env_version
from certrl.io import CheckpointError, library_versions, load_checkpoint, save_checkpoint
from certrl.nets import build_network
from certrl.threat import ThreatModel

AGENTS_DIR = Path(__file__).parent / "agents"


class Agent:
    """A policy that acts from raw observations and exposes its network for bounds.

    ``preprocess`` maps a raw observation batch to the network input (Atari:
    uint8 pixels / 255; MuJoCo: frozen running mean/std normalization; classic:
    float32 as is). ``forward``/``q_values`` map the network input to Q-values
    (DQN), logits (discrete PPO) or the action mean (continuous PPO), and
    ``bounded_form()`` is the same map as an ``nn.Sequential`` for ``bounds``.
    """

    def __init__(self, nets: dict[str, nn.Module], *, env_id: str, algo: str,
                 obs_shape: tuple[int, ...], action_space: dict, preprocessing: dict,
                 threat_model: ThreatModel, obs_rms: RunningMeanStd | None = None,
                 config: dict | None = None, seed: int = 0, loss_name: str = "vanilla",
                 metadata: dict | None = None):
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
        if preprocessing.get("kind") == "normalize" and obs_rms is None:
            raise ValueError("preprocessing 'normalize' needs obs_rms")

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

    def preprocess(self, obs) -> torch.Tensor:
        """Raw observation batch (B, *obs_shape) -> float32 network input tensor."""
        arr = np.asarray(obs)
        if tuple(arr.shape[1:]) != self.obs_shape:
            raise ValueError(
                f"observation batch shape {tuple(arr.shape)} does not match the agent's "
                f"(B, {', '.join(map(str, self.obs_shape))}) for env {self.env_id}"
            )
        kind = self.preprocessing["kind"]
        if kind == "pixels":
            x = arr.astype(np.float32) / float(self.preprocessing.get("scale", 255.0))
        elif kind == "normalize":
            x = self.obs_rms.normalize(arr)
        else:
            x = arr.astype(np.float32)
        return torch.as_tensor(x, dtype=torch.float32)

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
            out = self.net(x)
            if self.action_space_kind == "discrete":
                if deterministic or self.algo == "dqn":
                    return out.argmax(dim=1).numpy()
                probs = torch.softmax(out, dim=1)
                return torch.multinomial(probs, 1, generator=generator).squeeze(1).numpy()
            if not deterministic:
                std = self.net.log_std.exp()
                noise = torch.randn(out.shape, generator=generator)
                out = out + std * noise
            return self.clip_action(out.numpy())

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
            "metadata": copy.deepcopy(self.metadata),
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
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: inconsistent checkpoint contents: {e}") from None
        agent.versions = data.get("versions", {})
        return agent

    @classmethod
    def load(cls, path: str | os.PathLike) -> Agent:
        """Load an agent from a checkpoint file (``CheckpointError`` if bad)."""
        return cls.from_payload(load_checkpoint(path), source=repr(str(path)))


def shipped_agents() -> list[str]:
    """Names of the agents packaged in ``certrl/agents/``."""
    return sorted(p.stem for p in AGENTS_DIR.glob("*.pt"))


def load(path_or_name: str | os.PathLike) -> Agent:
    """Load an agent from a checkpoint path, a training output folder or a shipped name."""
    p = Path(path_or_name)
    if p.is_dir() and (p / "agent.pt").exists():  # a `certrl train --out` folder
        return Agent.load(p / "agent.pt")
    if p.exists():
        return Agent.load(p)
    name = str(path_or_name)
    if name in shipped_agents():
        return Agent.load(AGENTS_DIR / f"{name}.pt")
    if os.sep in name or "/" in name or p.suffix in (".pt", ".pth"):
        return Agent.load(p)  # raises "does not exist"
    raise CheckpointError(
        f"no checkpoint file and no shipped agent named {name!r} "
        f"(shipped agents: {', '.join(shipped_agents()) or 'none'})"
    )
