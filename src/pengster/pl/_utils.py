"""Helpers shared by the plots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def check_columns(frame: pd.DataFrame, features: Sequence[str], *, name: str) -> None:
    """Raise a KeyError naming the frame and the missing features when ``frame`` lacks some of ``features``."""
    missing = [feature for feature in features if feature not in frame.columns]
    if missing:
        raise KeyError(
            f"{name} has no column(s) {missing}; pass features among its {frame.shape[1]} columns, "
            f"e.g. {list(frame.columns[:5])}."
        )


def panel_grid(n_panels: int, *, ncols: int, panel_size: float) -> np.ndarray:
    """A grid of Axes for ``n_panels`` panels, flattened; the unused Axes of the last row are hidden."""
    import matplotlib.pyplot as plt

    if n_panels < 1:
        raise ValueError("features is empty; pass at least one feature to plot.")
    if ncols < 1:
        raise ValueError(f"ncols={ncols}; pass ncols >= 1.")
    ncols = min(ncols, n_panels)
    nrows = -(-n_panels // ncols)
    _, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, panel_size * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return axes[:n_panels]
