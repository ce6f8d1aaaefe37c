"""Average precision of predicted accessibility (or any binary modality)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._utils import Reduce, as_matrix, check_same_shape, dense_blocks, reduce_scores


def _average_precision_along_cells(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each column, as in :func:`sklearn.metrics.average_precision_score`.

    AP = sum over distinct score thresholds of (gain in true positives / n_positive) * precision,
    with tied scores forming one threshold.
    """
    n_cells = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    true_positives = np.cumsum(np.take_along_axis(labels != 0, order, axis=0), axis=0)
    # A threshold ends where the next score differs; the last cell always ends one.
    threshold_end = np.ones_like(sorted_scores, dtype=bool)
    threshold_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    tp_at_end = np.where(threshold_end, true_positives, 0)
    previous_tp = np.zeros_like(tp_at_end)
    previous_tp[1:] = np.maximum.accumulate(tp_at_end, axis=0)[:-1]
    precision = true_positives / np.arange(1, n_cells + 1)[:, None]
    gain = np.where(threshold_end, true_positives - previous_tp, 0)
    n_positive = true_positives[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = (gain * precision).sum(axis=0) / n_positive
    return np.where((n_positive > 0) & (n_positive < n_cells), ap, np.nan)


def average_precision_per_feature(
    observed_binary: Any, predicted_score: Any, *, reduce: Reduce = "mean"
) -> float | np.ndarray:
    """Average precision over cells, for each feature.

    The area under the precision-recall curve, computed as in
    :func:`sklearn.metrics.average_precision_score`; more sensitive than AUROC when positives
    are rare, as open peaks are :cite:p:`Lance2022`. Its chance level is the feature's fraction
    of positives. Features where every cell has the same class get NaN and are skipped.

    Parameters
    ----------
    observed_binary
        Array of shape (n_cells, n_features): nonzero entries are positives.
    predicted_score
        Array of shape (n_cells, n_features): predicted accessibility or any score that ranks.
    reduce
        ``"mean"`` or ``"median"`` of the finite values, or ``None`` for all of them.

    Returns
    -------
    A float, or with ``reduce=None`` an array of shape (n_features,).
    """
    observed_binary = as_matrix(observed_binary, "observed_binary")
    predicted_score = as_matrix(predicted_score, "predicted_score")
    _, n_features = check_same_shape(observed_binary=observed_binary, predicted_score=predicted_score)
    scores = np.empty(n_features)
    for block, (labels, predicted) in dense_blocks(observed_binary, predicted_score, axis=0):
        scores[block] = _average_precision_along_cells(labels, predicted)
    return reduce_scores(scores, reduce, what="feature")
