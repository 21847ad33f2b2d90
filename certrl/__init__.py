"""certrl: certify, train and tabulate robust deep RL policies."""

__version__ = "0.1.0"
