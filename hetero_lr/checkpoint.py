"""Checkpoint files that load without running code, are verified, and are kept two deep.

- **Safe to load.** A checkpoint holds tensors, numbers, strings and containers only and is read
  with `torch.load(..., weights_only=True)`: a file that would need anything else unpickled (an
  older version's checkpoint, or one planted in a shared folder) is refused, never executed.
- **Verified.** `save` records the sha256 of what it wrote in `PATH.sha256` (lines
  `HASH  NAME`); `load` takes a file only when its sha256 is one recorded there, so a truncated
  copy or a bad disk is caught before `torch.load` sees it.
- **Two deep.** `save` moves the previous file, if it is good, to `PATH.prev` before the new one
  takes its name, and `load` falls back to it when the latest is damaged.
- **Crash-safe.** The new file is written aside (`PATH.tmp`, flushed to disk), the record lists
  both the new and the kept hash before any file moves, then two renames follow: killed at any
  point, `save` leaves at least one good file (the previous one until the last rename).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

PREVIOUS, RECORD, PARTIAL = ".prev", ".sha256", ".tmp"
"""Suffixes added to a checkpoint's name: the kept previous file, the hash record, a write in
progress. None ends in `.pt`, so a glob for checkpoints finds only the latest files."""


class CheckpointError(ValueError):
    """Checkpoint files exist but none can be used (damaged, unverified or unsafe); the message
    is one line naming each file and what is wrong with it."""


@dataclass(frozen=True)
class Loaded:
    """What `load` found: the state and the file it came from."""

    state: dict[str, Any]
    path: Path
    fault: str | None
    """Why the newer file was passed over (one line), None when the latest was good."""

    @property
    def previous(self) -> bool:
        """Whether the state came from the previous checkpoint, not the latest."""
        return self.path.name.endswith(PREVIOUS)


def files(path: str | Path) -> list[Path]:
    """Every file `save` may leave for `path`: latest, previous, record, writes in progress."""
    path = Path(path)
    return [_sibling(path, s) for s in ("", PREVIOUS, RECORD, PARTIAL, RECORD + PARTIAL)]


def exists(path: str | Path) -> bool:
    """Whether there is a checkpoint (latest or previous) to try at `path`."""
    return Path(path).exists() or _sibling(Path(path), PREVIOUS).exists()


def save(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path`, keep the previous good file as `PATH.prev`, record both hashes.

    Args:
        state: tensors, numbers, strings, None and lists/tuples/dicts of them (what
            `torch.load(weights_only=True)` reads back).
        path: the checkpoint's file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous, partial = _sibling(path, PREVIOUS), _sibling(path, PARTIAL)
    digest = _write(partial, lambda f: torch.save(state, f))
    recorded = _recorded(path) or {}
    current = _sha256(path) if path.exists() else None
    rotate = current is not None and current in recorded.values()
    # A damaged latest file is dropped rather than kept: the previous good one stays instead.
    kept = current if rotate else recorded.get(previous.name)
    lines = f"{digest}  {path.name}\n" + (f"{kept}  {previous.name}\n" if kept else "")
    record = _sibling(path, RECORD)
    try:
        _write(_sibling(record, PARTIAL), lambda f: f.write(lines.encode()))
    except BaseException:
        partial.unlink(missing_ok=True)  # nothing moved yet: the files as they were
        raise
    os.replace(_sibling(record, PARTIAL), record)
    if rotate:
        os.replace(path, previous)
    os.replace(partial, path)


def load(path: str | Path) -> Loaded | None:
    """The newest good checkpoint at `path` (the latest file, else the previous one).

    Returns:
        None when there is no checkpoint file at all.

    Raises:
        CheckpointError: files exist but none is good (damaged, unverified, or needing pickle).
    """
    path = Path(path)
    candidates = [p for p in (path, _sibling(path, PREVIOUS)) if p.exists()]
    if not candidates:
        return None
    recorded = _recorded(path)
    hashes = None if recorded is None else set(recorded.values())
    faults = [] if path.exists() else [f"checkpoint {path} is missing (its save was cut short)"]
    for file in candidates:
        try:
            state = _read(file, hashes)
        except CheckpointError as err:
            faults.append(str(err))
            continue
        return Loaded(state, file, "; ".join(faults) or None)
    raise CheckpointError("; ".join(faults))


def remove(path: str | Path) -> None:
    """Delete every file `save` left for `path`."""
    for file in files(path):
        file.unlink(missing_ok=True)


def _read(file: Path, hashes: set[str] | None) -> dict[str, Any]:
    """`file`'s state if its sha256 is among `hashes` (None: no record) and it needs no pickle;
    else CheckpointError."""
    if hashes is None:  # versions before the record wrote pickles: say so when this is one
        if _needs_pickle(file):
            raise CheckpointError(
                f"checkpoint {file} was written by an older version of hetero_lr (it holds "
                "pickled objects) and cannot be loaded safely"
            )
        raise CheckpointError(f"checkpoint {file} has no recorded sha256 (no {RECORD} file)")
    if _sha256(file) not in hashes:
        raise CheckpointError(
            f"checkpoint {file} is damaged (its sha256 is not the one recorded when written)"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a recorded hash does not make pickled code safe to run
        raise CheckpointError(
            f"checkpoint {file} holds pickled objects and cannot be loaded safely"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {file} is unreadable ({reason})") from None


def _needs_pickle(file: Path) -> bool:
    """Whether `file` is a `torch.save` archive naming classes outside `weights_only`'s set
    (read statically: nothing in it runs)."""
    try:
        return bool(torch.serialization.get_unsafe_globals_in_checkpoint(file))
    except Exception:  # not a readable archive: damaged, not old
        return False


def _recorded(path: Path) -> dict[str, str] | None:
    """`{file name: sha256}` from `path`'s record; None when there is no record."""
    try:
        text = _sibling(path, RECORD).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return None
    found = {}
    for line in text.splitlines():  # a damaged line only loses its own entry
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            found[name] = digest
    return found


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through (no second read of a big file)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.hash = raw, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.hash.update(data)
        return self.raw.write(data)


def _write(target: Path, fill: Callable[[BinaryIO], Any]) -> str:
    """Write `target` with `fill(stream)`, flush it to disk; returns the sha256 of its bytes.
    A write that fails (a full disk) removes what it wrote: the space goes back."""
    try:
        with open(target, "wb") as raw:
            stream = _HashingWriter(raw)
            fill(stream)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return stream.hash.hexdigest()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)
