"""Small encoders for CPU-scale testbeds: `mlp` (vector input) and `minatar` (10x10xC frames)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from hetero_lr.networks._registry import register_network


@register_network("mlp")
def mlp(obs_shape: tuple[int, ...], *, hidden: Sequence[int] = (128, 128)) -> nn.Module:
    """ReLU multilayer perceptron over the flattened observation."""
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = math.prod(obs_shape)
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


@register_network("minatar")
def minatar(obs_shape: tuple[int, ...], *, channels: int = 16, hidden: int = 128) -> nn.Module:
    """Young & Tian (2019) DQN network: one 3x3 convolution (16) and a 128-unit layer."""
    if len(obs_shape) != 3:
        raise ValueError(f"expects (C, H, W) frames, got shape {obs_shape}")
    return nn.Sequential(
        nn.Conv2d(obs_shape[0], channels, 3, stride=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(hidden),
        nn.ReLU(),
    )
