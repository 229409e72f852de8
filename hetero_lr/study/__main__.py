"""`python -m hetero_lr.study`: the `hetero-lr-study` command."""

import warnings

import optuna

from hetero_lr.study.cli import main

if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    raise SystemExit(main())
