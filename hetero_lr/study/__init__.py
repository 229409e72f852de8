"""Optuna studies over KR, KL and architecture pairings, every trial in MLflow.

    python -m hetero_lr.study --pair impala:nature --study studies/smoke.yaml

A study searches the Lookahead-Replicate knobs `kr` (Replicate gradient steps on the target per
phase) and `kl` (Lookahead gradient steps on the online net between phases), and whatever else
the study file's `space` names, for one pairing or over several; same-architecture HardCopy
baselines run as enqueued fixed trials. Each trial trains every seed (and environment) in
process with `hetero_lr.train.train` and is scored by the mean of its runs' last evaluations
(human-normalised on Atari).

Modules: `cli` (command line), `spec` (study files, search space), `settings`, `storage`
(storages, samplers, pruners), `preflight` (checks and time estimate), `objective` (one trial),
`runner` (workers, resume), `summary` (end-of-study figures and tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hetero_lr.study.settings import SettingsMismatch, StudySettings, run_seeds
from hetero_lr.study.spec import (
    DEFAULT_STUDY,
    Arm,
    Param,
    Pruning,
    StudySpec,
    load_study,
    parse_arm,
    parse_study,
    suggest,
)
from hetero_lr.study.storage import make_pruner, make_sampler, open_storage

if TYPE_CHECKING:
    from hetero_lr.study.cli import main
    from hetero_lr.study.runner import run_study

# Imported on first use: they pull in MLflow, which is slow to import.
_LAZY = {"main": "hetero_lr.study.cli", "run_study": "hetero_lr.study.runner"}

__all__ = [
    "DEFAULT_STUDY",
    "Arm",
    "Param",
    "Pruning",
    "SettingsMismatch",
    "StudySettings",
    "StudySpec",
    "load_study",
    "main",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "parse_arm",
    "parse_study",
    "run_seeds",
    "run_study",
    "suggest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
