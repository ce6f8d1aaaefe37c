"""Baselines: per-feature train mean, TruncatedSVD + ridge, kNN regression in PCA/LSI space.

Each learns ``source -> target`` on the training cells whose source and target are both visible, on the scored
(normalized) scale, and predicts the target of the query cells from their source alone.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KNeighborsRegressor

N_COMPONENTS = 50
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
KNN_NEIGHBOURS = (5, 10, 20, 40)


def tf_idf(binary: np.ndarray, idf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TF-IDF of binary accessibility (as in Signac's LSI); returns the matrix and the IDF of the fit cells."""
    term = binary / binary.sum(1, keepdims=True).clip(1)
    if idf is None:
        idf = binary.shape[0] / binary.sum(0).clip(1)
    return np.log1p(term * idf * 1e4), idf


class _Features:
    """Source features for one source modality: LSI for ATAC, the scored values otherwise."""

    def __init__(self, modality: str, *, centred: bool, seed: int):
        self.modality = modality
        self.centred = centred
        self.seed = seed

    def fit_transform(self, values: np.ndarray) -> np.ndarray:
        self.idf = None
        if self.modality == "atac":
            values, self.idf = tf_idf(values)
        n_components = max(1, min(N_COMPONENTS, values.shape[1] - 1, values.shape[0] - 1))
        self.reducer = (
            PCA(n_components, random_state=self.seed)
            if self.centred and self.modality != "atac"
            else TruncatedSVD(n_components, random_state=self.seed)
        )
        return self.reducer.fit_transform(values)

    def transform(self, values: np.ndarray) -> np.ndarray:
        if self.modality == "atac":
            values, _ = tf_idf(values, self.idf)
        return self.reducer.transform(values)


def predict_mean(train_target: np.ndarray, n_query: int) -> np.ndarray:
    """The per-feature mean of the training cells, for every query cell."""
    return np.repeat(np.nanmean(train_target, axis=0, keepdims=True), n_query, axis=0)


def predict_ridge(
    source_modality: str, train_source: np.ndarray, train_target: np.ndarray, query_source: np.ndarray, *, seed: int
) -> np.ndarray:
    """TruncatedSVD (LSI for ATAC) of the source, then ridge regression with alpha chosen by leave-one-out."""
    features = _Features(source_modality, centred=False, seed=seed)
    train = features.fit_transform(train_source)
    scale = train.std(0).clip(1e-8)
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit(train / scale, train_target)
    return model.predict(features.transform(query_source) / scale)


def predict_knn(
    source_modality: str, train_source: np.ndarray, train_target: np.ndarray, query_source: np.ndarray, *, seed: int
) -> np.ndarray:
    """Mean target of the k nearest training cells in PCA space (LSI for ATAC); k by 3-fold CV on training cells."""
    features = _Features(source_modality, centred=True, seed=seed)
    train = features.fit_transform(train_source)
    if source_modality == "atac":
        # the first LSI component tracks depth, not cell state
        train = train[:, 1:]
    neighbours = [k for k in KNN_NEIGHBOURS if k < 0.6 * train.shape[0]] or [1]
    search = GridSearchCV(
        KNeighborsRegressor(),
        {"n_neighbors": neighbours},
        cv=KFold(3, shuffle=True, random_state=seed),
        scoring="neg_mean_squared_error",
    )
    search.fit(train, train_target)
    query = features.transform(query_source)
    if source_modality == "atac":
        query = query[:, 1:]
    return search.best_estimator_.predict(query)
