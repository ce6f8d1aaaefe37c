"""FOSCTTM and matching accuracy of paired embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from ._utils import _BLOCK_ENTRIES


def _as_embedding(values: Any, name: str) -> np.ndarray:
    values = values.toarray() if hasattr(values, "toarray") else values
    values = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"{name} must be an embedding of shape (n_cells, n_dims); got shape {values.shape}.")
    return values


def closer_than_match(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each cell, how many cells of the other embedding are strictly closer than its true match.

    Parameters
    ----------
    x
        Array of shape (n_cells, n_dims): embedding of the cells from one modality.
    y
        Array of shape (n_cells, n_dims): embedding of the same cells, in the same order, from the other.

    Returns
    -------
    Two integer arrays of shape (n_cells,): for row ``i`` of ``x``, the number of rows ``j != i`` of
    ``y`` with ``d(x_i, y_j) < d(x_i, y_i)``; and the same from ``y`` to ``x``.
    """
    x = _as_embedding(x, "x")
    y = _as_embedding(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x has shape {x.shape} and y {y.shape}; pass the embeddings of the same cells in one order.")
    return _closer_rows(x, y), _closer_rows(y, x)


def _closer_rows(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    n_cells = query.shape[0]
    counts = np.empty(n_cells, dtype=np.int64)
    step = max(1, _BLOCK_ENTRIES // max(n_cells, 1))
    for start in range(0, n_cells, step):
        rows = np.arange(start, min(start + step, n_cells))
        distances = cdist(query[rows], reference, metric="sqeuclidean")
        # The true match is read from the same matrix and then excluded, so rounding can never
        # count a cell as closer than itself.
        to_match = distances[np.arange(rows.size), rows]
        distances[np.arange(rows.size), rows] = np.inf
        counts[rows] = (distances < to_match[:, None]).sum(axis=1)
    return counts


def foscttm(x: Any, y: Any) -> float:
    """Fraction of samples closer than the true match (FOSCTTM).

    For each cell of ``x``, the fraction of the other ``n_cells - 1`` cells of ``y`` that are
    closer (Euclidean) to it than its own partner, and the same from ``y`` to ``x``; the result
    is the mean over both directions :cite:p:`Liu2019,Demetci2022`, as in the NeurIPS 2021
    multimodal benchmark :cite:p:`Lance2022`. 0 is perfect alignment, about 0.5 is chance;
    lower is better. Needs memory for a block of distances only, and time ``O(n_cells ** 2)``.

    Parameters
    ----------
    x
        Array of shape (n_cells, n_dims): embedding of the cells from one modality.
    y
        Array of shape (n_cells, n_dims): embedding of the same cells, in the same order, from the other.

    Returns
    -------
    The mean fraction, in [0, 1].
    """
    closer_x, closer_y = closer_than_match(x, y)
    n_cells = closer_x.size
    if n_cells < 2:
        raise ValueError(f"foscttm needs at least 2 cells; got {n_cells}.")
    return float(np.concatenate([closer_x, closer_y]).mean() / (n_cells - 1))
