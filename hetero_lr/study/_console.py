"""Console lines and clock helpers shared by the study modules."""

from __future__ import annotations

import time


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
