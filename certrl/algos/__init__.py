"""Training algorithms: DQN and PPO (CleanRL-style loops behind small classes)."""

from certrl.algos.dqn import DQN, DQNConfig
from certrl.algos.ppo import PPO, PPOConfig

ALGOS = {"dqn": (DQN, DQNConfig), "ppo": (PPO, PPOConfig)}

__all__ = ["ALGOS", "DQN", "DQNConfig", "PPO", "PPOConfig"]
