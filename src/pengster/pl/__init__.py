"""Plots of training and of cross-modal predictions; each function draws with matplotlib and returns its Axes."""

from __future__ import annotations

from ._embedding import embedding_panel
from ._history import training_history
from ._prediction import marker_panel, predicted_vs_observed, uncertainty_calibration

__all__ = ["embedding_panel", "marker_panel", "predicted_vs_observed", "training_history", "uncertainty_calibration"]
