"""Network registry: spec strings -> Q-networks (encoder + head), timm-style.

A family registers an *encoder factory* `fn(obs_shape, **options) -> nn.Module` that maps a
float observation batch `(B, *obs_shape)` to features `(B, F)`. `build_network` adds input
scaling and a Q-head sized by a dummy forward (timm's `num_features` is not always the pooled
width, e.g. mobilenetv3's `head_hidden_size`), which also proves the family accepts the shape.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hetero_lr.networks.heads import HEADS, QNetwork

EncoderFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, EncoderFactory] = {}
TIMM_PREFIX = "timm/"
# Representative timm models listed by `list_networks("timm/*")`; any timm name works.
TIMM_LISTED = (
    "timm/test_resnet",
    "timm/test_efficientnet",
    "timm/test_convnext",
    "timm/test_vit",
    "timm/resnet18",
    "timm/mobilenetv3_small_050",
)


def register_network(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator registering an encoder factory under a spec name.

    Args:
        name: lowercase name without `:` (the pair separator) or the `timm/` prefix.
    """
    if ":" in name or name.startswith(TIMM_PREFIX) or not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"bad network name {name!r}: use lowercase letters, digits and '_'")

    def decorator(fn: EncoderFactory) -> EncoderFactory:
        _REGISTRY[name] = fn
        return fn

    return decorator


def list_networks(pattern: str = "*") -> list[str]:
    """Registered network names matching an fnmatch pattern, plus representative timm ones."""
    names = sorted(_REGISTRY) + list(TIMM_LISTED)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def is_network(spec: str) -> bool:
    """Whether `spec` names a registered family or an existing timm model."""
    if spec.startswith(TIMM_PREFIX):
        import timm

        return timm.is_model(spec.removeprefix(TIMM_PREFIX))
    return spec in _REGISTRY


def check_spec(spec: str) -> None:
    """Raise `ValueError` listing close matches when `spec` names no network."""
    if is_network(spec):
        return
    if spec.startswith(TIMM_PREFIX):
        import timm

        name = spec.removeprefix(TIMM_PREFIX)
        close = [TIMM_PREFIX + m for m in difflib.get_close_matches(name, timm.list_models(), 5)]
    else:
        close = difflib.get_close_matches(spec, list_networks(), 5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ValueError(
        f"unknown network {spec!r}{hint}; known: {', '.join(sorted(_REGISTRY))}, timm/<model>"
    )


def _encoder_factory(spec: str) -> EncoderFactory:
    check_spec(spec)
    if spec.startswith(TIMM_PREFIX):
        from hetero_lr.networks.timm_backbone import timm_encoder

        name = spec.removeprefix(TIMM_PREFIX)
        return lambda obs_shape, **options: timm_encoder(name, obs_shape, **options)
    return _REGISTRY[spec]


def build_network(
    spec: str,
    obs_shape: Sequence[int],
    n_actions: int,
    *,
    head: str = "q",
    num_atoms: int = 51,
    v_min: float = -10.0,
    v_max: float = 10.0,
    **options: Any,
) -> QNetwork:
    """Build a Q-network from a spec string.

    Args:
        spec: `nature`, `impala`, `mlp`, `minatar` or `timm/<timm model name>`.
        obs_shape: one observation's shape, channel-first for images (e.g. `(4, 84, 84)`).
        n_actions: number of discrete actions.
        head: `q` (linear), `dueling`, `c51` (categorical logits) or `dueling_c51`.
        num_atoms: atoms of the categorical support (c51 heads only).
        v_min: lowest atom (c51 heads only).
        v_max: highest atom (c51 heads only).
        **options: family options (e.g. `width` for impala, `hidden` for mlp); None values
            are dropped, as in `timm.create_model`.

    Returns:
        A `QNetwork` mapping raw observations `(B, *obs_shape)` (uint8 frames are scaled to
        [0, 1] inside) to Q-values `(B, n_actions)` or logits `(B, n_actions, num_atoms)`.

    Raises:
        ValueError: unknown spec or head, or a family that cannot take `obs_shape`.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; accepted: {', '.join(HEADS)}")
    if n_actions < 1:
        raise ValueError(f"n_actions must be >= 1, got {n_actions}")
    obs_shape = tuple(int(d) for d in obs_shape)
    factory = _encoder_factory(spec)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        encoder = factory(obs_shape, **options)
        with torch.no_grad():
            num_features = encoder.eval()(torch.zeros(2, *obs_shape)).shape[-1]
        encoder.train()
    except TypeError as err:
        raise ValueError(f"bad options {options} for network {spec!r}: {err}") from None
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"network {spec!r} cannot take observations of shape {obs_shape}: {reason}"
        ) from None
    categorical = head.endswith("c51")
    head_module = HEADS[head](num_features, n_actions, num_atoms if categorical else 1)
    support = torch.linspace(v_min, v_max, num_atoms) if categorical else None
    return QNetwork(encoder, head_module, spec=spec, obs_shape=obs_shape, support=support)


def parse_pair(pair: str, *, check: bool = True) -> tuple[str, str]:
    """Split `ONLINE:TARGET` (e.g. `impala:timm/resnet18`) and, with `check`, check both names.

    Raises:
        ValueError: not exactly one `:`, an empty side, or an unknown network.
    """
    parts = pair.split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(
            f"bad pair {pair!r}: expected ONLINE:TARGET with exactly one ':' and both sides "
            "non-empty, e.g. impala:nature"
        )
    if check:
        for spec in dict.fromkeys(parts):
            check_spec(spec)
    return parts[0], parts[1]
