"""Agents to and from ONNX.

Export (``export_onnx``): the acting network's bounded form (``Agent.bounded_form()``),
with the agent's preprocessing folded in front as ``bounds.Normalize`` layers when
``input="raw"`` (pixels: x / scale; running mean/std: (x - mean) / sqrt(var + eps)), so
the ONNX network maps a *raw observation* batch (1, *obs_shape) to Q-values / logits /
action means. ``input="network"`` exports the bounded form alone (input = the network
input, the space the threat model's eps is measured in). Batch size 1 (VNN-COMP
convention), opset 13, torch's TorchScript exporter (``dynamo=False``).

Import (``agent_from_onnx``): ``bounds.from_onnx`` reads the graph; the layer chain must
fit a certrl network spec (an MLP with one activation kind, or the Nature CNN), whose
weights are then copied and checked by a forward pass. Leading elementwise affine layers
(x - m) / s become the agent's preprocessing (see ``agent_from_onnx``).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bounds.layers import Normalize
from certrl.agent import Agent
from certrl.envs import RunningMeanStd, action_space_info, env_family, make_env
from certrl.nets import build_network
from certrl.threat import SPACE_RAW, ThreatModel, default_threat_model

INPUTS = ("raw", "network")
OPSET = 13


# ------------------------------------------------------------------ export
def refuse_clipped(agent: Agent) -> None:
    """ValueError when the agent clips its normalized observations (SB3 VecNormalize
    ``clip_obs``): an affine raw-input network would drop the clip."""
    clip = getattr(agent.obs_rms, "clip", None)
    if clip is not None:
        raise ValueError(f"this agent clips its normalized observations to +-{clip} "
                         "(VecNormalize clip_obs), which a raw-observation ONNX network "
                         "cannot express without dropping it; export with --input network")


def input_layers(agent: Agent) -> list[nn.Module]:
    """The agent's preprocessing as layers: raw observation -> network input (affine).

    ValueError for a preprocessing kind that is not an elementwise affine map."""
    pre = agent.preprocessing
    kind = pre.get("kind")
    if kind == "identity":
        return []
    if kind == "pixels":
        return [Normalize(0.0, float(pre.get("scale", 255.0)))]
    if kind == "normalize":
        rms = agent.obs_rms
        refuse_clipped(agent)
        return [Normalize(torch.as_tensor(rms.mean, dtype=torch.float32),
                          torch.as_tensor(rms.std, dtype=torch.float32))]
    raise ValueError(f"preprocessing {kind!r} cannot be folded into an ONNX network; "
                     "export with input='network' (--input network)")


def exported_module(agent: Agent, input: str = "raw") -> nn.Sequential:
    """The module ``export_onnx`` writes: [preprocessing layers] + bounded form."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}; got {input!r}")
    form = agent.bounded_form()  # ValueError for networks without one (SortNet)
    pre = input_layers(agent) if input == "raw" else []
    return nn.Sequential(*pre, *form).float().eval()


def export_onnx(agent: Agent, path: str | os.PathLike, input: str = "raw") -> Path:
    """Write ``exported_module(agent, input)`` to ``path`` as ONNX (atomically); returns
    the path. Metadata props record the env, algorithm, input space and threat model."""
    import onnx

    module = exported_module(agent, input)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as net.onnx")
    x = torch.zeros((1, *agent.obs_shape), dtype=torch.float32)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), tmp, dynamo=False, input_names=["X"],
                              output_names=["Y"], opset_version=OPSET,
                              do_constant_folding=True)
        model = onnx.load(tmp)
        for key, value in export_metadata(agent, input).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_metadata(agent: Agent, input: str) -> dict[str, str]:
    """Strings stored in the ONNX model's metadata_props."""
    space = ("raw observation (preprocessing folded in)" if input == "raw"
             else f"network input ({agent.threat_model.space})")
    return {"certrl.env_id": agent.env_id, "certrl.algo": agent.algo,
            "certrl.loss": agent.loss_name, "certrl.input": space,
            "certrl.preprocessing": str(agent.preprocessing),
            "certrl.threat_model": agent.threat_model.describe(),
            "certrl.source": str(agent.source or "")}


# ------------------------------------------------------------------ import
def agent_from_onnx(path: str | os.PathLike, env_id: str, kind: str = "q",
                    log_std: float = 0.0, threat_model: ThreatModel | None = None) -> Agent:
    """An ``Agent`` acting with the ONNX network at ``path`` on raw observations of
    ``env_id``.

    kind "q": a DQN agent (outputs = Q-values); "policy": a PPO-style policy (outputs =
    logits for a Discrete action space, the Gaussian mean for a Box one, with a
    state-independent ``log_std``). Leading elementwise layers (x - m) / s of the graph
    (merged into one) become preprocessing: MuJoCo envs -> frozen "normalize" statistics
    (eps in normalized units, the family's convention); Atari with m = 0 and one scale
    -> "pixels"; otherwise they stay in the network as its ``input_norm`` and eps is in
    raw observation units. ``threat_model``: default the env family's convention at eps 0.
    ValueError when the chain fits no certrl network spec (an MLP with one activation
    kind, or the Nature CNN) or the outputs do not fit the action space.
    """
    from bounds.onnx_io import from_onnx

    if kind not in ("q", "policy"):
        raise ValueError(f"kind must be 'q' or 'policy'; got {kind!r}")
    seq = from_onnx(path)
    obs_shape, aspace = env_spaces(env_id)
    check_fits(seq, env_id, obs_shape, aspace)
    layers = list(seq)
    norm, layers = merge_leading_normalize(layers, obs_shape)
    family = _family(env_id)
    preprocessing, rms, body_norm, tm = _preprocessing(norm, family, obs_shape)
    spec = network_spec(layers, obs_shape, aspace, kind, body_norm, log_std)
    net = build_network(spec)
    copy_weights(layers, net)
    check_same(seq, net, preprocessing, rms, obs_shape)
    algo = "dqn" if kind == "q" else "ppo"
    name = "q" if kind == "q" else "policy"
    agent = Agent({name: net.eval()}, env_id=env_id, algo=algo, obs_shape=obs_shape,
                  action_space=aspace, preprocessing=preprocessing,
                  threat_model=threat_model or tm, obs_rms=rms,
                  metadata={"imported_from": f"onnx:{Path(path).name}"})
    agent.source = str(path)
    return agent


def env_spaces(env_id: str) -> tuple[tuple[int, ...], dict]:
    """(observation shape, action-space dict) of ``env_id`` (one env made and closed)."""
    env = make_env(env_id, 0)
    try:
        return tuple(env.observation_space.shape), action_space_info(env.action_space)
    finally:
        env.close()


def check_fits(seq: nn.Module, env_id: str, obs_shape, aspace: dict) -> None:
    """ValueError unless ``seq`` takes (1, *obs_shape) inputs and has one output per
    action (discrete) or per action element (continuous)."""
    try:
        with torch.no_grad():
            out = seq(torch.zeros((1, *obs_shape)))
    except RuntimeError as e:
        raise ValueError(f"the ONNX network does not take {env_id} observations of shape "
                         f"{tuple(obs_shape)}: {str(e).splitlines()[0]}") from None
    k = math.prod(out.shape[1:])
    n = int(aspace["n"]) if aspace["kind"] == "discrete" else math.prod(aspace["shape"])
    what = "actions" if aspace["kind"] == "discrete" else "action elements"
    if out.dim() != 2 or k != n:
        raise ValueError(f"the ONNX network has {k} outputs of shape {tuple(out.shape[1:])} "
                         f"but {env_id} has {n} {what}")


def _family(env_id: str) -> str | None:
    try:
        return env_family(env_id)
    except ValueError:
        return None


def merge_leading_normalize(layers: list[nn.Module], obs_shape: tuple[int, ...]):
    """((mean, std) float64 arrays of obs_shape, or None; the remaining layers): the
    leading ``Normalize`` layers composed into one (x - m) / s:
    ((x - m1) / s1 - m2) / s2 = (x - (m1 + m2 s1)) / (s1 s2)."""
    mean, std, i = np.zeros(obs_shape), np.ones(obs_shape), 0
    while i < len(layers) and isinstance(layers[i], Normalize):
        m2 = np.broadcast_to(layers[i].mean.double().numpy(), obs_shape)
        s2 = np.broadcast_to(layers[i].std.double().numpy(), obs_shape)
        mean, std, i = mean + m2 * std, std * s2, i + 1
    return (None if i == 0 else (mean, std)), layers[i:]


def _preprocessing(norm, family: str | None, obs_shape):
    """(preprocessing dict, obs_rms, body input_norm or None, default threat model)."""
    def default(fam):
        try:
            return default_threat_model(fam)
        except ValueError:
            return ThreatModel(space=SPACE_RAW)
    if norm is None:
        return {"kind": "identity"}, None, None, ThreatModel(space=SPACE_RAW)
    mean, std = norm
    if family == "mujoco":
        rms = RunningMeanStd(obs_shape, epsilon=0.0)
        rms.mean, rms.var = mean.copy(), std**2
        rms.freeze()
        return {"kind": "normalize"}, rms, None, default(family)
    if family == "atari" and not mean.any() and np.all(std == std.flat[0]):
        return {"kind": "pixels", "scale": float(std.flat[0])}, None, None, default(family)
    return ({"kind": "identity"}, None, {"mean": mean.tolist(), "std": std.tolist()},
            ThreatModel(space=SPACE_RAW))


NATURE = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (out channels, kernel, stride) of the CNN


def network_spec(layers: list[nn.Module], obs_shape, aspace: dict, kind: str,
                 body_norm: dict | None, log_std: float) -> dict:
    """The certrl network spec whose bounded form is exactly ``layers``; ValueError if
    none fits."""
    body = _cnn_body(layers, obs_shape) if layers and isinstance(layers[0], nn.Conv2d) \
        else _mlp_body(layers, obs_shape)
    if body is None:
        names = ", ".join(type(m).__name__ for m in layers)
        raise ValueError(
            f"the ONNX network's layers ({names}) fit no certrl network (an MLP of Linear "
            "layers with one activation kind, or the Nature CNN); bound it directly with "
            "bounds.from_onnx(path) and bounds.compute")
    if body_norm is not None:
        body["input_norm"] = body_norm
    n_out = layers[-1].out_features
    if kind == "q":
        return {"type": "q", "body": body, "n_out": n_out, "dueling": False}
    if aspace["kind"] == "discrete":
        return {"type": "categorical_policy", "body": body, "n_out": n_out}
    return {"type": "gaussian_policy", "body": body, "n_out": n_out,
            "log_std_init": float(log_std)}


def _mlp_body(layers: list[nn.Module], obs_shape) -> dict | None:
    if len(obs_shape) != 1 or not layers or len(layers) % 2 == 0:
        return None
    lins, acts = layers[0::2], layers[1::2]
    if not all(type(m) is nn.Linear for m in lins):
        return None
    kinds = {type(a) for a in acts}
    if not kinds <= {nn.ReLU, nn.Tanh} or len(kinds) > 1:
        return None
    act = "tanh" if nn.Tanh in kinds else "relu"
    return {"kind": "mlp", "in_dim": int(obs_shape[0]),
            "hidden": [m.out_features for m in lins[:-1]], "activation": act}


def _cnn_body(layers: list[nn.Module], obs_shape) -> dict | None:
    if len(obs_shape) != 3 or len(layers) not in (8, 10):
        return None
    convs, relus = layers[0:6:2], layers[1:6:2]
    for c, (out, k, s) in zip(convs, NATURE):
        if type(c) is not nn.Conv2d or c.out_channels != out or c.kernel_size != (k, k) \
                or c.stride != (s, s) or c.padding != (0, 0) or c.groups != 1 \
                or c.dilation != (1, 1):
            return None
    tail = layers[6:]
    if not all(type(r) is nn.ReLU for r in relus) or type(tail[0]) is not nn.Flatten:
        return None
    fc = 0
    if len(tail) == 4:
        if type(tail[1]) is not nn.Linear or type(tail[2]) is not nn.ReLU:
            return None
        fc = tail[1].out_features
    if type(tail[-1]) is not nn.Linear:
        return None
    return {"kind": "cnn", "in_shape": list(obs_shape), "fc": fc}


def copy_weights(layers: list[nn.Module], net: nn.Module) -> None:
    """Copy the weights of the affine ``layers`` into the affine layers of ``net`` (same
    order); ValueError when their shapes differ."""
    src = [m for m in layers if isinstance(m, (nn.Linear, nn.Conv2d))]
    dst = [m for m in [*net.body, net.head] if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(src) != len(dst):
        raise ValueError(f"the ONNX network has {len(src)} affine layers, the certrl network "
                         f"{len(dst)}")
    with torch.no_grad():
        for i, (s, d) in enumerate(zip(src, dst)):
            if s.weight.shape != d.weight.shape:
                raise ValueError(f"affine layer {i}: weight shape {tuple(s.weight.shape)} does "
                                 f"not fit {tuple(d.weight.shape)} (observation shape?)")
            d.weight.copy_(s.weight)
            d.bias.copy_(s.bias if s.bias is not None else torch.zeros_like(d.bias))


def check_same(seq: nn.Module, net: nn.Module, preprocessing: dict, rms, obs_shape,
               atol: float = 1e-4) -> None:
    """ValueError unless net(preprocess(x)) = seq(x) on random raw inputs (rtol/atol 1e-4)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((8, *obs_shape), generator=gen) * 4 - 2
    if preprocessing["kind"] == "pixels":
        x = (x + 2) * 60
    with torch.no_grad():
        ref = seq(x)
        if preprocessing["kind"] == "pixels":
            inp = x / float(preprocessing["scale"])
        elif preprocessing["kind"] == "normalize":
            inp = torch.as_tensor(rms.normalize(x.numpy()))
        else:
            inp = x
        got = net(inp)
    if ref.shape != got.shape or not torch.allclose(ref, got, rtol=1e-4, atol=atol):
        err = math.inf if ref.shape != got.shape else float((ref - got).abs().max())
        raise ValueError(f"the imported agent does not reproduce the ONNX network (max abs "
                         f"difference {err:.3g})")
