"""IMPALA ResNet encoder (Espeholt et al. 2018, Fig. 3: the 15-layer "deep" network)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from hetero_lr.networks._registry import register_network


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


def _conv_sequence(in_channels: int, out_channels: int) -> nn.Sequential:
    # conv -> 3x3/2 max-pool -> two residual blocks (Espeholt et al. 2018, Fig. 3).
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        _ResidualBlock(out_channels),
        _ResidualBlock(out_channels),
    )


@register_network("impala")
def impala(
    obs_shape: tuple[int, ...],
    *,
    width: float = 1.0,
    channels: tuple[int, ...] = (16, 32, 32),
    hidden: int = 256,
) -> nn.Module:
    """Three conv sequences (16, 32, 32 channels x `width`) and a 256-unit layer.

    `width=4` is the BBF-sized network (Schwarzer et al. 2023). Takes any image of 8x8 or more.
    """
    if len(obs_shape) != 3:
        raise ValueError(f"expects (C, H, W) images, got shape {obs_shape}")
    layers: list[nn.Module] = []
    in_channels = obs_shape[0]
    for c in channels:
        out_channels = max(1, round(c * width))
        layers.append(_conv_sequence(in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU())
