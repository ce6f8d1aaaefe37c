"""AUROC and average precision of predicted accessibility (or any binary modality)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse

from ._utils import Reduce, as_matrix, auroc_along, check_same_shape, dense_blocks, reduce_scores


def auroc_per_feature(observed_binary: Any, predicted_score: Any, *, reduce: Reduce = "mean") -> float | np.ndarray:
    """Area under the ROC curve over cells, for each feature.

    Used for predicted chromatin accessibility, where each peak is open or closed in each cell
    :cite:p:`Lance2022`; 0.5 is chance, 1 is perfect. Features where every cell has the same
    class have no AUROC: they get NaN and are skipped by the reduction. Ties in the score count
    one half, as in :func:`sklearn.metrics.roc_auc_score`.

    Parameters
    ----------
    observed_binary
        Array of shape (n_cells, n_features): nonzero entries are positives (so fragment counts
        work unchanged). Numpy, scipy sparse or pandas; densified a block of features at a time.
    predicted_score
        Array of shape (n_cells, n_features): predicted accessibility or any score that ranks.
    reduce
        ``"mean"`` or ``"median"`` of the finite AUROCs, or ``None`` for all of them.

    Returns
    -------
    A float, or with ``reduce=None`` an array of shape (n_features,).
    """
    observed_binary = as_matrix(observed_binary, "observed_binary")
    predicted_score = as_matrix(predicted_score, "predicted_score")
    _, n_features = check_same_shape(observed_binary=observed_binary, predicted_score=predicted_score)
    scores = np.empty(n_features)
    for block, (labels, predicted) in dense_blocks(observed_binary, predicted_score, axis=0):
        scores[block] = auroc_along(labels, predicted, axis=0)
    return reduce_scores(scores, reduce, what="feature")


def auroc(observed_binary: Any, score: Any) -> float:
    """Area under the ROC curve over all entries at once.

    Every (cell, feature) entry is one sample, as a global accessibility score
    :cite:p:`Lance2022`; contrast :func:`auroc_per_feature`, which ignores how features differ
    in overall accessibility.

    Parameters
    ----------
    observed_binary
        Array of shape (n_cells, n_features) or (n_samples,): nonzero entries are positives.
    score
        Array of the same shape: predicted scores.

    Returns
    -------
    The AUROC, NaN if all entries have the same class.
    """
    observed_binary = as_matrix(observed_binary, "observed_binary", ndim=None)
    score = as_matrix(score, "score", ndim=None)
    check_same_shape(observed_binary=observed_binary, score=score)
    labels = observed_binary.toarray() if sparse.issparse(observed_binary) else observed_binary
    values = score.toarray() if sparse.issparse(score) else score
    return float(auroc_along(labels.ravel(), values.ravel().astype(np.float64), axis=0))
