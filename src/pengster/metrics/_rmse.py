"""Root mean squared error, the NeurIPS 2021 predict-modality score."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._utils import as_matrix, check_same_shape, dense_blocks


def rmse(observed: Any, predicted: Any) -> float:
    """Root mean squared error over all entries.

    The main score of the "predict modality" task of the NeurIPS 2021 multimodal
    benchmark :cite:p:`Lance2022`; lower is better.

    Parameters
    ----------
    observed
        Array of shape (n_cells, n_features) (or (n_cells,)): the measured values, on the scale
        of the prediction. Numpy, scipy sparse or pandas.
    predicted
        Array of the same shape: the predicted values.

    Returns
    -------
    The square root of the mean of ``(observed - predicted) ** 2`` over all entries.
    """
    observed = as_matrix(observed, "observed", ndim=None)
    predicted = as_matrix(predicted, "predicted", ndim=None)
    n_cells, n_features = check_same_shape(observed=observed, predicted=predicted)
    squared_error = 0.0
    for _, (observed_block, predicted_block) in dense_blocks(observed, predicted, axis=1):
        squared_error += float(np.sum((observed_block - predicted_block) ** 2))
    return float(np.sqrt(squared_error / (n_cells * n_features)))
