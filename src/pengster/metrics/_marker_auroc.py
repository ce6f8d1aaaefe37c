"""How well predicted marker features separate the cell types they mark."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._utils import as_matrix, auroc_along


def marker_auroc(
    predicted: Any,
    labels: Any,
    markers: Mapping[str, str | Sequence[str]],
    *,
    feature_names: Sequence[str] | None = None,
) -> pd.Series:
    """AUROC of each cell type's predicted marker for telling that type from all other cells.

    A check of cross-modal prediction that needs no measured target: a CITE-seq panel predicted
    for multiome cells should, for example, put CD19 high in B cells :cite:p:`Lance2022`. For
    each cell type in ``markers`` the predicted values of its marker features are averaged per
    cell, and the AUROC of that score for cells of the type (positives) against the rest is
    reported; 0.5 is chance, 1 is perfect.

    Parameters
    ----------
    predicted
        Array of shape (n_cells, n_features): predicted values, numpy, scipy sparse or a pandas
        DataFrame whose columns are the feature names.
    labels
        Array-like of shape (n_cells,): the cell type of each cell.
    markers
        Cell type -> marker feature name, or a list of names whose predicted values are averaged.
        Cell types absent from ``labels`` are skipped; marker names absent from the features are
        dropped with a warning, and a cell type left with none is skipped.
    feature_names
        Names of the columns of ``predicted``; required unless ``predicted`` is a DataFrame.

    Returns
    -------
    AUROC per cell type, indexed by cell type and named ``"marker_auroc"``.
    """
    if isinstance(predicted, pd.DataFrame):
        feature_names = predicted.columns if feature_names is None else feature_names
    if feature_names is None:
        raise ValueError("predicted has no column names; pass feature_names= or a DataFrame with features as columns.")
    predicted = as_matrix(predicted, "predicted")
    labels = np.asarray(labels)
    if labels.shape != (predicted.shape[0],):
        raise ValueError(f"labels has shape {labels.shape}; expected one label per cell, ({predicted.shape[0]},).")
    if len(feature_names) != predicted.shape[1]:
        raise ValueError(f"{len(feature_names)} feature_names for {predicted.shape[1]} columns of predicted.")
    column_of = {}
    for column, name in enumerate(feature_names):
        column_of.setdefault(name, column)

    present_labels = set(labels.tolist())
    results = {}
    for cell_type, marker_names in markers.items():
        if cell_type not in present_labels:
            continue
        marker_names = [marker_names] if isinstance(marker_names, str) else list(marker_names)
        missing = [name for name in marker_names if name not in column_of]
        if missing:
            warnings.warn(
                f"Markers {missing} of {cell_type!r} are not among the features; skipping them.", stacklevel=2
            )
        columns = [column_of[name] for name in marker_names if name in column_of]
        if not columns:
            continue
        values = predicted[:, columns]
        values = values.toarray() if sparse.issparse(values) else values
        score = np.asarray(values, dtype=np.float64).mean(axis=1)
        results[cell_type] = float(auroc_along(labels == cell_type, score, axis=0))
    return pd.Series(results, name="marker_auroc", dtype=np.float64)
