"""Network registry: every family builds for its natural shapes with every head."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from hetero_lr.networks import _registry, build_network, is_network, list_networks, register_network

ATARI, MINATAR, VECTOR = (4, 84, 84), (4, 10, 10), (6,)
# (spec, obs shape, small options): natural shapes of each family.
CASES = [
    ("nature", ATARI, {"hidden": 32}),
    ("impala", ATARI, {"width": 0.5, "hidden": 32}),
    ("impala", MINATAR, {"width": 0.5, "hidden": 32}),
    ("minatar", MINATAR, {}),
    ("mlp", VECTOR, {"hidden": (16, 16)}),
    ("timm/test_resnet", MINATAR, {}),
    ("timm/test_efficientnet", ATARI, {}),
    ("timm/test_vit", ATARI, {}),
]
HEADS = ["q", "dueling", "c51", "dueling_c51"]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize(("spec", "shape", "options"), CASES, ids=lambda c: str(c))
def test_output_shape_and_gradients(spec, shape, options, head):
    torch.manual_seed(0)
    net = build_network(spec, shape, 5, head=head, num_atoms=11, **options)
    obs = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    if len(shape) == 1:
        obs = torch.randn(3, *shape)
    out = net(obs)
    expected = (3, 5, 11) if head.endswith("c51") else (3, 5)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    # `is None`, not zero: timm zero-initialises some residual branches (zero_init_last).
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert net.head.parameters().__next__().grad.any()


def test_categorical_support_buffer():
    net = build_network("mlp", VECTOR, 3, head="c51", num_atoms=5, v_min=-2, v_max=2)
    assert torch.equal(net.support, torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    assert build_network("mlp", VECTOR, 3).support is None


def test_uint8_frames_are_scaled_inside():
    net = build_network("minatar", MINATAR, 4)
    frames = torch.randint(0, 256, (2, *MINATAR), dtype=torch.uint8)
    assert torch.allclose(net(frames), net(frames.float() / 255))
    binary = torch.rand(2, *MINATAR) > 0.5  # MinAtar frames are bool
    assert torch.allclose(net(binary), net(binary.float()))


def test_vit_gets_a_patch_size_that_tiles_the_frame():
    net = build_network("timm/test_vit", ATARI, 4)
    patch_embed = net.encoder.patch_embed
    assert 84 % patch_embed.patch_size[0] == 0
    assert tuple(patch_embed.img_size) == (84, 84)


def test_shape_a_family_cannot_take_names_spec_shape_and_reason():
    match = r"'nature' cannot take observations of shape \(4, 10, 10\)"
    with pytest.raises(ValueError, match=match):
        build_network("nature", MINATAR, 4)
    with pytest.raises(ValueError, match="expects"):
        build_network("minatar", VECTOR, 4)


def test_unknown_names_list_close_matches():
    with pytest.raises(ValueError, match="close matches: nature"):
        build_network("natur", ATARI, 4)
    with pytest.raises(ValueError, match="timm/resnet18"):
        build_network("timm/resnet19", ATARI, 4)
    with pytest.raises(ValueError, match="accepted: q, dueling, c51"):
        build_network("mlp", VECTOR, 4, head="quantile")
    with pytest.raises(ValueError, match="bad options"):
        build_network("impala", ATARI, 4, depth=3)


def test_register_and_list(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @register_network("tiny_linear")
    def tiny_linear(obs_shape):
        return nn.Sequential(nn.Flatten(), nn.Linear(obs_shape[0], 3))

    assert "tiny_linear" in list_networks("tiny*")
    assert build_network("tiny_linear", VECTOR, 2)(torch.zeros(1, 6)).shape == (1, 2)
    assert is_network("timm/resnet18") and not is_network("timm/nope")
    assert list_networks("timm/*") and all(n.startswith("timm/") for n in list_networks("timm/*"))
    for bad in ("a:b", "timm/x", "Caps"):
        with pytest.raises(ValueError, match="bad network name"):
            register_network(bad)


def test_networks_cli_prints_every_family():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hetero_lr.networks",
            "--obs-shape",
            "4,10,10",
            "--actions",
            "3",
            "--batch",
            "4",
            "--timm",
            "test_resnet",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    for name in ("nature", "impala", "minatar", "timm/test_resnet"):
        assert name in out
    assert "cannot take" in out  # nature on 10x10
