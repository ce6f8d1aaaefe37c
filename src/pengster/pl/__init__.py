"""Plots; each returns matplotlib Axes."""

from ._plots import predicted_vs_observed, training_history

__all__ = ["predicted_vs_observed", "training_history"]
