"""Robust training losses plugged into DQN / PPO through ``RobustLoss``.

DQN: ``sa`` (SA-DQN), ``radial`` (RADIAL-DQN), ``wocar`` (WocaR-DQN), ``car``
(CAR-DQN, IBP or PGD), ``sortnet`` (hinge for a Lipschitz Q-network). PPO: ``sa``,
``radial``, ``wocar`` (the reference's worst-attack critic), ``car``.
``make_loss(algo, name, **params)`` builds one from flat parameters;
``loss_from_config(d)`` rebuilds one from a checkpoint's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from certrl.losses.base import RobustLoss, TrainContext
from certrl.losses.car import CARConfig, CARDQNLoss, CARPPOConfig, CARPPOLoss, soft_weights
from certrl.losses.common import ScheduledLoss, SolverConfig, build_config
from certrl.losses.noise import NoiseConfig, NoiseDQNLoss, NoisePPOLoss
from certrl.losses.radial import RadialConfig, RadialDQNLoss, RadialPPOLoss
from certrl.losses.sa import SAConfig, SADQNLoss, SAPPOConfig, SAPPOLoss
from certrl.losses.schedule import EpsSchedule
from certrl.losses.sortnet import SortNetConfig, SortNetLoss, sortnet_q_spec
from certrl.losses.wocar import WocarConfig, WocarDQNLoss, WocarPPOConfig, WocarPPOLoss

LOSSES: dict[str, dict[str, type[ScheduledLoss]]] = {
    "dqn": {"sa": SADQNLoss, "radial": RadialDQNLoss, "wocar": WocarDQNLoss, "car": CARDQNLoss,
            "sortnet": SortNetLoss, "noise": NoiseDQNLoss},
    "ppo": {"sa": SAPPOLoss, "radial": RadialPPOLoss, "wocar": WocarPPOLoss, "car": CARPPOLoss,
            "noise": NoisePPOLoss},
}
# Fields added after checkpoints were shipped: the value that keeps an older stored config's
# meaning when it lacks the field (RADIAL: linear kappa, full-Q bounds; WocaR: no bound
# regression, Q_w stepped every update and started from Q; its old joint optimizer and its
# attack set at s' with the training eps are not reproducible).
LEGACY_DEFAULTS: dict[type, dict[str, Any]] = {
    RadialConfig: {"constant_kappa": False, "dueling_bounds": "full"},
    WocarConfig: {"kappa_end": 1.0, "worst_every": 1, "worst_lr": None,
                  "attack_set_eps": 1e-3, "attack_set_fraction": 0.255, "worst_init": "q",
                  "worse_bound": True},
    # robust PPO before the references' forms (session 6): CAR-PPO replaced the clean
    # surrogate with reg 1 and the clean ratio; SA-PPO detached sigma
    CARPPOConfig: {"reg": 1.0, "add_clean_loss": False, "ratio": "clean"},
    SAPPOConfig: {"detach_sigma": True},
}
LOSS_NAMES = ("vanilla", "sa", "radial", "wocar", "car", "sortnet", "noise")
_SOLVER_KEYS = {"solver": "kind", "pgd_steps": "pgd_steps", "pgd_step_size": "pgd_step_size"}
_SCHEDULE_KEYS = {"warmup", "ramp", "mid", "power"}


def make_loss(algo: str, name: str, **params: Any) -> RobustLoss | None:
    """Build loss ``name`` for ``algo`` ('dqn' / 'ppo'); None for 'vanilla'.

    ``params`` are the config fields (kappa, lam, reg, c, kappa_end, worst_weight, ...) plus
    ``solver`` ('ibp' | 'crown-ibp' | 'pgd'), ``pgd_steps``, ``pgd_step_size`` and the
    schedule fractions ``warmup``, ``ramp``, ``mid``, ``power``. None values are ignored.
    """
    if name == "vanilla":
        return None
    table = LOSSES.get(algo)
    if table is None:
        raise ValueError(f"unknown algo {algo!r}; use 'dqn' or 'ppo'")
    if name not in table:
        raise ValueError(f"loss {name!r} is not available for {algo}; "
                         f"use one of vanilla, {', '.join(table)}")
    cls = table[name]
    base = cls.config_cls()
    solver = dataclasses.asdict(base.solver)
    schedule = dataclasses.asdict(base.schedule)
    fields: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if k in _SOLVER_KEYS:
            solver[_SOLVER_KEYS[k]] = v
        elif k in _SCHEDULE_KEYS:
            schedule[k] = v
        else:
            fields[k] = v
    cfg = build_config(cls.config_cls, {**fields, "solver": solver, "schedule": schedule})
    return cls(cfg)


def loss_from_config(d: dict | None) -> RobustLoss | None:
    """Rebuild a loss from ``loss.config()`` (as stored in a checkpoint); None -> None."""
    if d is None or d.get("name", "vanilla") == "vanilla":
        return None
    d = dict(d)
    name, algo = d.pop("name"), d.pop("algo", "dqn")
    cls = LOSSES.get(algo, {}).get(name)
    if cls is None:
        raise ValueError(f"unknown robust loss {name!r} for {algo!r}")
    legacy = {k: v for k, v in LEGACY_DEFAULTS.get(cls.config_cls, {}).items() if k not in d}
    loss = cls(build_config(cls.config_cls, {**d, **legacy}))
    loss.legacy_fields = tuple(legacy)
    return loss


__all__ = [
    "CARConfig", "CARDQNLoss", "CARPPOConfig", "CARPPOLoss", "EpsSchedule", "LOSSES",
    "LOSS_NAMES", "NoiseConfig", "NoiseDQNLoss", "NoisePPOLoss", "RadialConfig",
    "RadialDQNLoss", "RadialPPOLoss", "RobustLoss", "SAConfig",
    "SADQNLoss", "SAPPOConfig", "SAPPOLoss", "ScheduledLoss", "SolverConfig", "SortNetConfig",
    "SortNetLoss", "TrainContext", "WocarConfig", "WocarDQNLoss", "WocarPPOConfig", "WocarPPOLoss",
    "loss_from_config", "make_loss", "soft_weights", "sortnet_q_spec",
]
