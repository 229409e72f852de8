"""Q-network registry: `build_network("impala", (4, 84, 84), 18, head="dueling")`.

Families: `nature` (Mnih et al. 2015), `impala` (Espeholt et al. 2018), `mlp`, `minatar`
(Young & Tian 2019) and any timm model as `timm/<name>`.
"""

from hetero_lr.networks import impala, nature, small  # noqa: F401  (register the families)
from hetero_lr.networks._registry import (
    build_network,
    check_spec,
    is_network,
    list_networks,
    parse_pair,
    register_network,
)
from hetero_lr.networks.heads import QNetwork

__all__ = [
    "QNetwork",
    "build_network",
    "check_spec",
    "is_network",
    "list_networks",
    "parse_pair",
    "register_network",
]
