"""Metric sinks for training runs: a three-method protocol, console and CSV implementations.

MLflow lives in `hetero_lr.tracking`; `train` only ever sees this protocol.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    """Where a run's parameters and metrics go."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's resolved settings once."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar metrics at an agent step."""

    def rewind(self, step: int) -> None:
        """Forget metrics logged after `step`: a run resumed from there logs them again."""

    def log_file(self, path: Path, folder: str) -> None:
        """Keep a file (e.g. an evaluation video) with the run, under `folder`."""

    def close(self) -> None:
        """Flush and release resources."""


class NullLogger:
    """Drops everything."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass

    def log_file(self, path: Path, folder: str) -> None:
        pass

    def close(self) -> None:
        pass


class CSVLogger:
    """Appends metrics as long-format rows `step,key,value` to `metrics.csv` in a folder.

    Long format keeps the file valid when later rows bring new keys, and appending keeps a
    resumed run's history in one file (`rewind` drops the rows a resumed run logs again). The
    folder is created at the first write, so a run refused before it starts leaves nothing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "metrics.csv"
        self._file: Any = None
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._file = self.path.open("a", newline="")
            self._writer = csv.writer(self._file)
            if new:
                self._writer.writerow(["step", "key", "value"])
        return self._writer

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "params.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["key", "value"])
            writer.writerows(sorted(params.items()))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._open().writerows([step, k, v] for k, v in metrics.items())
        self._file.flush()

    def log_file(self, path: Path, folder: str) -> None:
        (self.folder / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, self.folder / folder / Path(path).name)

    def rewind(self, step: int) -> None:
        self.close()
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= step]
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        tmp.replace(self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


class ConsoleLogger:
    """Prints evaluation metrics (keys under `eval/`) as one line each."""

    def __init__(self, prefix: str = "eval/") -> None:
        self.prefix = prefix

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        shown = {k: v for k, v in metrics.items() if k.startswith(self.prefix)}
        if shown:
            body = "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            print(f"step {step:>9,d}  {body}", flush=True)

    def rewind(self, step: int) -> None:
        pass

    def log_file(self, path: Path, folder: str) -> None:
        pass

    def close(self) -> None:
        pass


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def rewind(self, step: int) -> None:
        for logger in self.loggers:
            logger.rewind(step)

    def log_file(self, path: Path, folder: str) -> None:
        for logger in self.loggers:
            logger.log_file(path, folder)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
