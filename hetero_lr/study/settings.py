"""A study's resolved settings, its run seeds, and the check that a resumed study matches them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hetero_lr.config import flatten
from hetero_lr.study.spec import StudySpec

if TYPE_CHECKING:
    import optuna


class SettingsMismatch(ValueError):
    """A resumed study was created with other settings."""


@dataclass(frozen=True)
class StudySettings:
    """Everything a worker process needs to run trials (picklable)."""

    spec: StudySpec
    study_name: str
    storage: str
    """An Optuna storage URL, or the path of a journal file."""
    tracking_uri: str
    artifact_root: str | None
    results: str
    workers: int
    run_seeds: tuple[int, ...]
    """Seeds of each trial's runs, derived from the study seed (the same for every trial)."""
    progress: bool
    command: str = ""
    checkpoints: str | None = None
    """Folder for the runs' checkpoints (every worker must reach it); None: no checkpoints."""
    heartbeat: int | None = None
    """Seconds between a worker's heartbeats (RDB storages); None: no heartbeat."""
    max_retry: int = 1
    """Times a trial whose worker died is queued again (resuming from its checkpoints)."""

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The settings that make two invocations the same study (what resuming checks)."""
        cfg = flatten(self.spec.base)
        for key in ("device", "threads", "seed", "pair", "target.rule", "eval_videos"):
            cfg.pop(key)  # how and where it runs, or set per trial
        data = self.spec.to_dict()
        for key in (
            "name",
            "description",
            "preset",
            "trials",
            "sampler",
            "pruner",
            "pruning",
            "baselines",
            "config",
            "confirm",
        ):
            data.pop(key)
        return {**data, "config": cfg, "run_seeds": list(self.run_seeds)}


def run_seeds(study_seed: int, n: int) -> tuple[int, ...]:
    """The `n` run seeds of every trial, derived from the study seed.

    Every trial uses the same seeds (common random numbers): differences between trials are
    then not differences between seeds, and per-seed results pair up across trials, which is
    what `WilcoxonPruner` assumes. `SeedSequence.generate_state` is prefix-stable, so raising
    `--seeds` keeps the earlier seeds.
    """
    state = np.random.SeedSequence(study_seed).generate_state(n, dtype=np.uint32) >> 1
    return tuple(int(s) for s in state)


def check_fingerprint(study: optuna.Study, settings: StudySettings) -> None:
    """Record the settings in a new study; refuse a resumed one created with other settings.

    Raises:
        SettingsMismatch: naming the first keys that differ.
    """
    fingerprint = settings.fingerprint
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", fingerprint)
        study.set_user_attr("settings_hash", digest)
        return
    if stored != json.loads(json.dumps(fingerprint)):
        old, new = flat_params(stored), flat_params(json.loads(json.dumps(fingerprint)))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SettingsMismatch(
            f"study {settings.study_name!r} exists with other settings (differs in "
            f"{', '.join(diff[:5])}); resume with the same ones or pick another --study-name"
        )


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys, lists as JSON (MLflow parameters, fingerprint diffs)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out
