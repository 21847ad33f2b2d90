"""certrl: certify, train and tabulate robust deep RL policies."""

__version__ = "0.1.0"

from certrl.agent import Agent, load  # noqa: E402
from certrl.threat import ThreatModel  # noqa: E402

__all__ = ["Agent", "ThreatModel", "load", "__version__"]
