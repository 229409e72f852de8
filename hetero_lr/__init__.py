"""hetero_lr: Lookahead-Replicate target-network learning across architecture families.

Public API:
    build_network, list_networks, register_network  -- the Q-network registry
    HeteroPair                                       -- the online/target pair
    Replicate, HardCopy, Polyak, TargetUpdate        -- target-update rules
"""

from hetero_lr.networks import build_network, list_networks, register_network
from hetero_lr.pair import HeteroPair
from hetero_lr.updaters import HardCopy, Polyak, Replicate, TargetUpdate

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
