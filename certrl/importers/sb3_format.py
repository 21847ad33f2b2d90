"""Read a Stable-Baselines3 model zip into a plain description (no SB3 objects).

The zip (``model.save(path)``) holds ``data`` (JSON: hyperparameters; spaces and classes
cloudpickled under ":serialized:" with readable fields beside them), ``policy.pth`` (the
policy's state_dict) and ``_stable_baselines3_version``. With stable_baselines3
installed its own reader (``load_from_zip_file``) deserializes the file; without it the
JSON's readable fields and ``policy.pth`` (``torch.load(weights_only=True)``) suffice.
Either way the result is an :class:`SB3Policy`; the architecture is then read off the
state_dict keys (``certrl.importers.sb3``).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

ALGOS = ("dqn", "ppo", "a2c")
_OTHER = {"sac": "SAC", "td3": "TD3", "ddpg": "DDPG", "her": "HER"}


@dataclass
class SB3Policy:
    """What certrl needs from an SB3 model file."""

    algo: str  # "dqn", "ppo" or "a2c"
    policy_class: str
    activation: str  # torch activation class name, e.g. "ReLU", "Tanh"
    normalize_images: bool
    squash_output: bool
    use_sde: bool
    obs_shape: tuple[int, ...]
    obs_dtype: str
    action_kind: str  # "discrete" or "continuous"
    action_n_or_shape: int | tuple[int, ...]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    sb3_version: str = "?"


def read_sb3_zip(path: str | Path) -> SB3Policy:
    """The :class:`SB3Policy` of an SB3 zip (FileNotFoundError / ValueError if unusable)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SB3 model file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "data" not in names or "policy.pth" not in names:
                raise ValueError(f"{path}: not a Stable-Baselines3 model zip (needs 'data' and "
                                 f"'policy.pth'; has {sorted(names)})")
            raw = json.loads(zf.read("data"))
            version = zf.read("_stable_baselines3_version").decode().strip() \
                if "_stable_baselines3_version" in names else "?"
            sd = torch.load(io.BytesIO(zf.read("policy.pth")), map_location="cpu",
                            weights_only=True)
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a Stable-Baselines3 model zip: {e}") from None
    desc = _from_json(raw, path)
    desc.state_dict, desc.sb3_version = dict(sd), version
    try:
        import stable_baselines3  # noqa: F401  (optional: certrl[sb3])
    except ImportError:
        return desc
    return _refine_with_sb3(desc, path)


def _algo(raw: dict, module: str, path: Path) -> str:
    """The algorithm from the policy class's module and the hyperparameters saved."""
    for key, name in _OTHER.items():
        if f".{key}." in module:
            raise ValueError(f"{path}: SB3 {name} models are not supported; certrl imports "
                             "DQN, PPO and A2C")
    if module.endswith("dqn.policies"):
        return "dqn"
    if "clip_range" in raw:
        return "ppo"
    if "gae_lambda" in raw:
        return "a2c"
    raise ValueError(f"{path}: cannot tell the SB3 algorithm (policy module {module!r}); "
                     "certrl imports DQN, PPO and A2C")


def _class_name(text) -> str:
    """'ReLU' from "<class 'torch.nn.modules.activation.ReLU'>"."""
    m = re.search(r"\.?(\w+)'>", str(text))
    return m.group(1) if m else str(text)


def _from_json(raw: dict, path: Path) -> SB3Policy:
    """The description from the ``data`` JSON's readable fields."""
    try:
        pc = raw["policy_class"]
        module = pc.get("__module__", "")
        init = str(pc.get("__init__", ""))
        cls = re.search(r"function (\w+)\.__init__", init)
        algo = _algo(raw, module, path)
        kw = raw.get("policy_kwargs") or {}
        act = kw.get("activation_fn", "ReLU" if algo == "dqn" else "Tanh")
        obs, aspace = raw["observation_space"], raw["action_space"]
        if "Box" not in obs.get(":type:", ""):
            raise ValueError(f"{path}: observation space {obs.get(':type:')} is not a Box")
        if "Discrete" in aspace.get(":type:", ""):
            if str(aspace.get("start", "0")) not in ("0", "[0]"):
                raise ValueError(f"{path}: Discrete action space with start != 0")
            kind, nshape = "discrete", int(aspace["n"])
        elif "Box" in aspace.get(":type:", ""):
            kind, nshape = "continuous", tuple(int(v) for v in aspace["_shape"])
        else:
            raise ValueError(f"{path}: action space {aspace.get(':type:')} is neither Discrete "
                             "nor Box")
        return SB3Policy(
            algo=algo, policy_class=cls.group(1) if cls else "?", activation=_class_name(act),
            normalize_images=bool(kw.get("normalize_images", True)),
            squash_output=bool(kw.get("squash_output", False)),
            use_sde=bool(raw.get("use_sde", False)),
            obs_shape=tuple(int(v) for v in obs["_shape"]), obs_dtype=str(obs["dtype"]),
            action_kind=kind, action_n_or_shape=nshape, state_dict={})
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: unexpected SB3 'data' contents ({e!r})") from None


def _refine_with_sb3(desc: SB3Policy, path: Path) -> SB3Policy:
    """The same fields read by stable_baselines3's own loader (deserialized objects)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    data, params, _ = load_from_zip_file(path, device="cpu", print_system_info=False)
    kw = data.get("policy_kwargs") or {}
    act = kw.get("activation_fn")
    if act is not None:
        desc.activation = act.__name__
    desc.policy_class = data["policy_class"].__name__
    desc.normalize_images = bool(kw.get("normalize_images", True))
    desc.squash_output = bool(kw.get("squash_output", False))
    desc.use_sde = bool(data.get("use_sde", False))
    desc.obs_shape = tuple(int(s) for s in data["observation_space"].shape)
    desc.obs_dtype = str(data["observation_space"].dtype)
    desc.state_dict = dict(params["policy"])
    return desc


def read_vecnormalize(path: str | Path) -> dict:
    """Observation statistics of a saved SB3 ``VecNormalize`` (``venv.save(path)``):
    {"mean", "var", "count", "epsilon", "clip_obs"}, or None when it has ``norm_obs=False``.

    The file is a pickle of SB3's VecNormalize object, so reading it needs
    stable_baselines3 and, like SB3 itself, runs code from the file: load only files you
    trust."""
    import pickle

    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        raise ValueError("reading a VecNormalize file needs stable-baselines3: pip install "
                         "'certrl[sb3]'") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VecNormalize file")
    try:
        with open(path, "rb") as f:
            vn = pickle.load(f)  # noqa: S301 - the user's own VecNormalize file
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
        raise ValueError(f"{path}: not a saved VecNormalize: {e}") from None
    if not all(hasattr(vn, a) for a in ("obs_rms", "clip_obs", "epsilon", "norm_obs")):
        raise ValueError(f"{path}: not a saved VecNormalize ({type(vn).__name__})")
    if not vn.norm_obs:
        return None
    if isinstance(vn.obs_rms, dict):
        raise ValueError(f"{path}: VecNormalize of dict observations is not supported")
    rms = vn.obs_rms
    return {"mean": rms.mean, "var": rms.var, "count": float(rms.count),
            "epsilon": float(vn.epsilon), "clip_obs": float(vn.clip_obs)}
