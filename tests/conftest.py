"""Shared test settings."""

from __future__ import annotations

import pytest
import torch

# The suite's networks are tiny: intra-op threads only add synchronisation, which on a loaded
# 2-core machine slows a short run by 10-30x. One thread keeps the suite fast and predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory):
    """An MLflow database with its schema (creating one takes seconds; copying it does not)."""
    from hetero_lr.tracking import Tracker

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{path}").prepare()
    return path
