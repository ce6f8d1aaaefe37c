"""Label transfer from reference to query cells by k nearest neighbours in a JointVAE's latent space."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from mudata import MuData
from sklearn.neighbors import NearestNeighbors

logger = logging.getLogger(__name__)


def _reference_labels(reference: MuData, labels_key: str) -> pd.Series:
    if not isinstance(reference, MuData):
        raise TypeError(
            f"reference must be the reference's MuData (with obs[{labels_key!r}]), got {type(reference).__name__}."
        )
    if labels_key not in reference.obs.columns:
        raise KeyError(
            f"reference.obs has no column {labels_key!r}; columns are {list(reference.obs.columns)[:20]}; pass "
            "labels_key=<the column with the reference's labels>."
        )
    return reference.obs[labels_key]


def _vote(neighbour_labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority label of each row of ``neighbour_labels`` (codes) and the fraction of neighbours that voted for it."""
    n_cells, n_neighbors = neighbour_labels.shape
    counts = np.zeros((n_cells, n_labels))
    np.add.at(counts, (np.repeat(np.arange(n_cells), n_neighbors), neighbour_labels.ravel()), 1.0)
    winner = counts.argmax(1)
    return winner, counts[np.arange(n_cells), winner] / n_neighbors


def transfer_labels(
    model,
    mdata: MuData,
    *,
    labels_key: str,
    reference: MuData,
    n_neighbors: int = 15,
    min_confidence: float = 0.5,
    distance_quantile: float | None = 0.99,
    unknown_label: str = "unknown",
    modality: str | None = None,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """Predict each query cell's label from its nearest reference cells in the latent space of ``model``.

    The reference and query cells are embedded by the same model (usually the query model of
    :meth:`~pengster.model.JointVAE.load_query_data`, in which the reference cells keep their coordinates), and every
    query cell takes the majority label of its ``n_neighbors`` nearest labelled reference cells (Euclidean; ties go to
    the label first in sorted order, as in :class:`sklearn.neighbors.KNeighborsClassifier`). Its confidence is the
    fraction of those neighbours that carry the label. A cell is reported as ``unknown_label`` when the confidence
    is below ``min_confidence``, or when its mean distance to the neighbours exceeds the ``distance_quantile``
    quantile of the same distance among reference cells (it lies off the reference, e.g. a cell type the reference
    lacks).

    Writes exactly ``mdata.obs['<labels_key>_pred']`` (categorical: the reference's labels and ``unknown_label``)
    and ``mdata.obs['<labels_key>_pred_confidence']`` (float in ``[0, 1]``), replacing earlier values of these two
    columns. ``mdata.obs[labels_key]`` (the query's own labels, if any, whatever their categories) and the reference
    are left untouched.

    Parameters
    ----------
    model
        A trained :class:`~pengster.model.JointVAE` that can embed both ``mdata`` and ``reference``.
    mdata
        The query cells.
    labels_key
        Column of ``reference.obs`` with the labels; cells with a missing label are not used as neighbours.
    reference
        The reference cells (a MuData the model can embed, e.g. the one the reference model was trained on).
    n_neighbors
        Neighbours per query cell.
    min_confidence
        Below this fraction of agreeing neighbours the prediction is ``unknown_label``; 0 never reports unknown for
        disagreement.
    distance_quantile
        Quantile of the reference cells' mean distance to their own ``n_neighbors`` nearest reference cells beyond
        which a query cell is ``unknown_label``; None switches the distance rule off.
    unknown_label
        Label of cells that cannot be assigned; it must not be one of the reference's labels.
    modality
        Latent to compare: None for the joint latent, or a modality for the latent from that modality alone (cells
        without it are ``unknown_label`` with confidence 0).
    batch_size
        Cells per minibatch when embedding.

    Returns
    -------
    DataFrame indexed like ``mdata.obs`` with the two columns written.

    Examples
    --------
    >>> pengster.tl.transfer_labels(query_model, query, labels_key="cell_type", reference=reference_mdata)
    >>> query.obs[["cell_type_pred", "cell_type_pred_confidence"]].head()
    """
    labels = _reference_labels(reference, labels_key)
    if not isinstance(mdata, MuData):
        raise TypeError(f"mdata must be the query's MuData, got {type(mdata).__name__}.")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors={n_neighbors}; pass n_neighbors >= 1.")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence={min_confidence}; pass a fraction in [0, 1].")
    if distance_quantile is not None and not 0.0 < distance_quantile <= 1.0:
        raise ValueError(f"distance_quantile={distance_quantile}; pass a quantile in (0, 1], or None.")
    categories = pd.Index(np.sort(pd.unique(labels.dropna().astype(str))))
    if unknown_label in categories:
        raise ValueError(
            f"unknown_label={unknown_label!r} is one of the labels in reference.obs[{labels_key!r}]; pass another "
            "unknown_label, e.g. unknown_label='unassigned'."
        )

    reference_latent = model.get_latent_representation(reference, modality=modality, batch_size=batch_size)
    query_latent = model.get_latent_representation(mdata, modality=modality, batch_size=batch_size)
    usable = labels.notna().to_numpy() & ~np.isnan(reference_latent).any(1)
    if usable.sum() < n_neighbors + 1:
        raise ValueError(
            f"reference has {int(usable.sum())} labelled cells with a latent, fewer than n_neighbors + 1 = "
            f"{n_neighbors + 1}; pass a smaller n_neighbors or label more reference cells."
        )
    fitted = reference_latent[usable]
    codes = pd.Categorical(labels[usable].astype(str), categories=categories).codes
    index = NearestNeighbors(n_neighbors=n_neighbors).fit(fitted)

    embedded = ~np.isnan(query_latent).any(1)
    predicted = np.full(mdata.n_obs, unknown_label, dtype=object)
    confidence = np.zeros(mdata.n_obs)
    if embedded.any():
        distances, neighbours = index.kneighbors(query_latent[embedded])
        winner, agreement = _vote(codes[neighbours], len(categories))
        assigned = categories[winner].to_numpy(dtype=object)
        outside = agreement < min_confidence
        if distance_quantile is not None:
            # each reference cell's own distances, leaving the cell itself out
            own, _ = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(fitted).kneighbors(fitted)
            threshold = np.quantile(own[:, 1:].mean(1), distance_quantile)
            outside |= distances.mean(1) > threshold
        assigned[outside] = unknown_label
        predicted[embedded] = assigned
        confidence[embedded] = agreement

    result = pd.DataFrame(
        {
            f"{labels_key}_pred": pd.Categorical(predicted, categories=[*categories, unknown_label]),
            f"{labels_key}_pred_confidence": confidence,
        },
        index=mdata.obs_names.copy(),
    )
    for column in result.columns:
        mdata.obs[column] = result[column].to_numpy() if column.endswith("confidence") else result[column].values
    logger.info(
        "transfer_labels: %d query cells, %d reported as %r",
        mdata.n_obs,
        int((predicted == unknown_label).sum()),
        unknown_label,
    )
    return result
