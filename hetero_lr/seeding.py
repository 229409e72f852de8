"""Random streams of a training run: one independent generator per consumer.

A run's seed is split with `numpy.random.SeedSequence` into named streams, so that what one
consumer draws never shifts another: logging a diagnostic, adding an evaluation or changing the
number of evaluation episodes leaves the training trajectory unchanged. Streams are addressed
by a fixed index (a new stream takes a new index), so adding one keeps the others' values.
"""

from __future__ import annotations

import numpy as np

STREAMS = {
    "torch": 0,  # network initialisation (torch's global generator, seeded once at build)
    "env": 1,  # training environments: per-lane seeds, and re-seeds after an inexact resume
    "exploration": 2,  # epsilon-greedy draws while training
    "replay": 3,  # replay sampling for Lookahead and Replicate batches
    "evaluation": 4,  # evaluation environments and their epsilon draws, one child per step
    "diagnostics": 5,  # samples for logged diagnostics (the function gap); never training
}


def stream(seed: int, name: str, *key: int) -> np.random.SeedSequence:
    """The named stream of run `seed`, optionally a child of it (e.g. keyed by agent step)."""
    return np.random.SeedSequence(seed, spawn_key=(STREAMS[name], *key))


def generator(seed: int, name: str) -> np.random.Generator:
    """A NumPy generator on the named stream."""
    return np.random.default_rng(stream(seed, name))


def int_seed(seed: int, name: str, *key: int) -> int:
    """A non-negative 31-bit integer seed from the named stream (for APIs that take an int)."""
    return int(stream(seed, name, *key).generate_state(1, dtype=np.uint32)[0] >> 1)
