"""Helpers shared by the readers and :func:`~pengster.data.mosaic`: frames and sparse matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals
from scipy import sparse


def concat_frames(frames: Sequence[pd.DataFrame], *, drop_duplicates: bool = False) -> pd.DataFrame:
    """Outer-join frames row-wise, keeping dtypes that anndata can write.

    Parameters
    ----------
    frames
        Frames to stack; they are not modified.
    drop_duplicates
        Keep only the first row of each index label (used for the union of features).

    Returns
    -------
    A new frame with the union of columns. Categorical columns get the union of categories;
    bool columns with missing rows become pandas' nullable ``boolean``.
    """
    stacked = pd.concat([frame.copy() for frame in frames], axis=0, join="outer", sort=False)
    if drop_duplicates:
        stacked = stacked.loc[~stacked.index.duplicated(keep="first")]
    for column in stacked.columns:
        parts = [frame[column] for frame in frames if column in frame.columns]
        if all(isinstance(part.dtype, pd.CategoricalDtype) for part in parts):
            categories = union_categoricals([part.astype("category") for part in parts], ignore_order=True).categories
            stacked[column] = pd.Categorical(stacked[column], categories=categories)
        elif all(part.dtype == bool for part in parts) and stacked[column].dtype != bool:
            stacked[column] = stacked[column].astype("boolean")
    return stacked


def to_csr(matrix: object, *, dtype: np.dtype) -> sparse.csr_matrix:
    """A CSR copy of a dense or sparse matrix, never sharing memory with the input."""
    if sparse.issparse(matrix):
        return sparse.csr_matrix(matrix, dtype=dtype, copy=True)
    return sparse.csr_matrix(np.asarray(matrix, dtype=dtype))


def padded_csr(matrix: object, columns: np.ndarray, n_columns: int, *, dtype: np.dtype) -> sparse.csr_matrix:
    """A CSR copy of ``matrix`` with its columns placed at positions ``columns`` of a wider zero matrix.

    Parameters
    ----------
    matrix
        Dense or sparse matrix of shape (n_rows, n_in); it is not modified and shares no memory with the output.
    columns
        Integer array of shape (n_in,): the position of each input column in the output.
    n_columns
        Number of output columns.
    dtype
        Dtype of the output values.

    Returns
    -------
    CSR matrix of shape (n_rows, n_columns), built in memory proportional to the nonzeros.
    """
    copied = to_csr(matrix, dtype=dtype)
    indices = np.asarray(columns)[copied.indices]
    padded = sparse.csr_matrix((copied.data, indices, copied.indptr), shape=(copied.shape[0], n_columns), copy=False)
    if len(columns) > 1 and np.any(np.diff(columns) < 0):
        padded.has_sorted_indices = False
        padded.sort_indices()
    return padded
