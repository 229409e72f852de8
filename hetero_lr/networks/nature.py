"""Nature DQN encoder (Mnih et al. 2015, Methods: "Model architecture")."""

from __future__ import annotations

from torch import nn

from hetero_lr.networks._registry import register_network


@register_network("nature")
def nature(obs_shape: tuple[int, ...], *, hidden: int = 512) -> nn.Module:
    """Three convolutions (32 8x8/4, 64 4x4/2, 64 3x3/1) and a 512-unit layer.

    Needs image input of at least 36x36 (84x84 in the paper); 10x10 MinAtar frames fail.
    """
    if len(obs_shape) != 3:
        raise ValueError(f"expects (C, H, W) images, got shape {obs_shape}")
    return nn.Sequential(
        nn.Conv2d(obs_shape[0], 32, 8, stride=4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(hidden),
        nn.ReLU(),
    )
