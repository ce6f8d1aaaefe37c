"""Input handling shared by the metrics: conversion, shape checks, blockwise densification, reduction."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse, stats

logger = logging.getLogger(__name__)

#: Number of matrix entries densified at once, about 32 MB of float64.
_BLOCK_ENTRIES = 2**22

Reduce = Literal["mean", "median"] | None


def as_matrix(values: Any, name: str, *, ndim: int | None = 2) -> np.ndarray | sparse.csr_matrix:
    """Return ``values`` as a 2-D numpy array or a CSR matrix, without densifying sparse input.

    ``ndim=None`` also accepts a 1-D vector, which becomes a single column.
    """
    if isinstance(values, pd.DataFrame | pd.Series):
        values = values.to_numpy()
    if sparse.issparse(values):
        return sparse.csr_matrix(values)
    values = np.asarray(values)
    if ndim is None and values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_cells, n_features); got shape {values.shape}.")
    return values


def check_same_shape(**arrays: Any) -> tuple[int, int]:
    """Raise if the named arrays differ in shape; return the common shape."""
    shapes = {name: tuple(array.shape) for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"Shapes differ: {described}; pass matrices with the same cells and features in the same order."
        )
    return next(iter(shapes.values()))


def dense_blocks(*matrices: np.ndarray | sparse.spmatrix, axis: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Yield ``(block, dense_blocks)`` with float64 slices of all matrices.

    ``axis=0`` slices columns (each block holds every row of a few features), ``axis=1`` slices rows.
    Only one block of each matrix is dense at a time.
    """
    n_rows, n_cols = matrices[0].shape
    # CSC slices columns cheaply, CSR slices rows cheaply.
    matrices = tuple((m.tocsc() if axis == 0 else m.tocsr()) if sparse.issparse(m) else m for m in matrices)
    length, width = (n_cols, n_rows) if axis == 0 else (n_rows, n_cols)
    step = max(1, _BLOCK_ENTRIES // max(width, 1))
    for start in range(0, length, step):
        block = slice(start, min(start + step, length))
        pieces = [m[:, block] if axis == 0 else m[block] for m in matrices]
        yield block, [np.asarray(p.toarray() if sparse.issparse(p) else p, dtype=np.float64) for p in pieces]


def pearson_along(x: np.ndarray, y: np.ndarray, *, axis: int) -> np.ndarray:
    """Pearson correlation between matching slices of ``x`` and ``y`` along ``axis``; NaN where either is constant."""
    x_centered = x - x.mean(axis=axis, keepdims=True)
    y_centered = y - y.mean(axis=axis, keepdims=True)
    numerator = (x_centered * y_centered).sum(axis=axis)
    denominator = np.sqrt((x_centered**2).sum(axis=axis) * (y_centered**2).sum(axis=axis))
    # Test constancy exactly: a centred constant vector can be a few ulp off zero and give a spurious r.
    constant = (np.ptp(x, axis=axis) == 0) | (np.ptp(y, axis=axis) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(numerator / denominator, -1.0, 1.0)
    r[constant] = np.nan
    return r


def rank_along(x: np.ndarray, *, axis: int) -> np.ndarray:
    """Ranks along ``axis``, ties given their average rank."""
    return stats.rankdata(x, method="average", axis=axis)


def auroc_along(labels: np.ndarray, scores: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """AUROC of ``scores`` for the nonzero ``labels`` along ``axis`` (Mann-Whitney U); NaN if a slice has one class."""
    positive = labels != 0
    n_positive = positive.sum(axis=axis)
    n_negative = positive.shape[axis] - n_positive
    rank_sum = np.where(positive, rank_along(scores, axis=axis), 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    return np.where((n_positive > 0) & (n_negative > 0), auc, np.nan)


def correlation_scores(observed: Any, predicted: Any, *, axis: int, rank: bool) -> np.ndarray:
    """Pearson (or with ``rank=True`` Spearman) correlation along ``axis``.

    ``axis=0`` correlates over cells for each feature, ``axis=1`` over features for each cell.
    """
    observed = as_matrix(observed, "observed")
    predicted = as_matrix(predicted, "predicted")
    n_cells, n_features = check_same_shape(observed=observed, predicted=predicted)
    scores = np.empty(n_features if axis == 0 else n_cells)
    for block, (observed_block, predicted_block) in dense_blocks(observed, predicted, axis=axis):
        if rank:
            observed_block = rank_along(observed_block, axis=axis)
            predicted_block = rank_along(predicted_block, axis=axis)
        scores[block] = pearson_along(observed_block, predicted_block, axis=axis)
    return scores


def reduce_scores(scores: np.ndarray, reduce: Reduce, *, what: str) -> float | np.ndarray:
    """Reduce per-feature or per-cell scores, skipping NaN; ``reduce=None`` returns them all."""
    if reduce is None:
        return scores
    if reduce not in ("mean", "median"):
        raise ValueError(f"reduce={reduce!r} is not supported; pass 'mean', 'median' or None.")
    finite = scores[~np.isnan(scores)]
    n_skipped = scores.size - finite.size
    if finite.size == 0:
        warnings.warn(f"Every {what} was skipped (constant or single-class); the result is NaN.", stacklevel=3)
        return float("nan")
    if n_skipped:
        logger.debug("Skipped %d of %d %ss that are constant or single-class.", n_skipped, scores.size, what)
    return float(np.mean(finite) if reduce == "mean" else np.median(finite))
