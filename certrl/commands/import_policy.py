"""certrl import: a policy trained elsewhere (SB3 zip, PyTorch module, ONNX) as an agent file."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import torch

COMMAND = "import"
FORMATS = ("sb3", "module", "onnx")

DESCRIPTION = """\
Write a certrl agent file (AGENT.pt) from a policy trained elsewhere; the file then
works with every command (certify, attack, evaluate, table, export) like a trained one.

  sb3     SOURCE = a Stable-Baselines3 DQN / PPO / A2C zip (model.save); --vecnormalize
          the VecNormalize.save file: its statistics and clip_obs become the agent's
          frozen observation normalization (the threat model's domain is
          [-clip_obs, clip_obs]). Needs pip install 'certrl[sb3]'.
  module  SOURCE = pkg.module:factory or path/to/file.py:factory, a callable returning
          the nn.Module (called with no argument, or with a one-env gymnasium vector env
          when it takes one, as CleanRL's QNetwork(envs)); --state-dict loads weights
          into it, --attr picks a submodule (e.g. actor_mean). The module must be an MLP
          or Nature-CNN chain (certrl network spec); others work in Python only
          (Agent.from_module, bounded with auto_LiRPA).
  onnx    SOURCE = an ONNX network (Gemm/MatMul/Add/Conv/Relu/Tanh/... chain).

The env is not recorded in SB3 / ONNX / PyTorch files: give it with --env (any
registered gymnasium id with a Box observation space, or my_module:MyEnv-v0).
See docs/byo-policy.md."""


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="import an SB3 / PyTorch / ONNX policy as an agent file",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS)
    p.add_argument("source", help="model file (sb3, onnx) or pkg.module:factory (module)")
    p.add_argument("--env", required=True, help="gymnasium env id the policy acts in")
    p.add_argument("--out", required=True, help="agent file to write (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--env-kwargs", type=json_dict, default=None, metavar="JSON",
                   help='keyword arguments for gymnasium.make, e.g. \'{"continuous": true}\'')
    p.add_argument("--vecnormalize", default=None, metavar="PATH",
                   help="sb3: the saved VecNormalize statistics")
    p.add_argument("--kind", choices=("q", "policy"), default="q",
                   help="module / onnx: Q-values (q) or logits / action mean (policy)")
    p.add_argument("--state-dict", default=None, metavar="PATH",
                   help="module: weights (torch.save(net.state_dict(), PATH)) to load")
    p.add_argument("--attr", default=None, metavar="NAME",
                   help="module: use this attribute of the built module (e.g. actor_mean)")
    p.add_argument("--factory-kwargs", type=json_dict, default=None, metavar="JSON",
                   help="module: keyword arguments for the factory")
    p.add_argument("--preprocess", choices=("identity", "pixels"), default="identity",
                   help="module: raw observations as they are (identity) or uint8 / 255 "
                        "(pixels)")


def json_dict(text: str) -> dict:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}; got {text!r}")
    return value


def load_factory(ref: str):
    """The callable named by 'pkg.module:name' or 'path/to/file.py:name' (the current
    folder is importable, as for ``python -c``)."""
    mod_name, sep, attr = ref.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"module SOURCE must be pkg.module:factory or file.py:factory; "
                         f"got {ref!r}")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such Python file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"cannot import {mod_name!r}: {e}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{mod_name} has no attribute {attr!r}")
    return getattr(module, attr)


def build_module(args: argparse.Namespace) -> torch.nn.Module:
    """The user's module: factory (given a 1-env vector env if it takes an argument),
    --state-dict loaded strictly, then --attr."""
    factory = load_factory(args.source)
    kwargs = dict(args.factory_kwargs or {})
    required = [p for p in inspect.signature(factory).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                       p.POSITIONAL_OR_KEYWORD)
                and p.name not in kwargs]
    if required:
        import gymnasium as gym

        from certrl.envs import make_env

        envs = gym.vector.SyncVectorEnv([lambda: make_env(args.env, 0,
                                                          **(args.env_kwargs or {}))])
        try:
            net = factory(envs, **kwargs)
        finally:
            envs.close()
    else:
        net = factory(**kwargs)
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"{args.source} returned a {type(net).__name__}, not an nn.Module")
    if args.state_dict is not None:
        load_weights(net, args.state_dict)
    if args.attr:
        if not isinstance(getattr(net, args.attr, None), torch.nn.Module):
            raise ValueError(f"the module has no submodule {args.attr!r}")
        net = getattr(net, args.attr)
    return net


def load_weights(net: torch.nn.Module, path: str) -> None:
    """``net.load_state_dict(torch.load(path, weights_only=True), strict=True)``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such state-dict file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
        raise ValueError(f"{path}: not a readable torch state_dict: {e}") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state_dict")
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit the module: "
                         f"{' '.join(str(e).split())[:400]}") from None


def build_agent(args: argparse.Namespace):
    """The imported agent (nothing written yet)."""
    if args.format == "sb3":
        from certrl.importers.sb3 import agent_from_sb3

        return agent_from_sb3(args.source, args.env, args.vecnormalize, args.env_kwargs)
    if args.vecnormalize is not None:
        raise ValueError("--vecnormalize is for sb3 imports")
    if args.format == "module":
        from certrl.importers.module import agent_from_module

        return agent_from_module(build_module(args), args.env, args.preprocess, args.kind,
                                 env_kwargs=args.env_kwargs, source=args.source)
    if args.env_kwargs:
        raise ValueError("--env-kwargs is not supported for onnx imports")
    from certrl.onnx_agent import agent_from_onnx

    if not Path(args.source).is_file():
        raise FileNotFoundError(f"{args.source}: no such ONNX file")
    return agent_from_onnx(args.source, args.env, kind=args.kind)


def run(args: argparse.Namespace) -> int:
    from certrl.records import check_writable

    out = check_writable(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"{out} exists: use another --out, or --force to overwrite it")
    agent = build_agent(args)
    from certrl.importers.module import NotSavableError

    try:
        agent.save(out)
    except NotSavableError as e:
        raise ValueError(str(e).replace("certify it in Python", "use it from Python "
                                        "(Agent.from_module)")) from None
    tm = agent.threat_model
    dom = "" if tm.lower is None and tm.upper is None else f", domain [{tm.lower}, {tm.upper}]"
    print(f"imported {args.format} {args.source} -> {out}: {agent.algo} agent for "
          f"{agent.env_id}, preprocessing {agent.preprocessing['kind']}, eps in {tm.space}"
          f"{dom}")
    print(f"next: certrl certify {out} --eps 0.01 --method crown --episodes 5")
    return 0
