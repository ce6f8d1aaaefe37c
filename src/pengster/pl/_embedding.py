"""Values of features on a 2-D embedding (e.g. predicted proteins on a UMAP)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._utils import check_columns, panel_grid


def embedding_panel(
    coordinates: np.ndarray,
    values: pd.DataFrame,
    features: Sequence[str],
    *,
    ncols: int = 3,
    panel_size: float = 3.2,
    cmap: str = "viridis",
    point_size: float = 4.0,
) -> np.ndarray:
    """Colour a 2-D embedding by features of a cells x features frame, one panel per feature.

    Cells whose value is NaN (e.g. predictions for cells that have none of the source modalities) are drawn in
    light grey underneath. Each panel's colour scale spans the 1st to the 99th percentile of its values.

    Parameters
    ----------
    coordinates
        Array of shape ``(n_cells, 2)``, e.g. ``mdata.obsm['X_umap']``.
    values
        DataFrame of shape ``(n_cells, n_features)``, rows in the order of ``coordinates``, e.g.
        ``mdata.obsm['pengster_pred_protein']``.
    features
        Columns of ``values`` to draw.
    ncols
        Panels per row.
    panel_size
        Width and height of one panel in inches.
    cmap
        Matplotlib colour map.
    point_size
        Marker size.

    Returns
    -------
    Array of the ``len(features)`` Axes, in the order of ``features``.
    """
    coordinates = np.asarray(coordinates, dtype=float)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2:
        raise ValueError(f"coordinates has shape {coordinates.shape}; pass an array of shape (n_cells, 2).")
    if coordinates.shape[0] != values.shape[0]:
        raise ValueError(
            f"coordinates has {coordinates.shape[0]} rows but values has {values.shape[0]}; pass both for the same "
            "cells in the same order."
        )
    check_columns(values, features, name="values")
    axes = panel_grid(len(features), ncols=ncols, panel_size=panel_size)
    for ax, feature in zip(axes, features, strict=True):
        color = values[feature].to_numpy(dtype=float)
        known = np.isfinite(color)
        ax.scatter(*coordinates[~known].T, s=point_size, color="0.85", linewidths=0)
        if known.any():
            low, high = np.percentile(color[known], [1, 99])
            points = ax.scatter(
                *coordinates[known].T, c=color[known], s=point_size, cmap=cmap, vmin=low, vmax=high, linewidths=0
            )
            ax.figure.colorbar(points, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(feature)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].figure.tight_layout()
    return axes
