"""Pearson correlation per feature and per cell."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._utils import Reduce, correlation_scores, reduce_scores


def pearson_per_feature(observed: Any, predicted: Any, *, reduce: Reduce = "mean") -> float | np.ndarray:
    """Pearson correlation over cells, for each feature.

    One of the correlation scores of the NeurIPS 2021 multimodal benchmark :cite:p:`Lance2022`;
    higher is better. A feature that is constant in either matrix has no correlation: it gets NaN
    and is skipped by the reduction.

    Parameters
    ----------
    observed
        Array of shape (n_cells, n_features): the measured values. Numpy, scipy sparse or pandas;
        sparse input is densified a block of features at a time.
    predicted
        Array of shape (n_cells, n_features): the predicted values.
    reduce
        ``"mean"`` or ``"median"`` of the finite correlations, or ``None`` for all of them.

    Returns
    -------
    A float, or with ``reduce=None`` an array of shape (n_features,).
    """
    return reduce_scores(correlation_scores(observed, predicted, axis=0, rank=False), reduce, what="feature")


def pearson_per_cell(observed: Any, predicted: Any, *, reduce: Reduce = "mean") -> float | np.ndarray:
    """Pearson correlation over features, for each cell.

    See :func:`pearson_per_feature` :cite:p:`Lance2022`; here each cell's profile is correlated
    with its prediction, and cells with a constant profile are skipped.

    Parameters
    ----------
    observed
        Array of shape (n_cells, n_features): the measured values.
    predicted
        Array of shape (n_cells, n_features): the predicted values.
    reduce
        ``"mean"`` or ``"median"`` of the finite correlations, or ``None`` for all of them.

    Returns
    -------
    A float, or with ``reduce=None`` an array of shape (n_cells,).
    """
    return reduce_scores(correlation_scores(observed, predicted, axis=1, rank=False), reduce, what="cell")
