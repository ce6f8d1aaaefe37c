"""Training curves and predicted-vs-observed plots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes


def training_history(model, *, keys: Sequence[str] = ("train_loss", "validation_loss"), ax: Axes | None = None) -> Axes:
    """Plot the per-epoch curves of a trained model's ``history`` (default: training and validation loss)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4.5, 3.2))[1]
    plotted = 0
    for key in keys:
        if key in model.history:
            frame = model.history[key]
            ax.plot(frame.index, frame.iloc[:, 0].to_numpy(dtype=float), label=key)
            plotted += 1
    if plotted == 0:
        raise KeyError(f"model.history has none of {list(keys)}; it has {list(model.history)}.")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    return ax


def predicted_vs_observed(
    predicted: pd.DataFrame, observed: pd.DataFrame, feature: str, *, ax: Axes | None = None
) -> Axes:
    """Scatter one feature's predicted values against the observed ones, cells matched by name; Pearson in the title."""
    import matplotlib.pyplot as plt

    for name, frame in (("predicted", predicted), ("observed", observed)):
        if feature not in frame.columns:
            raise KeyError(
                f"{name} has no column {feature!r}; pass one of its columns, e.g. {list(frame.columns[:5])}."
            )
    cells = predicted.index.intersection(observed.index)
    x = observed.loc[cells, feature].to_numpy(dtype=float)
    y = predicted.loc[cells, feature].to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    ax = ax or plt.subplots(figsize=(3.5, 3.5))[1]
    ax.scatter(x[keep], y[keep], s=6, alpha=0.6, linewidths=0)
    r = np.corrcoef(x[keep], y[keep])[0, 1] if keep.sum() > 1 else np.nan
    ax.set_title(f"{feature}  (r = {r:.2f})")
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted")
    return ax
