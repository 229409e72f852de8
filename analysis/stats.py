"""Aggregate scores over runs (rliable's IQM and stratified bootstrap): see `hetero_lr.stats`."""

from hetero_lr.stats import difference_ci, iqm, stratified_bootstrap_ci

__all__ = ["difference_ci", "iqm", "stratified_bootstrap_ci"]
