"""Metrics of the NeurIPS 2021 multimodal benchmark and friends, as pure functions.

Cross-modal prediction: :func:`rmse`, :func:`pearson_per_feature`, :func:`pearson_per_cell`,
:func:`spearman_per_feature`, :func:`spearman_per_cell`, :func:`auroc_per_feature`,
:func:`average_precision_per_feature`, :func:`auroc`, :func:`marker_auroc`,
:func:`interval_coverage`. Matching and alignment: :func:`foscttm`, :func:`matching_accuracy`,
:func:`match_score`. Every function takes numpy arrays, scipy sparse matrices or pandas objects
of the stated shapes and writes nothing.
"""

from __future__ import annotations

from ._auroc import auroc, auroc_per_feature
from ._average_precision import average_precision_per_feature
from ._foscttm import foscttm
from ._interval_coverage import interval_coverage
from ._marker_auroc import marker_auroc
from ._match_score import match_score
from ._matching_accuracy import matching_accuracy
from ._pearson import pearson_per_cell, pearson_per_feature
from ._rmse import rmse
from ._spearman import spearman_per_cell, spearman_per_feature

__all__ = [
    "auroc",
    "auroc_per_feature",
    "average_precision_per_feature",
    "foscttm",
    "interval_coverage",
    "marker_auroc",
    "match_score",
    "matching_accuracy",
    "pearson_per_cell",
    "pearson_per_feature",
    "rmse",
    "spearman_per_cell",
    "spearman_per_feature",
]
