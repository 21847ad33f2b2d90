"""Robust training losses plugged into DQN / PPO through ``RobustLoss``."""

from certrl.losses.base import RobustLoss

__all__ = ["RobustLoss"]
