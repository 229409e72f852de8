"""Evaluation videos: what the agent sees, as MP4 files (imageio with its bundled ffmpeg).

Frames are the observations themselves, enlarged: an Atari frame stack's newest 84x84
grayscale frame (ale-py's native vector env renders no RGB), a MinAtar state's channels drawn
in one colour each. Vector observations (CartPole) have no picture and are not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# One colour per MinAtar channel (up to 10 channels: Seaquest has 10), on black.
_PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    ],
    dtype=np.uint8,
)  # fmt: skip


def has_pictures(obs_shape: Sequence[int]) -> bool:
    """Whether observations of this shape are images (channel-first, 2-D frames)."""
    return len(obs_shape) == 3


def frame(obs: np.ndarray, *, size: int = 256) -> np.ndarray:
    """One observation `(C, H, W)` as an RGB frame about `size` pixels high (uint8 HxWx3)."""
    if obs.dtype == np.uint8:  # an Atari stack: its newest frame, grayscale
        image = np.repeat(obs[-1][..., None], 3, axis=-1)
    else:  # MinAtar: boolean channels, each in its colour (the last one drawn wins)
        image = np.zeros((*obs.shape[1:], 3), np.uint8)
        for channel in range(obs.shape[0]):
            image[obs[channel].astype(bool)] = _PALETTE[channel % len(_PALETTE)]
    scale = max(1, size // image.shape[0])
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    pad = (-image.shape[0]) % 16, (-image.shape[1]) % 16  # codecs want sizes in macroblocks
    return np.pad(image, ((0, pad[0]), (0, pad[1]), (0, 0)))


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, *, fps: int = 15) -> Path:
    """Write RGB frames as an H.264 MP4 (15 fps: Atari's 60 Hz at frame skip 4).

    Raises:
        ImportError: imageio or its ffmpeg is missing (`pip install -e ".[video]"`).
    """
    try:
        import imageio.v2 as imageio
    except ImportError as err:
        raise ImportError(
            "evaluation videos need imageio and imageio-ffmpeg: pip install -e '.[video]'"
        ) from err
    path = Path(path)
    imageio.mimwrite(path, np.stack(frames), fps=fps, macro_block_size=16)  # ffmpeg, H.264
    return path
