"""What every importer needs: the env's spaces, preprocessing and its threat model.

An imported agent is an ordinary ``certrl.Agent``: network input = ``preprocess(raw obs)``
and the threat model's eps is measured in that space (see docs/byo-policy.md):

- ``identity``: raw observations (eps in raw-observation units, no domain clip);
- ``pixels``: uint8 images / scale (eps in [0,1]-scaled pixels, domain [0, 1]);
- ``normalize``: (obs - mean) / sqrt(var + eps) with frozen statistics (eps in
  normalized units); with a clip c (SB3 ``VecNormalize(clip_obs=c)``) the network input
  is clamped to [-c, c] and the threat model's domain is [-c, c].
"""

from __future__ import annotations

import numpy as np

from certrl.envs import RunningMeanStd, action_space_info, make_env
from certrl.threat import SPACE_NORMALIZED, SPACE_PIXELS, SPACE_RAW, ThreatModel


def env_spaces(env_id: str, env_kwargs: dict | None = None) -> tuple[tuple[int, ...], str, dict]:
    """(observation shape, observation dtype name, action-space dict) of ``env_id``."""
    env = make_env(env_id, 0, **(env_kwargs or {}))
    try:
        space = env.observation_space
        return tuple(int(s) for s in space.shape), str(space.dtype), action_space_info(
            env.action_space)
    finally:
        env.close()


def threat_for(preprocessing: dict, obs_rms: RunningMeanStd | None) -> ThreatModel:
    """The threat model (eps 0, l_inf) whose space and domain match the preprocessing."""
    kind = preprocessing["kind"]
    if kind == "pixels":
        return ThreatModel(space=SPACE_PIXELS, lower=0.0, upper=1.0)
    if kind == "normalize":
        clip = None if obs_rms is None else obs_rms.clip
        return ThreatModel(space=SPACE_NORMALIZED, lower=None if clip is None else -clip,
                           upper=clip)
    return ThreatModel(space=SPACE_RAW)


def frozen_rms(mean, var, obs_shape: tuple[int, ...], epsilon: float = 1e-8,
               clip: float | None = None, count: float = 1.0) -> RunningMeanStd:
    """A frozen ``RunningMeanStd`` with the given statistics (checked against obs_shape)."""
    rms = RunningMeanStd(tuple(obs_shape), epsilon=epsilon, clip=clip)
    rms.load_state_dict({"mean": np.asarray(mean, dtype=np.float64).tolist(),
                         "var": np.asarray(var, dtype=np.float64).tolist(),
                         "count": float(count), "epsilon": float(epsilon), "clip": clip})
    rms.freeze()
    return rms


def check_match(what: str, imported, env, env_id: str) -> None:
    """ValueError when the imported policy's ``what`` differs from the env's."""
    if imported != env:
        raise ValueError(f"the policy's {what} {imported} does not match env {env_id!r}'s "
                         f"{env} (wrong --env, or missing --env-kwargs?)")
