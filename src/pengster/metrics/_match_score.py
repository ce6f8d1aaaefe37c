"""Match score of the NeurIPS 2021 "match modality" task."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse


def match_score(matching_matrix: Any) -> float:
    """Probability mass a matching matrix puts on the true pairs.

    The score of the "match modality" task of the NeurIPS 2021 multimodal benchmark
    :cite:p:`Lance2022`: each row of the matrix is normalized to sum to 1 (a distribution over
    candidate partners of that cell), and the score is the sum of the diagonal divided by
    ``n_cells``. Rows that are all zero contribute 0. 1 is perfect; a uniform matrix scores
    ``1 / n_cells``.

    Parameters
    ----------
    matching_matrix
        Nonnegative array of shape (n_cells, n_cells), numpy, scipy sparse or pandas: entry
        ``(i, j)`` scores cell ``i`` of one modality against cell ``j`` of the other, where the
        true partner of ``i`` is ``j == i``.

    Returns
    -------
    The match score, in [0, 1].
    """
    if hasattr(matching_matrix, "to_numpy") and not sparse.issparse(matching_matrix):
        matching_matrix = matching_matrix.to_numpy()
    if not sparse.issparse(matching_matrix):
        matching_matrix = np.asarray(matching_matrix, dtype=np.float64)
    if matching_matrix.ndim != 2 or matching_matrix.shape[0] != matching_matrix.shape[1]:
        raise ValueError(f"matching_matrix must be square, of shape (n_cells, n_cells); got {matching_matrix.shape}.")
    if matching_matrix.min() < 0:
        raise ValueError("matching_matrix has negative entries; pass nonnegative scores (e.g. probabilities).")
    row_sums = np.asarray(matching_matrix.sum(axis=1), dtype=np.float64).ravel()
    diagonal = np.asarray(matching_matrix.diagonal(), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized_diagonal = np.where(row_sums > 0, diagonal / row_sums, 0.0)
    return float(normalized_diagonal.sum() / matching_matrix.shape[0])
