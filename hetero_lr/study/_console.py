"""Console lines and clock helpers shared by the study modules; the log file that keeps what
the libraries print."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOG = "hetero_lr"
"""This package's logger: what a stop or a fault could not record goes there (the log file)."""
LOG_FILE = "study.log"
"""The log file in a study's results folder (`quiet_libraries`)."""
# Loggers whose records are for the log file, not the console: Optuna ("Trial 0 failed ...
# Traceback", "There are no complete trials"), MLflow and the database layers under it
# (schema creation, "SQLAlchemy database error" with a traceback), Python warnings.
_LIBRARY_LOGGERS = ("optuna", "mlflow", "alembic", "sqlalchemy", "huey", "py.warnings", LOG)
_NO_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # read by MLflow at each transfer


def short(value: Any) -> str:
    """A setting as lines and titles show it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def say(text: str, prefix: str = "") -> None:
    """Print a time-stamped progress line."""
    print(f"{time.strftime('%H:%M:%S')} {prefix}{text}", flush=True)


def worker_prefix(worker: int, workers: int) -> str:
    """`[wN] ` before a worker's lines when several workers share the console."""
    return f"[w{worker}] " if workers > 1 else ""


def duration(seconds: float) -> str:
    """Seconds as `42s`, `17min` or `2.5h`."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def now_ms() -> int:
    """Wall-clock time in milliseconds (MLflow metric timestamps)."""
    return int(time.time() * 1000)


class _LogFile(logging.FileHandler):
    """A log file that drops a record it cannot write (a full disk) instead of printing
    logging's own traceback on the console."""

    def handleError(self, record: logging.LogRecord) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Close the file; what its buffer still holds is dropped if the disk is full."""
        # The buffer's flush may fail; the file itself is closed all the same.
        with contextlib.suppress(OSError):
            super().close()


@contextlib.contextmanager
def quiet_libraries(folder: str | Path) -> Iterator[Path]:
    """While inside, the libraries' logs, warnings and progress bars go to `FOLDER/study.log`
    (created on the first record), not to the console; an error in a thread other than a
    fault prints one line naming the file. Everything comes back as it was after.

    A study's console then shows its own lines only: a stop or a fault reads as one line per
    trial, not as the tracebacks Optuna and MLflow log for what they take for a failure.
    """
    path = Path(folder) / LOG_FILE
    handler = _LogFile(path, delay=True, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s")
    )
    saved = [_swap(logging.getLogger(name), handler) for name in _LIBRARY_LOGGERS]
    excepthook, progress = threading.excepthook, os.environ.get(_NO_PROGRESS_BAR)
    logging.captureWarnings(True)  # warnings to the "py.warnings" logger
    threading.excepthook = _thread_error(path)
    os.environ[_NO_PROGRESS_BAR] = "false"  # spawned workers inherit it
    try:
        yield path
    finally:
        logging.captureWarnings(False)  # `warnings.showwarning` as it was
        threading.excepthook = excepthook
        for logger, state in saved:
            logger.handlers, logger.propagate, logger.level = state
        if progress is None:
            os.environ.pop(_NO_PROGRESS_BAR, None)
        else:
            os.environ[_NO_PROGRESS_BAR] = progress
        handler.close()


def _swap(
    logger: logging.Logger, handler: logging.Handler
) -> tuple[logging.Logger, tuple[list[logging.Handler], bool, int]]:
    """Point `logger` at `handler` only; returns what to restore."""
    state = (logger.handlers, logger.propagate, logger.level)
    logger.handlers, logger.propagate = [handler], False  # levels stay the libraries' own
    return logger, state


def _thread_error(path: Path) -> Callable[[threading.ExceptHookArgs], None]:
    """A `threading.excepthook` that logs the error; one console line unless it is a fault
    (Optuna's heartbeat thread meeting an outage: the main thread meets it too and says so)."""
    from hetero_lr.faults import halted

    def hook(args: threading.ExceptHookArgs) -> None:
        logging.getLogger(LOG).error(
            "error in thread %s", getattr(args.thread, "name", "?"),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )  # fmt: skip
        if args.exc_value is None or halted(args.exc_value) is None:
            name = getattr(args.thread, "name", "?")
            print(
                f"error in thread {name}: {args.exc_type.__name__}: {args.exc_value} "
                f"(details in {path})",
                file=sys.stderr,
                flush=True,
            )

    return hook
