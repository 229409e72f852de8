"""Shared test settings."""

from __future__ import annotations

import torch

# The suite's networks are tiny: intra-op threads only add synchronisation, which on a loaded
# 2-core machine slows a short run by 10-30x. One thread keeps the suite fast and predictable.
torch.set_num_threads(1)
