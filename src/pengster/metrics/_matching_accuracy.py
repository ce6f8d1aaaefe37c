"""Matching accuracy of paired embeddings: is the true partner among the k nearest neighbours?"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._foscttm import closer_than_match


def matching_accuracy(x: Any, y: Any, *, k: int = 1) -> float:
    """Fraction of cells whose true partner is among the ``k`` nearest neighbours in the other modality.

    For each cell of ``x``, the ``k`` nearest (Euclidean) cells of ``y`` are found and the cell
    counts as matched if its own partner is among them; the same from ``y`` to ``x``, and the two
    fractions are averaged, the top-k counterpart of :func:`foscttm` :cite:p:`Lance2022`.
    Higher is better; chance is ``k / n_cells``. A partner tied in distance with the k-th
    neighbour counts as found.

    Parameters
    ----------
    x
        Array of shape (n_cells, n_dims): embedding of the cells from one modality.
    y
        Array of shape (n_cells, n_dims): embedding of the same cells, in the same order, from the other.
    k
        Number of neighbours searched, at least 1.

    Returns
    -------
    The fraction of matched cells, averaged over both directions.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1; got k={k}.")
    closer_x, closer_y = closer_than_match(x, y)
    return float(np.concatenate([closer_x < k, closer_y < k]).mean())
