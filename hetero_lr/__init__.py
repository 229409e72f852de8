"""hetero_lr: Lookahead-Replicate target-network learning across architecture families.

Public API:
    build_network, list_networks, register_network  -- the Q-network registry
    HeteroPair, Replicate, HardCopy, Polyak          -- online/target pair and update rules
"""

from hetero_lr.networks import build_network, list_networks, register_network
from hetero_lr.pair import HardCopy, HeteroPair, Polyak, Replicate, TargetUpdate

__all__ = [
    "HardCopy",
    "HeteroPair",
    "Polyak",
    "Replicate",
    "TargetUpdate",
    "build_network",
    "list_networks",
    "register_network",
]
__version__ = "0.1.0"
