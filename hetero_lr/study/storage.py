"""Where a study lives and how it searches: Optuna storages, samplers, pruners; URL checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna

from hetero_lr.study.spec import StudySpec

ACCEPTED_STORAGES = "a journal-file path, sqlite:///PATH, postgresql://... or mysql://..."


def open_storage(storage: str) -> optuna.storages.BaseStorage | str:
    """A journal-file storage for a path, or the URL itself (RDB, e.g. PostgreSQL)."""
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def check_storage_url(url: str) -> None:
    """Check that an Optuna storage URL names a SQLAlchemy dialect whose driver is installed.

    A value without `://` is a journal-file path and always accepted.

    Raises:
        ValueError: one line naming the URL and what is accepted.
    """
    if "://" not in url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        reason = "not a database URL"
    else:
        try:
            dialect = parsed.get_dialect()
            # The DBAPI module is imported only when an engine is created: do it now.
            (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # SQLAlchemy 2 or 1.4
        except NoSuchModuleError:
            reason = f"unknown scheme {parsed.drivername!r}"
        except ImportError as err:
            module = err.name or str(err)
            reason = f"driver for {parsed.drivername!r} not installed (no module {module!r})"
        else:
            return
    raise ValueError(f"storage {url!r}: {reason}; accepted: {ACCEPTED_STORAGES}")


def check_tracking_uri(uri: str) -> None:
    """Refuse an MLflow file store (a path or `file:` URI).

    Raises:
        ValueError: one line naming the URI and what is accepted.
    """
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        # MLflow >= 3.13 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true
        # (mlflow/mlflow#23634); a database or a server keeps studies working on every 3.x.
        raise ValueError(
            f"tracking URI {uri!r} is a file store; use sqlite:///PATH/mlflow.db, "
            "postgresql://..., or http(s)://HOST:PORT of an mlflow server"
        )


def make_sampler(spec: StudySpec, *, worker: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed, the worker and the study's history.

    Workers get distinct seeds (equal seeds would make parallel workers sample the same
    points), and so does each resumed invocation (`n_existing` trials already in the study;
    the same seed would replay the first invocation's samples). Reproducible only with one
    worker (Optuna FAQ; issues #4412, #3056).
    """
    seed = int(np.random.SeedSequence([spec.seed, worker, n_existing]).generate_state(1)[0])
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid(), seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # `group=True`: baseline trials sample nothing, and pairings may get conditional
    # dimensions; grouped multivariate TPE models each set of co-occurring parameters. Both
    # options are marked experimental, which every worker process would print.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The study's pruner, with guards for noisy RL curves (no pruning before `min_evals`).

    `median` and `hyperband` see one report per evaluation (the run's score at that point);
    `wilcoxon` sees one report per finished run (its final score) and compares trials run by
    run, which `run_seeds` makes paired.
    """
    g = spec.pruning
    if spec.pruner == "median":
        median = optuna.pruners.MedianPruner(
            n_startup_trials=g.startup_trials,
            n_warmup_steps=g.min_evals - 1,  # steps are 0-based evaluation indices
            n_min_trials=g.min_trials,
        )
        return optuna.pruners.PatientPruner(median, patience=g.patience) if g.patience else median
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=g.min_evals, reduction_factor=g.reduction_factor
        )
    if spec.pruner == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=g.p_threshold, n_startup_steps=g.min_evals)
    return optuna.pruners.NopPruner()
