"""A plain ``nn.Module`` (e.g. a CleanRL QNetwork) as a certrl agent (``Agent.from_module``).

The module is traced with ``torch.fx``; when its graph is a chain that fits a certrl
network spec it is converted, weights copied, and checked to compute the same outputs
(float32 tolerance) on random inputs:

- an MLP: Linear (act Linear)* with one activation kind, ReLU or Tanh, as modules
  (``nn.ReLU``) or functions in ``forward`` (``F.relu``, ``torch.relu``, ``x.relu()``);
- the Nature CNN: Conv(32, 8, 4) ReLU Conv(64, 4, 2) ReLU Conv(64, 3, 1) ReLU Flatten
  Linear ReLU Linear (CleanRL's Atari QNetwork body, without its ``x / 255``: pass
  ``preprocess="pixels"`` instead).

Such an agent is an ordinary one: saved, loaded and bounded by the native engine.
Anything else (other layers, branches, functions the trace cannot follow) is kept as is
in an :class:`ExternalNet`: its bounded form is the module itself, which the native
engine cannot parse, so ``backend="auto"`` (certify's default) bounds it with
auto_LiRPA; ``agent.metadata["bound_backend"]`` says which engine applies. An
``ExternalNet`` agent cannot be saved (a checkpoint holds specs, not code).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

import bounds
from certrl.agent import PREPROCESSING_KINDS, Agent
from certrl.envs import RunningMeanStd
from certrl.importers.common import check_match, env_spaces, frozen_rms, threat_for
from certrl.nets import build_network

KINDS = ("q", "policy")
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh"}
_ACT_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh"}
NATURE = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


class NotSavableError(ValueError):
    """An imported module that has no certrl network spec, so no checkpoint form."""


class UnsavableSpec(dict):
    """The ``spec`` of an :class:`ExternalNet`: readable (agent identity hashes it), but
    copying it for a checkpoint (``Agent.to_payload``) raises :class:`NotSavableError`, so
    ``Agent.save`` writes nothing rather than a file no loader can rebuild."""

    def __deepcopy__(self, memo):
        raise NotSavableError(
            f"the imported {self.get('module_class')} has no certrl network spec (its graph is "
            "not an MLP / Nature-CNN chain), so the agent cannot be saved; certify it in "
            "Python (backend 'auto' uses auto_LiRPA)")


class ExternalNet(nn.Module):
    """A user module kept as is: ``forward`` = the module, ``bounded_form()`` a copy of it
    (bounded by auto_LiRPA through ``backend="auto"``)."""

    def __init__(self, module: nn.Module, log_std: torch.Tensor | None = None):
        super().__init__()
        self.module = module
        if log_std is not None:
            self.log_std = nn.Parameter(torch.as_tensor(log_std, dtype=torch.float32))

        name = type(module).__name__
        self.spec = UnsavableSpec(type="external", module_class=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def bounded_form(self) -> nn.Module:
        return copy.deepcopy(self.module).eval()


def chain_ops(net: nn.Module) -> list | None:
    """The module as a list of ops (nn.Linear, nn.Conv2d, "relu", "tanh", "flatten"), or
    None when its fx graph is not a single chain of those."""
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # noqa: BLE001 - anything fx cannot trace stays an ExternalNet
        return None
    mods = dict(gm.named_modules())
    ops, prev = [], None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None
            prev = node
            continue
        if node.op == "output":
            return ops if node.args[0] is prev else None
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if tensors != [prev] or node.args[0] is not prev:
            return None
        op = _op(node, mods)
        if op is None:
            return None
        if op != "noop":
            ops.append(op)
        prev = node
    return None


def _op(node: fx.Node, mods: dict):
    """One fx node as an op of ``chain_ops`` ("noop" for identity-like ones), or None."""
    if node.op == "call_module":
        m = mods[node.target]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return m
        if type(m) in _ACT_MODULES:
            return _ACT_MODULES[type(m)]
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return "noop"
        return None
    extra = node.args[1:] + tuple(v for k, v in node.kwargs.items()
                                  if not (k == "inplace" and v is False))
    if node.op == "call_function":
        if node.target in _ACT_FUNCS and not extra:
            return _ACT_FUNCS[node.target]
        if node.target is torch.flatten and tuple(node.args[1:]) == (1,):
            return "flatten"
        return None
    if node.op == "call_method" and node.target in ("relu", "tanh") and not extra:
        return node.target
    if node.op == "call_method" and node.target == "flatten" and tuple(node.args[1:]) == (1,):
        return "flatten"
    return None


def body_and_head(ops: list, obs_shape: tuple[int, ...]) -> tuple[dict, dict, nn.Linear] | None:
    """(body spec, body state_dict, head Linear) for an MLP / Nature-CNN op chain, or None."""
    if ops and ops[0] == "flatten" and len(obs_shape) == 1:
        ops = ops[1:]
    if len(obs_shape) == 3 and len(ops) >= 9 and all(
            isinstance(m, nn.Conv2d) and m.out_channels == c and m.kernel_size == (k, k)
            and m.stride == (s, s) and m.padding == (0, 0) and m.bias is not None
            for m, (c, k, s) in zip(ops[0:6:2], NATURE)) and \
            ops[1:6:2] == ["relu"] * 3 and ops[6] == "flatten":
        rest = ops[7:]
        if len(rest) != 3 or rest[1] != "relu" or not all(
                isinstance(m, nn.Linear) for m in rest[::2]):
            return None
        body = {"kind": "cnn", "in_shape": list(obs_shape), "fc": rest[0].out_features}
        mods = {0: ops[0], 2: ops[2], 4: ops[4], 7: rest[0]}
        return body, _state(mods), rest[2]
    if len(obs_shape) != 1 or not ops or not isinstance(ops[-1], nn.Linear):
        return None
    linears, acts = ops[0::2], ops[1::2]
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears) or \
            len(set(acts)) > 1 or not all(a in ("relu", "tanh") for a in acts):
        return None
    body = {"kind": "mlp", "in_dim": int(obs_shape[0]),
            "hidden": [m.out_features for m in linears[:-1]],
            "activation": acts[0] if acts else "relu"}
    return body, _state({2 * i: m for i, m in enumerate(linears[:-1])}), linears[-1]


def _state(mods: dict) -> dict:
    out = {}
    for i, m in mods.items():
        out[f"body.{i}.weight"] = m.weight.detach().clone()
        out[f"body.{i}.bias"] = m.bias.detach().clone()
    return out


def spec_net(net: nn.Module, obs_shape: tuple[int, ...], spec_type: str, n_out: int,
             log_std: torch.Tensor | None) -> nn.Module | None:
    """The certrl network of ``spec_type`` equal to ``net`` (checked on 64 random inputs),
    or None when ``net`` has no such form."""
    ops = chain_ops(net)
    found = None if ops is None else body_and_head(ops, obs_shape)
    if found is None:
        return None
    body, state, head = found
    if head.bias is None or head.out_features != n_out:
        return None
    spec = {"type": spec_type, "body": body, "n_out": n_out}
    state = {**state, "head.weight": head.weight.detach().clone(),
             "head.bias": head.bias.detach().clone()}
    if spec_type == "gaussian_policy":
        state["log_std"] = torch.zeros(n_out) if log_std is None else log_std.detach().clone()
    out = build_network(spec)
    out.load_state_dict(state, strict=True)
    out.eval()
    x = torch.randn((64, *obs_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net(x).reshape(64, -1), out(x)
    tol = 1e-5 * (1.0 + float(a.abs().max()))
    return out if a.shape == b.shape and float((a - b).abs().max()) <= tol else None


def preprocessing_from(preprocess, obs_shape: tuple[int, ...],
                       obs_rms: RunningMeanStd | None) -> tuple[dict, RunningMeanStd | None]:
    """(preprocessing dict, obs_rms) from ``preprocess``: a kind name, or a dict
    {"kind": "pixels", "scale": 255} / {"kind": "normalize", "mean", "std", "clip"}."""
    pre = {"kind": preprocess} if isinstance(preprocess, str) else dict(preprocess or {})
    kind = pre.get("kind")
    if kind not in PREPROCESSING_KINDS:
        raise ValueError(f"unknown preprocessing kind {kind!r}; known kinds: "
                         f"{', '.join(PREPROCESSING_KINDS)}")
    if kind == "pixels":
        return {"kind": "pixels", "scale": float(pre.get("scale", 255.0))}, None
    if kind == "normalize":
        if obs_rms is None:
            if "mean" not in pre or "std" not in pre:
                raise ValueError("preprocess 'normalize' needs obs_rms=RunningMeanStd or "
                                 "{'kind': 'normalize', 'mean': [...], 'std': [...]}")
            var = np.asarray(pre["std"], dtype=np.float64) ** 2
            obs_rms = frozen_rms(pre["mean"], np.broadcast_to(var, obs_shape), obs_shape,
                                 epsilon=0.0, clip=pre.get("clip"))
        return {"kind": "normalize", "clip": obs_rms.clip}, obs_rms
    return {"kind": "identity"}, None


def agent_from_module(net: nn.Module, env_id: str, preprocess="identity", kind: str = "q",
                      obs_rms: RunningMeanStd | None = None, env_kwargs: dict | None = None,
                      log_std=None, source: str | None = None) -> Agent:
    """A certrl agent acting with ``net`` (network input -> Q-values for ``kind="q"``,
    logits or action mean for ``kind="policy"``) in ``env_id``."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    obs_shape, _, aspace = env_spaces(env_id, env_kwargs)
    pre, rms = preprocessing_from(preprocess, obs_shape, obs_rms)
    discrete = aspace["kind"] == "discrete"
    if kind == "q" and not discrete:
        raise ValueError(f"kind 'q' needs a Discrete action space; {env_id} has a Box one")
    spec_type = "q" if kind == "q" else ("categorical_policy" if discrete else "gaussian_policy")
    n_out = int(aspace["n"]) if discrete else int(np.prod(aspace["shape"]))
    ls = None if log_std is None else torch.as_tensor(log_std, dtype=torch.float32).reshape(-1)
    net = copy.deepcopy(net).float().eval()
    try:
        with torch.no_grad():
            net(torch.zeros((2, *obs_shape)))
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"the module does not accept {env_id} observations of shape "
                         f"{obs_shape} (after preprocessing): {str(e).splitlines()[0]}") from None
    converted = spec_net(net, obs_shape, spec_type, n_out, ls)
    acting = converted if converted is not None else ExternalNet(
        copy.deepcopy(net), None if discrete else (ls if ls is not None else torch.zeros(n_out)))
    with torch.no_grad():
        out = acting(torch.zeros((1, *obs_shape)))
    check_match("output width", int(np.prod(out.shape[1:])), n_out, env_id)
    missing = bounds.unsupported_layers(acting.bounded_form())
    meta = {"imported_from": {"format": "module", "class": type(net).__qualname__,
                              "module": type(net).__module__, "source": source},
            "bound_backend": "lirpa" if missing else "native"}
    agent = Agent({"q" if kind == "q" else "policy": acting}, env_id=env_id,
                  algo="dqn" if kind == "q" else "ppo", obs_shape=obs_shape,
                  action_space=aspace, preprocessing=pre, threat_model=threat_for(pre, rms),
                  obs_rms=rms, config={"env_kwargs": dict(env_kwargs or {})}, metadata=meta)
    agent.source = source
    return agent.eval()
