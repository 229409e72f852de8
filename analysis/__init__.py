"""Turn a study's Optuna storage and MLflow runs into the tables and figures of a paper.

    python -m analysis.report --study NAME --results results/ --out report/
    python -m analysis.compare --study A --study B --results results/ --out comparison/
    python -m analysis.pool --runs A/headline_runs.csv --runs B/comparison_runs.csv --arm ARM

Modules: `load` (Optuna + MLflow -> pandas), `stats` (IQM and stratified-bootstrap intervals,
rliable's method), `aggregate` (rliable's aggregate metrics and performance profiles),
`headline` (the runs the report leads with, the pairing matrix), `curves` (means and bands by
step), `plots` (matplotlib figures), `page` (Markdown and self-contained HTML), `report` (the
command line), `compare` (the arms of several studies in one table), `pool` (seed sets of the
same arms, as one sample).
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
