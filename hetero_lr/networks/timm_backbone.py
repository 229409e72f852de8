"""Any timm model as a Q-network encoder: `timm/<model name>`.

Built with `pretrained=False` (nothing is downloaded at run time), `in_chans` from the
observation and `num_classes=0` so the model returns pooled features.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _patch_size_for(height: int, width: int, default: int) -> int:
    """Largest patch size <= `default` that tiles the image exactly."""
    for size in range(min(default, height, width), 0, -1):
        if height % size == 0 and width % size == 0:
            return size
    return 1


def timm_encoder(name: str, obs_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """Create timm model `name` for channel-first images of `obs_shape`.

    Patch-embedding models (ViT family) are rebuilt for the observation size: `img_size` is set
    to the frame size and `patch_size` to the largest divisor of it not above the model's own
    (84 -> 14 for a 16-pixel patch), since `img_size=84` alone would silently drop border pixels.
    Explicit `img_size` / `patch_size` options win.
    """
    import timm

    if len(obs_shape) != 3:
        raise ValueError(f"timm models expect (C, H, W) images, got shape {obs_shape}")
    in_chans, height, width = obs_shape
    kwargs = {"pretrained": False, "in_chans": in_chans, "num_classes": 0, **options}
    model = timm.create_model(name, **kwargs)
    patch_embed = getattr(model, "patch_embed", None)
    patch = getattr(patch_embed, "patch_size", None)
    if patch is not None and not ({"img_size", "patch_size"} & options.keys()):
        default = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        patch_size = _patch_size_for(height, width, default)
        kwargs |= {"img_size": (height, width), "patch_size": patch_size}
        model = timm.create_model(name, **kwargs)
    return model
