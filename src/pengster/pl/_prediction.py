"""Predicted against observed values, one feature or a panel of marker features, and predictive uncertainty."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._utils import check_columns, panel_grid


def _matched(
    predicted: pd.DataFrame, observed: pd.DataFrame, std: pd.DataFrame | None
) -> tuple[pd.Index, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The cells (row names) in both frames, and the frames restricted to them in one order."""
    cells = predicted.index.intersection(observed.index, sort=False)
    if len(cells) == 0:
        raise ValueError(
            "predicted and observed share no row names (cells); pass frames indexed by the same obs_names, e.g. "
            "model.predict(...).loc[cells] and the measured values of those cells."
        )
    if std is not None:
        missing = cells.difference(std.index)
        if len(missing) > 0:
            raise ValueError(
                f"std lacks {len(missing)} cells of predicted, e.g. {list(missing[:3])}; pass the std "
                "returned with predicted by model.predict(..., return_std=True)."
            )
        std = std.loc[cells]
    return cells, predicted.loc[cells], observed.loc[cells], std


def predicted_vs_observed(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    feature: str,
    *,
    std: pd.DataFrame | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Scatter one feature's predicted values against the observed ones, cells matched by name.

    Parameters
    ----------
    predicted
        Predictions, cells x features, e.g. from :meth:`~pengster.model.JointVAE.predict` or
        ``mdata.obsm['pengster_pred_protein']``.
    observed
        Measured values of the same features in the same scale (e.g. CLR of protein counts), cells x features.
        Only the cells in both frames are drawn.
    feature
        Column to draw.
    std
        Predictive standard deviation, same shape as ``predicted``; drawn as vertical bars of +-1 std.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes: observed on x, predicted on y, the identity line dashed, and Pearson's r in the title.
    """
    import matplotlib.pyplot as plt

    check_columns(predicted, [feature], name="predicted")
    check_columns(observed, [feature], name="observed")
    if std is not None:
        check_columns(std, [feature], name="std")
    _, predicted, observed, std = _matched(predicted, observed, std)
    x = observed[feature].to_numpy(dtype=float)
    y = predicted[feature].to_numpy(dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    ax = ax if ax is not None else plt.subplots(figsize=(3.5, 3.5))[1]
    if std is not None:
        # faint, and under the points: hundreds of overlapping bars would otherwise hide the cells they belong to
        ax.errorbar(
            x[keep],
            y[keep],
            yerr=std[feature].to_numpy(dtype=float)[keep],
            fmt="none",
            ecolor=(0.5, 0.5, 0.5, 0.2),
            elinewidth=0.5,
            zorder=1,
        )
    ax.scatter(x[keep], y[keep], s=7, alpha=0.8, linewidths=0, zorder=2)
    if keep.any():
        low = min(x[keep].min(), y[keep].min())
        high = max(x[keep].max(), y[keep].max())
        ax.plot([low, high], [low, high], linestyle="--", color="0.4", linewidth=0.8)
    r = np.corrcoef(x[keep], y[keep])[0, 1] if keep.sum() > 2 else np.nan
    ax.set_title(f"{feature}  (r = {r:.2f})")
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted")
    return ax


def marker_panel(
    predicted: pd.DataFrame,
    observed: pd.DataFrame,
    features: Sequence[str],
    *,
    std: pd.DataFrame | None = None,
    ncols: int = 4,
    panel_size: float = 2.8,
) -> np.ndarray:
    """:func:`~pengster.pl.predicted_vs_observed` for several marker features, one panel each.

    Parameters
    ----------
    predicted, observed, std
        As in :func:`predicted_vs_observed`.
    features
        Columns to draw, one panel each, in this order.
    ncols
        Panels per row.
    panel_size
        Width and height of one panel in inches.

    Returns
    -------
    Array of the ``len(features)`` Axes, in the order of ``features``.
    """
    check_columns(predicted, features, name="predicted")
    check_columns(observed, features, name="observed")
    axes = panel_grid(len(features), ncols=ncols, panel_size=panel_size)
    for ax, feature in zip(axes, features, strict=True):
        predicted_vs_observed(predicted, observed, feature, std=std, ax=ax)
    axes[0].figure.tight_layout()
    return axes


def uncertainty_calibration(
    predicted: pd.DataFrame,
    std: pd.DataFrame,
    observed: pd.DataFrame,
    *,
    n_bins: int = 10,
    ax: Axes | None = None,
) -> Axes:
    """Does the predictive std track the error? Entries binned by std, each bin's error against its mean std.

    Every (cell, feature) entry with finite values is put into one of ``n_bins`` bins of equal size by its
    predicted std; each bin is drawn at its mean std (x) and its root mean squared error
    ``observed - predicted`` (y). A useful uncertainty rises with the error. Points on the identity line mean the
    std equals the typical error; above it the std is too small. The std of
    :meth:`~pengster.model.JointVAE.predict` covers the uncertainty of the latent only, not the noise of the
    measurement: on real data expect points above the line.

    Parameters
    ----------
    predicted
        Predictions, cells x features.
    std
        Their predictive standard deviation, same shape.
    observed
        Measured values in the same scale; only cells and features in all three frames are used.
    n_bins
        Number of bins.
    ax
        Axes to draw on; a new figure when None.

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt

    if n_bins < 2:
        raise ValueError(f"n_bins={n_bins}; pass n_bins >= 2.")
    features = predicted.columns.intersection(observed.columns, sort=False).intersection(std.columns, sort=False)
    if len(features) == 0:
        raise ValueError("predicted, std and observed share no columns (features); pass frames of the same features.")
    _, predicted, observed, std = _matched(predicted[features], observed[features], std[features])
    sigma = std.to_numpy(dtype=float).ravel()
    error = (observed.to_numpy(dtype=float) - predicted.to_numpy(dtype=float)).ravel()
    keep = np.isfinite(sigma) & np.isfinite(error)
    sigma, error = sigma[keep], error[keep]
    if sigma.size < n_bins:
        raise ValueError(f"only {sigma.size} finite entries for n_bins={n_bins}; pass fewer bins or more cells.")
    order = np.argsort(sigma, kind="stable")
    bins = np.array_split(order, n_bins)
    mean_std = np.array([sigma[b].mean() for b in bins])
    rmse = np.array([np.sqrt(np.mean(error[b] ** 2)) for b in bins])
    ax = ax if ax is not None else plt.subplots(figsize=(3.5, 3.5))[1]
    ax.plot(mean_std, rmse, marker="o")
    high = max(mean_std.max(), rmse.max())
    ax.plot([0, high], [0, high], linestyle="--", color="0.4", linewidth=0.8, label="error = std")
    ax.set_xlabel("predictive std (bin mean)")
    ax.set_ylabel("RMSE of the bin")
    ax.legend(frameon=False)
    return ax
