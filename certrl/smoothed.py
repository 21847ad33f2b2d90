"""The smoothed agent a user deploys: majority vote (or mean Q) over seeded noisy copies.

For a DQN base agent with Q-network Q and noise std sigma, ``SmoothedAgent`` acts with

    vote   (default; S-DQN's deployed agent, Cohen et al.'s prediction):
           a(x) = argmax_k #{i <= N : argmax_a Q(x + sigma z_i) = k}
    mean-q (CROP's smoothed Q without clipping):
           a(x) = argmax_a (1/N) sum_i Q(x + sigma z_i, a)

with z_1..z_N ~ N(0, I) in the network-input space (the noise ``bounds.smoothing`` and
``certrl.certify`` use). Ties go to the lowest action index. The noise of a state is
drawn from a generator seeded with sha256(seed, salt, the bytes of x): the smoothed
policy is a deterministic function of the observation (same x, same action), so its
episodes do not depend on the order they run in and resume exactly.

``forward`` (what the attacks differentiate, ``certrl.attacks.make_attack(agent.forward)``)
is the expectation surrogate (1/M) sum_j Q(x + sigma z'_j) over M = ``attack_samples``
fresh draws (EOT); its noise is seeded from x too, so every PGD iterate sees new noise.
The clean label the attacks use is argmax of that surrogate (S-DQN's S-PGD uses the
smoothed action and one noise draw per step; see docs/smoothing.md).

``agent_smoothing_sigma(agent)``: the sigma a noise-trained agent was trained at
(metadata "smoothing_sigma", else its recorded noise loss's sigma), or None;
``resolve_sigma(agent, sigma)``: the sigma to smooth with (the agent's when ``sigma`` is
None, else ``sigma``, with a warning when they differ).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings

import numpy as np
import torch
from torch import nn

from certrl.agent import Agent
from certrl.losses.noise import loss_sigma

MODES = ("vote", "mean-q")
DEFAULT_SIGMA = 0.1  # certify's --sigma default, used when the agent records none
DEFAULT_SAMPLES = 100  # S-DQN's m = 100 Monte Carlo samples per step


def agent_smoothing_sigma(agent: Agent) -> float | None:
    """The noise std the agent was trained at (metadata, else its noise loss), or None."""
    meta = agent.metadata.get("smoothing_sigma") if isinstance(agent.metadata, dict) else None
    if isinstance(meta, (int, float)) and not isinstance(meta, bool) and meta > 0:
        return float(meta)
    return loss_sigma(agent.config)


def resolve_sigma(agent: Agent, sigma: float | None, default: float = DEFAULT_SIGMA) -> float:
    """sigma to smooth with: the given one (warning if the agent trained at another), else
    the agent's training sigma, else ``default``. ValueError unless finite and > 0."""
    own = agent_smoothing_sigma(agent)
    if sigma is None:
        sigma = own if own is not None else default
    elif own is not None and not math.isclose(float(sigma), own, rel_tol=1e-9):
        warnings.warn(f"smoothing at sigma {sigma:g}, but the agent was noise-trained at sigma "
                      f"{own:g} (its smoothed policy is best at its own sigma)", UserWarning,
                      stacklevel=2)
    if isinstance(sigma, bool) or not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"sigma must be a finite number > 0; got {sigma!r}")
    return float(sigma)


def seeded_noise(x: torch.Tensor, n: int, sigma: float, seed: int, salt: str) -> torch.Tensor:
    """(B, n, *shape) noise sigma z, z ~ N(0, I); row b drawn from a generator seeded with
    sha256(seed, salt, bytes of x[b]) (a function of the state, not of call order)."""
    rows = []
    xc = x.detach().to("cpu", torch.float32).contiguous()
    for b in range(xc.shape[0]):
        h = hashlib.sha256(f"{int(seed)}|{salt}|".encode() + xc[b].numpy().tobytes())
        gen = torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") >> 1)
        rows.append(torch.randn((n, *xc.shape[1:]), generator=gen))
    return sigma * torch.stack(rows).to(x.dtype).to(x.device)


class SmoothedQ(nn.Module):
    """Expectation surrogate x -> (1/M) sum_j Q(x + sigma z_j) of a base Q-network (its
    ``spec`` names the smoothing, so the agent identity differs from the base's)."""

    def __init__(self, base: nn.Module, sigma: float, samples: int, attack_samples: int,
                 mode: str, seed: int):
        super().__init__()
        self.base = base
        self.sigma, self.samples, self.mode, self.seed = sigma, samples, mode, seed
        self.attack_samples = attack_samples
        self.spec = {"type": "smoothed", "base": copy.deepcopy(getattr(base, "spec", None)),
                     "sigma": sigma, "samples": samples, "attack_samples": attack_samples,
                     "mode": mode, "seed": seed, "noise": "isotropic, network input"}

    def noisy_outputs(self, x: torch.Tensor, n: int, salt: str) -> torch.Tensor:
        """(B, n, K) base outputs at the n seeded noisy copies of every state."""
        z = seeded_noise(x, n, self.sigma, self.seed, salt)
        xs = (x.unsqueeze(1) + z).reshape(-1, *x.shape[1:])
        return self.base(xs).reshape(x.shape[0], n, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noisy_outputs(x, self.attack_samples, "attack").mean(1)


class SmoothedAgent(Agent):
    """A DQN agent acting by majority vote / mean Q over N seeded noisy copies (see the
    module docstring). Shares the base agent's networks; not saved (rebuild it from the
    base agent with ``smoothed``)."""

    def __init__(self, base: Agent, sigma: float, samples: int = DEFAULT_SAMPLES,
                 mode: str = "vote", seed: int = 0, attack_samples: int | None = None):
        if base.algo != "dqn" or base.action_space_kind != "discrete" or "q" not in base.nets:
            raise ValueError("the smoothed agent smooths a DQN agent (discrete actions, a "
                             f"Q-network); got a {base.algo} agent")
        if mode not in MODES:
            raise ValueError(f"unknown smoothing mode {mode!r}; use one of {', '.join(MODES)}")
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1; got {samples}")
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0; got {sigma}")
        m = int(samples if attack_samples is None else attack_samples)
        net = SmoothedQ(base.nets["q"], float(sigma), int(samples), m, mode, int(seed))
        meta = {**copy.deepcopy(base.metadata), "smoothed": dict(net.spec, base=None)}
        if meta.get("run_group"):  # its own group: never one row with the base agent's seeds
            text = json.dumps({"base": meta["run_group"], "smoothed": meta["smoothed"]},
                              sort_keys=True, default=str)
            meta["run_group"] = hashlib.sha256(text.encode()).hexdigest()
        super().__init__({"q": net}, env_id=base.env_id, algo=base.algo,
                         obs_shape=base.obs_shape, action_space=base.action_space,
                         preprocessing=base.preprocessing, threat_model=base.threat_model,
                         obs_rms=base.obs_rms, config=base.config, seed=base.seed,
                         loss_name=base.loss_name, metadata=meta,
                         reward_scale=base.reward_scale)
        self.base = base
        self.source = base.source
        self.versions = getattr(base, "versions", None)

    @property
    def smoothing(self) -> SmoothedQ:
        return self.nets["q"]

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) vote counts of the base argmax over the N seeded noisy copies."""
        s = self.smoothing
        with torch.no_grad():
            a = s.noisy_outputs(x, s.samples, "act").argmax(2)
        k = int(self.action_space["n"])
        return torch.nn.functional.one_hot(a, k).sum(1)

    def act(self, x: torch.Tensor, deterministic: bool = True,
            generator: torch.Generator | None = None) -> np.ndarray:
        """Smoothed actions (B,): most votes (vote) or largest mean Q (mean-q); ties -> the
        lowest action index."""
        s = self.smoothing
        if s.mode == "vote":
            score = self.votes(x).double()
        else:
            with torch.no_grad():
                score = s.noisy_outputs(x, s.samples, "act").mean(1)
        best = score.max(1, keepdim=True).values
        k = torch.arange(score.shape[1], device=score.device).expand_as(score)
        return torch.where(score == best, k, score.shape[1]).min(1).values.cpu().numpy()

    def bounded_form(self) -> nn.Sequential:
        raise ValueError("the smoothed agent has no bounded form: certify it with the "
                         "smoothing methods (certrl certify --method smoothing / "
                         "policy-smoothing on the base agent at the same sigma)")

    def save(self, path, train_state: dict | None = None) -> None:
        raise ValueError("a smoothed agent is not saved: save the base agent and rebuild "
                         "it with certrl.smoothed.smoothed(agent, sigma, ...)")


def smoothed(agent: Agent, sigma: float | None = None, samples: int = DEFAULT_SAMPLES,
             mode: str = "vote", seed: int = 0,
             attack_samples: int | None = None) -> SmoothedAgent:
    """The smoothed agent of ``agent`` at ``sigma`` (None: its training sigma, see
    ``resolve_sigma``)."""
    return SmoothedAgent(agent, resolve_sigma(agent, sigma), samples, mode, seed,
                         attack_samples)
