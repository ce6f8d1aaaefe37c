"""Coverage of Gaussian predictive intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from ._utils import as_matrix, check_same_shape, dense_blocks


def interval_coverage(observed: Any, mean: Any, std: Any, *, level: float = 0.9) -> float:
    """Fraction of observed values inside the central Gaussian predictive interval.

    The interval is ``mean ± z * std`` with ``z`` the ``(1 + level) / 2`` quantile of the
    standard normal, so a calibrated prediction covers about ``level`` of the values; less means
    overconfident, more underconfident. Pairs with ``predict(..., return_std=True)``, which returns a
    predictive mean and std.

    Parameters
    ----------
    observed
        Array of shape (n_cells, n_features) (or (n_cells,)): the measured values. Numpy, scipy
        sparse or pandas.
    mean
        Array of the same shape: predictive means.
    std
        Array of the same shape: predictive standard deviations, nonnegative.
    level
        Nominal coverage of the interval, in (0, 1).

    Returns
    -------
    The fraction of entries with ``|observed - mean| <= z * std``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got level={level}.")
    observed = as_matrix(observed, "observed", ndim=None)
    mean = as_matrix(mean, "mean", ndim=None)
    std = as_matrix(std, "std", ndim=None)
    n_cells, n_features = check_same_shape(observed=observed, mean=mean, std=std)
    z = stats.norm.ppf(0.5 + level / 2)
    n_inside = 0
    for _, (observed_block, mean_block, std_block) in dense_blocks(observed, mean, std, axis=1):
        if (std_block < 0).any():
            raise ValueError("std has negative entries; pass predictive standard deviations.")
        n_inside += int(np.count_nonzero(np.abs(observed_block - mean_block) <= z * std_block))
    return n_inside / (n_cells * n_features)
