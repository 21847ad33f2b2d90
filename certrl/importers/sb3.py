"""Stable-Baselines3 DQN / PPO / A2C models as certrl agents (``Agent.from_sb3``).

The SB3 networks map onto certrl's network specs layer for layer (certrl.nets):

- DQN ``q_net``: features extractor + ``q_net`` (Linear-act-...-Linear) -> ``q`` spec,
  the hidden Linear layers the body, the last one the head;
- PPO / A2C ``ActorCriticPolicy``: features extractor + ``mlp_extractor.policy_net`` +
  ``action_net`` -> ``categorical_policy`` (Discrete: logits) or ``gaussian_policy``
  (Box: the action mean, SB3's ``log_std`` as log std); ``value_net`` -> ``value``;
- features extractors: ``FlattenExtractor`` (1-D observations, an MLP body) and
  ``NatureCNN`` (certrl's ``cnn`` body: the same three convolutions, Flatten and a
  ReLU Linear of ``features_dim`` units; SB3 divides uint8 images by 255, certrl's
  ``pixels`` preprocessing does the same).

Refused with a clear error: other extractors, activations other than ReLU / Tanh, hidden
layers after a NatureCNN, ``squash_output`` (tanh-squashed actions) and gSDE.
``VecNormalize`` statistics become the agent's frozen ``normalize`` preprocessing, its
``clip_obs`` the preprocessing's clip and the threat model's domain [-clip_obs, clip_obs].
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from certrl.agent import Agent
from certrl.importers.common import check_match, env_spaces, frozen_rms, threat_for
from certrl.importers.sb3_format import SB3Policy, read_sb3_zip, read_vecnormalize
from certrl.nets import build_network

ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh"}
NATURE = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (out channels, kernel, stride)


def linear_chain(sd: dict, prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the Linear layers ``prefix{i}`` of an ``nn.Sequential``, in order;
    they must sit at indices 0, 2, 4, ... (one activation between two Linear layers)."""
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in sd
                  if k.startswith(prefix) and k.endswith(".weight")})
    if idx != list(range(0, 2 * len(idx), 2)):
        raise ValueError(f"SB3 layers {prefix}* at indices {idx} are not a Linear-activation "
                         "chain certrl can import")
    try:
        return [(sd[f"{prefix}{i}.weight"], sd[f"{prefix}{i}.bias"]) for i in idx]
    except KeyError as e:
        raise ValueError(f"SB3 layer without bias: {e}") from None


def _cnn_body(sd: dict, prefix: str, obs_shape: tuple[int, ...]) -> tuple[dict, dict]:
    """certrl ``cnn`` body spec + state_dict from an SB3 NatureCNN under ``prefix``."""
    convs = [(sd.get(f"{prefix}cnn.{i}.weight"), sd.get(f"{prefix}cnn.{i}.bias"))
             for i in (0, 2, 4)]
    shapes = [None if w is None else (w.shape[0], w.shape[2]) for w, _ in convs]
    if len(obs_shape) != 3 or shapes != [(c, k) for c, k, _ in NATURE] or \
            f"{prefix}linear.0.weight" not in sd:
        raise ValueError(f"the SB3 features extractor ({prefix}*) is not a NatureCNN over "
                         f"(C, H, W) images; certrl imports FlattenExtractor and NatureCNN")
    fc_w, fc_b = sd[f"{prefix}linear.0.weight"], sd[f"{prefix}linear.0.bias"]
    spec = {"kind": "cnn", "in_shape": list(obs_shape), "fc": int(fc_w.shape[0])}
    state = {}
    for j, (w, b) in zip((0, 2, 4), convs):
        state[f"body.{j}.weight"], state[f"body.{j}.bias"] = w, b
    state["body.7.weight"], state["body.7.bias"] = fc_w, fc_b
    return spec, state


def body_from(sd: dict, extractor: str, hidden: list, obs_shape: tuple[int, ...],
              activation: str) -> tuple[dict, dict]:
    """certrl body spec + state_dict: the extractor under ``extractor`` then the hidden
    Linear layers ``hidden`` [(W, b), ...] with ``activation``."""
    if any(k.startswith(extractor) for k in sd):
        if hidden:
            raise ValueError("hidden layers after a NatureCNN (net_arch) have no certrl "
                             "network spec; certrl imports NatureCNN + a Linear head")
        return _cnn_body(sd, extractor, obs_shape)
    if len(obs_shape) != 1:
        raise ValueError(f"an MLP policy on observations of shape {obs_shape}: certrl imports "
                         "MLP policies on 1-D observations (or NatureCNN on images)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation} is not supported; certrl imports "
                         f"{' and '.join(ACTIVATIONS)} MLPs")
    spec = {"kind": "mlp", "in_dim": int(obs_shape[0]),
            "hidden": [int(w.shape[0]) for w, _ in hidden],
            "activation": ACTIVATIONS[activation]}
    state = {}
    for i, (w, b) in enumerate(hidden):
        state[f"body.{2 * i}.weight"], state[f"body.{2 * i}.bias"] = w, b
    return spec, state


def _built(spec: dict, state: dict) -> nn.Module:
    net = build_network(spec)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"SB3 weights do not fit the certrl {spec['type']} network: "
                         f"{str(e).splitlines()[0]}") from None
    return net.eval()


def _extractor(sd: dict, side: str) -> str:
    """The features-extractor prefix of one side ('pi' or 'vf') of an actor-critic."""
    own = f"{side}_features_extractor."
    return own if any(k.startswith(own) for k in sd) else "features_extractor."


def nets_from(desc: SB3Policy) -> dict[str, nn.Module]:
    """certrl networks computing the SB3 policy's outputs (see the module docstring)."""
    sd, obs, act = desc.state_dict, desc.obs_shape, desc.activation
    if desc.algo == "dqn":
        chain = linear_chain(sd, "q_net.q_net.")
        if not chain:
            raise ValueError("no q_net.q_net.* layers in the SB3 DQN policy")
        body, state = body_from(sd, "q_net.features_extractor.", chain[:-1], obs, act)
        w, b = chain[-1]
        spec = {"type": "q", "body": body, "n_out": int(w.shape[0]), "dueling": False}
        return {"q": _built(spec, {**state, "head.weight": w, "head.bias": b})}
    if desc.squash_output:
        raise ValueError("SB3 squash_output=True (tanh-squashed actions) is not supported")
    if desc.use_sde:
        raise ValueError("SB3 gSDE policies (use_sde=True) are not supported")
    nets = {}
    for name, side, trunk, head in (("policy", "pi", "mlp_extractor.policy_net.", "action_net"),
                                    ("value", "vf", "mlp_extractor.value_net.", "value_net")):
        body, state = body_from(sd, _extractor(sd, side), linear_chain(sd, trunk), obs, act)
        state = {**state, "head.weight": sd[f"{head}.weight"], "head.bias": sd[f"{head}.bias"]}
        n = int(sd[f"{head}.weight"].shape[0])
        if name == "value":
            spec = {"type": "value", "body": body}
        elif desc.action_kind == "discrete":
            spec = {"type": "categorical_policy", "body": body, "n_out": n}
        else:
            spec = {"type": "gaussian_policy", "body": body, "n_out": n}
            state["log_std"] = sd["log_std"]
        nets[name] = _built(spec, state)
    return nets


def agent_from_sb3(zip_path: str | Path, env_id: str, vecnormalize: str | Path | None = None,
                   env_kwargs: dict | None = None) -> Agent:
    """A certrl agent computing the same actions and outputs as the SB3 model.

    ``env_id`` (SB3 files do not record it) must have the model's observation and
    action spaces; ``vecnormalize``: the file of ``VecNormalize.save`` used in training.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError("from_sb3 needs env_id: SB3 model files do not record their env")
    desc = read_sb3_zip(zip_path)
    obs_shape, obs_dtype, aspace = env_spaces(env_id, env_kwargs)
    check_match("observation shape", desc.obs_shape, obs_shape, env_id)
    want = aspace.get("n") if aspace["kind"] == "discrete" else tuple(aspace["shape"])
    check_match("action space", (desc.action_kind, desc.action_n_or_shape),
                (aspace["kind"], want), env_id)
    nets = nets_from(desc)
    image = len(obs_shape) == 3 and obs_dtype == "uint8" and desc.normalize_images
    pre, rms = ({"kind": "pixels", "scale": 255.0} if image else {"kind": "identity"}), None
    if vecnormalize is not None:
        stats = read_vecnormalize(vecnormalize)
        if stats is not None and image:
            raise ValueError("VecNormalize on image observations is not supported")
        if stats is not None:
            clip = stats["clip_obs"] if stats["clip_obs"] < float("inf") else None
            rms = frozen_rms(stats["mean"], stats["var"], obs_shape, stats["epsilon"], clip,
                             stats["count"])
            pre = {"kind": "normalize", "clip": clip}
    meta = {"imported_from": {
        "format": "sb3", "file": Path(zip_path).name, "sha256": _sha256(zip_path),
        "sb3_version": desc.sb3_version, "algo": desc.algo.upper(),
        "policy_class": desc.policy_class,
        "vecnormalize": None if vecnormalize is None else Path(vecnormalize).name}}
    agent = Agent(nets, env_id=env_id, algo=desc.algo, obs_shape=obs_shape,
                  action_space=aspace, preprocessing=pre, threat_model=threat_for(pre, rms),
                  obs_rms=rms, config={"env_kwargs": dict(env_kwargs or {})},
                  metadata=meta)
    agent.source = str(zip_path)
    return agent.eval()


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
