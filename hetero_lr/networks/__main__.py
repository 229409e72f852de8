"""Print every family's parameter count and forward time: `python -m hetero_lr.networks`."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from hetero_lr.networks import build_network, list_networks

DEFAULT_TIMM = ("test_resnet", "test_efficientnet", "test_vit", "resnet18")


def _forward_ms(net: torch.nn.Module, obs: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        net(obs)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(obs)
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hetero_lr.networks", description=__doc__)
    parser.add_argument("--obs-shape", default="4,84,84", help="observation shape, e.g. 4,84,84")
    parser.add_argument("--actions", type=int, default=18, help="number of actions")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the timed forward")
    parser.add_argument(
        "--timm", nargs="*", default=list(DEFAULT_TIMM), help="timm models to include"
    )
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(d) for d in args.obs_shape.split(","))
    except ValueError:
        parser.error(f"--obs-shape {args.obs_shape!r} is not comma-separated integers")
    specs = list_networks("[!t]*") + [f"timm/{name}" for name in args.timm]
    obs = torch.zeros(args.batch, *shape, dtype=torch.uint8 if len(shape) == 3 else torch.float32)
    print(
        f"obs shape {shape}, {args.actions} actions, forward at batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'network':<28} {'params':>12} {'forward ms':>11}")
    for spec in specs:
        try:
            net = build_network(spec, shape, args.actions).eval()
        except ValueError as err:
            print(f"{spec:<28} {'-':>12} {'-':>11}  {err}")
            continue
        params = sum(p.numel() for p in net.parameters())
        print(f"{spec:<28} {params:>12,} {_forward_ms(net, obs):>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
