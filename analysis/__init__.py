"""Turn a study's Optuna storage and MLflow runs into the tables and figures of a paper.

    python -m analysis.report --results results/ --study NAME --out report/

Modules: `load` (Optuna + MLflow -> pandas), `stats` (IQM and stratified-bootstrap intervals,
rliable's method), `plots` (matplotlib figures), `report` (the command line).
"""

from analysis.load import StudyData, best_trials, load_curves, load_study_data
from analysis.stats import iqm, stratified_bootstrap_ci

__all__ = [
    "StudyData",
    "best_trials",
    "iqm",
    "load_curves",
    "load_study_data",
    "stratified_bootstrap_ci",
]
