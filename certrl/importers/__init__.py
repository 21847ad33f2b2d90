"""Importers: policies trained elsewhere as certrl agents (see docs/byo-policy.md).

- :func:`agent_from_sb3` (``Agent.from_sb3``): Stable-Baselines3 DQN / PPO / A2C zips,
  with an optional ``VecNormalize`` file;
- :func:`agent_from_module` (``Agent.from_module``): a plain ``nn.Module`` (CleanRL).
"""

from certrl.importers.module import ExternalNet, NotSavableError, agent_from_module
from certrl.importers.sb3 import agent_from_sb3
from certrl.importers.sb3_format import SB3Policy, read_sb3_zip, read_vecnormalize

__all__ = ["ExternalNet", "NotSavableError", "SB3Policy", "agent_from_module",
           "agent_from_sb3", "read_sb3_zip", "read_vecnormalize"]
