"""certrl: certify, train and tabulate robust deep RL policies."""

from certrl.agent import Agent, load
from certrl.io import CERTRL_VERSION as __version__
from certrl.threat import ThreatModel

__all__ = ["Agent", "ThreatModel", "load", "__version__"]
