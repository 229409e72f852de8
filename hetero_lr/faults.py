"""Faults that stop a study without losing its work: a full disk, a store out of reach too long.

Both are raised as `Halted`, a `KeyboardInterrupt` like a stop signal, so every layer that ends
its runs on Ctrl-C ends them here too and the trial in progress is queued again. Unlike a stop
signal, a fault does not checkpoint the run it stops (it may be mid-step, and the disk may be
full): the run's last good checkpoint stays and the next start resumes from it. The command
exits with `EXIT_CODE` after one line saying what is wrong and what to do.

A full disk is recognised by its errno (`ENOSPC`, `EDQUOT`) or by the text the stores give it
(SQLite's "database or disk is full", PostgreSQL's "could not extend file"): it is never
retried as an outage, since waiting does not free space.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

EXIT_CODE = 75
"""Exit code of a command stopped by a fault: sysexits.h's EX_TEMPFAIL ("a temporary failure
... the user is invited to retry the operation later")."""
OUTAGE_PATIENCE = 300.0
"""Seconds a call keeps retrying while the tracking store or the Optuna storage cannot be
reached (the retry window)."""
PATIENCE_ENV = "HETERO_LR_OUTAGE_PATIENCE"
"""Environment variable that replaces `OUTAGE_PATIENCE`, in seconds: longer for a planned
database maintenance, shorter for tests."""

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = (
    "database or disk is full",  # SQLite's SQLITE_FULL
    "No space left on device",  # strerror(ENOSPC), also inside PostgreSQL's messages
    "Disk quota exceeded",  # strerror(EDQUOT)
    "could not extend file",  # PostgreSQL, a table that cannot grow
)


class Halted(KeyboardInterrupt):
    """A fault that stops the work; the same command resumes it once the fault is fixed.

    Args:
        problem: what is wrong, naming the folder or the store (one line).
        fix: what the user does before running the command again.
        short: a few words for the line of each trial it stopped.
    """

    trial_stopped = False
    """Set once the trial it stopped was queued again and ended (`recovery.stop_trial`)."""

    def __init__(self, problem: str, fix: str, short: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix, self.short = problem, fix, short


class DiskFull(Halted):
    """No space left where something had to be written (`folder`)."""

    def __init__(self, folder: str, what: str) -> None:
        super().__init__(f"no space left in {folder} ({what})", "free space there", "disk full")
        self.folder = folder


class Unreachable(Halted):
    """A store (MLflow tracking, Optuna storage) did not answer for its whole retry window."""

    def __init__(self, store: str, seconds: float, reason: str) -> None:
        super().__init__(
            f"{store} unreachable for {seconds:.0f}s ({reason})",
            "once it answers again",
            "store unreachable",
        )


def outage_patience() -> float:
    """The retry window for an outage: `HETERO_LR_OUTAGE_PATIENCE` if set, else 300 s."""
    value = os.environ.get(PATIENCE_ENV)
    try:
        return float(value) if value else OUTAGE_PATIENCE
    except ValueError:
        raise ValueError(f"{PATIENCE_ENV}={value!r} is not a number of seconds") from None


def chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and the errors it came from (`__cause__`, else `__context__`), nearest first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def halted(err: BaseException) -> Halted | None:
    """The fault behind `err`: the first one in its chain, if any (libraries may wrap or replace
    it: Optuna turns an error raised while it records a trial's end into an `AssertionError`;
    and cleaning up after a fault meets it again)."""
    faults = [e for e in chain(err) if isinstance(e, Halted)]
    return faults[-1] if faults else None


def is_disk_full(err: BaseException) -> bool:
    """Whether `err`, or an error it came from, says the disk (or quota) is full."""
    for e in chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(text in str(e) for text in _FULL_TEXTS):
            return True
    return False


def full_folder(err: BaseException, store: str | None = None) -> str:
    """Where the write behind a disk-full `err` went: the folder of the file it names, else of
    the SQLite database `store` (a URI), else the store's host (never its credentials)."""
    for e in chain(err):
        name = getattr(e, "filename", None)
        if isinstance(e, OSError) and isinstance(name, str | bytes | Path) and name:
            path = Path(name.decode() if isinstance(name, bytes) else name)
            return str(path if path.is_dir() else path.parent)
    return store_place(store) if store else "an unknown folder"


def store_place(uri: str) -> str:
    """Where a store keeps its data, for a message: a SQLite file's folder, a journal file's
    folder, or the server (`safe_uri`)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent)
    if "://" not in uri:
        return str(Path(uri).parent)
    return f"the store of {safe_uri(uri)}"


def safe_uri(uri: str) -> str:
    """A store's URI fit for a message: a file path or `sqlite:///` URI as it is, a server's as
    `scheme://host:port` (no user, password, database or query)."""
    if "://" not in uri or uri.startswith("sqlite:"):
        return uri
    parts = urlsplit(uri)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: leave it out
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"
