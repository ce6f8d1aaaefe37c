"""Each metric against an independent reference implementation, plus edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from sklearn.metrics import average_precision_score, mean_squared_error, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from pengster import metrics


def dummy_pair(n_cells: int = 60, n_features: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Counts-like observed values, a noisy prediction of them, a constant feature and ties."""
    rng = np.random.default_rng(seed)
    observed = rng.poisson(rng.uniform(1.0, 5.0, size=n_features), size=(n_cells, n_features)).astype(float)
    predicted = observed + rng.normal(scale=1.5, size=observed.shape)
    observed[:, 3] = 2.0
    predicted[:, 5] = np.round(predicted[:, 5])
    return observed, predicted


def dummy_binary(n_cells: int = 80, n_features: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse-ish accessibility, a score with ties, and features with a single class."""
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0.05, 0.5, size=n_features)
    observed = (rng.uniform(size=(n_cells, n_features)) < probability).astype(float)
    score = np.round(observed * 0.3 + rng.uniform(size=observed.shape), 1)
    observed[:, 2] = 0.0
    observed[:, 7] = 1.0
    return observed, score


def reference_correlations(observed, predicted, correlation, axis):
    n = observed.shape[1 - axis]
    scores = np.full(n, np.nan)
    for i in range(n):
        a, b = (observed[:, i], predicted[:, i]) if axis == 0 else (observed[i], predicted[i])
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            scores[i] = correlation(a, b)[0]
    return scores


def brute_force_closer(x, y):
    n = x.shape[0]
    counts = np.zeros(n, dtype=int)
    for i in range(n):
        true_distance = np.linalg.norm(x[i] - y[i])
        for j in range(n):
            if j != i and np.linalg.norm(x[i] - y[j]) < true_distance:
                counts[i] += 1
    return counts


def test_rmse():
    observed, predicted = dummy_pair()
    expected = np.sqrt(mean_squared_error(observed, predicted))
    assert np.isclose(metrics.rmse(observed, predicted), expected)
    assert np.isclose(metrics.rmse(sparse.csr_matrix(observed), predicted), expected)
    assert np.isclose(
        metrics.rmse(observed[:, 0], predicted[:, 0]), np.sqrt(mean_squared_error(observed[:, 0], predicted[:, 0]))
    )
    assert metrics.rmse(observed, observed) == 0.0


@pytest.mark.parametrize(
    ("metric", "correlation", "axis"),
    [
        (metrics.pearson_per_feature, stats.pearsonr, 0),
        (metrics.pearson_per_cell, stats.pearsonr, 1),
        (metrics.spearman_per_feature, stats.spearmanr, 0),
        (metrics.spearman_per_cell, stats.spearmanr, 1),
    ],
)
def test_correlation_matches_scipy(metric, correlation, axis):
    observed, predicted = dummy_pair()
    if axis == 1:
        observed[4] = 1.0  # a constant cell
    expected = reference_correlations(observed, predicted, correlation, axis)
    assert np.isnan(expected).sum() == 1
    scores = metric(observed, predicted, reduce=None)
    assert np.allclose(scores, expected, equal_nan=True)
    assert np.isclose(metric(observed, predicted), np.nanmean(expected))
    assert np.isclose(metric(observed, predicted, reduce="median"), np.nanmedian(expected))
    # Sparse observed and DataFrame predicted give the same numbers as dense.
    assert np.allclose(
        metric(sparse.csr_matrix(observed), pd.DataFrame(predicted), reduce=None), scores, equal_nan=True
    )
    assert np.isclose(metric(predicted, predicted), 1.0)
    assert np.isclose(metric(predicted, -predicted), -1.0)


def test_correlation_is_blockwise_invariant(monkeypatch):
    observed, predicted = dummy_pair(n_features=40)
    whole = metrics.spearman_per_feature(sparse.csr_matrix(observed), predicted, reduce=None)
    monkeypatch.setattr("pengster.metrics._utils._BLOCK_ENTRIES", 7 * observed.shape[0])
    assert np.allclose(
        metrics.spearman_per_feature(sparse.csr_matrix(observed), predicted, reduce=None), whole, equal_nan=True
    )
    assert np.allclose(
        metrics.pearson_per_cell(observed, sparse.csr_matrix(predicted), reduce=None),
        metrics.pearson_per_cell(observed, predicted, reduce=None),
        equal_nan=True,
    )


def test_constant_feature_with_float_noise_is_skipped():
    observed, predicted = dummy_pair()
    observed[:, 0] = 0.1  # its mean is not exactly 0.1, a centred vector would not be exactly 0
    assert np.isnan(metrics.pearson_per_feature(observed, predicted, reduce=None)[0])


def test_all_constant_warns_and_returns_nan():
    with pytest.warns(UserWarning, match="Every feature was skipped"):
        assert np.isnan(metrics.pearson_per_feature(np.ones((5, 3)), np.arange(15.0).reshape(5, 3)))


def test_correlation_near_zero_on_random_data():
    rng = np.random.default_rng(1)
    observed, predicted = rng.normal(size=(2000, 50)), rng.normal(size=(2000, 50))
    assert abs(metrics.pearson_per_feature(observed, predicted)) < 0.01
    assert abs(metrics.spearman_per_cell(observed, predicted)) < 0.03


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"observed \(3, 2\), predicted \(3, 3\)"):
        metrics.pearson_per_feature(np.ones((3, 2)), np.ones((3, 3)))


def test_auroc_per_feature_matches_sklearn():
    observed, score = dummy_binary()
    expected = np.array(
        [roc_auc_score(observed[:, i], score[:, i]) if 0 < observed[:, i].mean() < 1 else np.nan for i in range(12)]
    )
    scores = metrics.auroc_per_feature(observed, score, reduce=None)
    assert np.allclose(scores, expected, equal_nan=True)
    assert np.isnan(scores[[2, 7]]).all()
    assert np.isclose(metrics.auroc_per_feature(sparse.csr_matrix(observed), score), np.nanmean(expected))
    # Counts are binarized: nonzero is positive.
    assert np.allclose(metrics.auroc_per_feature(observed * 3, score, reduce=None), expected, equal_nan=True)
    assert np.isclose(metrics.auroc_per_feature(observed, observed + 0.0), 1.0)


def test_average_precision_per_feature_matches_sklearn():
    observed, score = dummy_binary()
    expected = np.array(
        [
            average_precision_score(observed[:, i], score[:, i]) if 0 < observed[:, i].mean() < 1 else np.nan
            for i in range(12)
        ]
    )
    scores = metrics.average_precision_per_feature(sparse.csr_matrix(observed), score, reduce=None)
    assert np.allclose(scores, expected, equal_nan=True)
    assert np.isclose(metrics.average_precision_per_feature(observed, score), np.nanmean(expected))
    assert np.isclose(metrics.average_precision_per_feature(observed, observed), 1.0)


def test_global_auroc_matches_sklearn():
    observed, score = dummy_binary()
    expected = roc_auc_score(observed.ravel(), score.ravel())
    assert np.isclose(metrics.auroc(observed, score), expected)
    assert np.isclose(metrics.auroc(sparse.csr_matrix(observed), pd.DataFrame(score)), expected)
    assert np.isclose(metrics.auroc(observed, observed), 1.0)


def test_auroc_near_chance_on_random_data():
    rng = np.random.default_rng(2)
    observed = rng.uniform(size=(3000, 40)) < 0.2
    score = rng.uniform(size=observed.shape)
    assert abs(metrics.auroc_per_feature(observed, score) - 0.5) < 0.01
    assert abs(metrics.auroc(observed, score) - 0.5) < 0.01
    assert abs(metrics.average_precision_per_feature(observed, score) - 0.2) < 0.01


def test_foscttm_and_matching_accuracy_match_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    y = x + rng.normal(scale=0.8, size=x.shape)
    closer_x, closer_y = brute_force_closer(x, y), brute_force_closer(y, x)
    expected = np.mean(np.concatenate([closer_x, closer_y]) / (len(x) - 1))
    assert 0.01 < expected < 0.4  # neither perfect nor chance, so the test can fail
    assert np.isclose(metrics.foscttm(x, y), expected)
    for k in (1, 3):
        assert np.isclose(metrics.matching_accuracy(x, y, k=k), np.mean(np.concatenate([closer_x, closer_y]) < k))


def test_matching_accuracy_matches_sklearn_neighbours():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 4))
    y = x + rng.normal(scale=0.5, size=x.shape)
    k = 5
    hits = []
    for query, reference in ((x, y), (y, x)):
        neighbours = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query, return_distance=False)
        hits.append((neighbours == np.arange(len(x))[:, None]).any(axis=1))
    assert np.isclose(metrics.matching_accuracy(x, y, k=k), np.concatenate(hits).mean())


def test_foscttm_edge_cases(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 8))
    assert metrics.foscttm(x, x) == 0.0
    assert metrics.matching_accuracy(x, x) == 1.0
    random_foscttm = metrics.foscttm(x, rng.normal(size=x.shape))
    assert abs(random_foscttm - 0.5) < 0.05
    y = x + rng.normal(scale=2.0, size=x.shape)
    whole = metrics.foscttm(x, y)
    monkeypatch.setattr("pengster.metrics._foscttm._BLOCK_ENTRIES", 7 * len(x))
    assert metrics.foscttm(pd.DataFrame(x), sparse.csr_matrix(y)) == whole
    with pytest.raises(ValueError, match="same cells"):
        metrics.foscttm(x, y[:10])


def test_match_score():
    rng = np.random.default_rng(6)
    matrix = rng.uniform(size=(30, 30))
    matrix[4] = 0.0
    normalized = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1e-300)
    expected = sum(normalized[i, i] for i in range(30)) / 30
    assert np.isclose(metrics.match_score(matrix), expected)
    assert np.isclose(metrics.match_score(sparse.csr_matrix(matrix)), expected)
    assert np.isclose(metrics.match_score(5 * np.eye(30)), 1.0)
    assert np.isclose(metrics.match_score(np.ones((30, 30))), 1 / 30)
    with pytest.raises(ValueError, match="square"):
        metrics.match_score(np.ones((3, 4)))
    with pytest.raises(ValueError, match="negative"):
        metrics.match_score(-np.eye(3))


def test_marker_auroc():
    rng = np.random.default_rng(7)
    labels = np.repeat(["B", "T", "NK"], 40)
    predicted = pd.DataFrame(rng.normal(size=(120, 4)), columns=["CD19", "CD3", "CD56", "CD16"])
    predicted.loc[labels == "B", "CD19"] += 2.0
    markers = {"B": "CD19", "NK": ["CD56", "CD16"], "T": ["CD3", "CD4"], "Mono": "CD14"}
    with pytest.warns(UserWarning, match="CD4"):
        result = metrics.marker_auroc(predicted, labels, markers)
    assert list(result.index) == ["B", "NK", "T"]  # Mono is absent from labels
    assert np.isclose(result["B"], roc_auc_score(labels == "B", predicted["CD19"]))
    assert np.isclose(result["NK"], roc_auc_score(labels == "NK", predicted[["CD56", "CD16"]].mean(axis=1)))
    assert np.isclose(result["T"], roc_auc_score(labels == "T", predicted["CD3"]))
    assert result["B"] > 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_sparse = metrics.marker_auroc(
            sparse.csr_matrix(predicted.to_numpy()), labels, markers, feature_names=list(predicted.columns)
        )
    pd.testing.assert_series_equal(from_sparse, result)
    with pytest.raises(ValueError, match="feature_names"):
        metrics.marker_auroc(predicted.to_numpy(), labels, markers)


def test_interval_coverage():
    rng = np.random.default_rng(8)
    mean = rng.normal(size=(400, 50))
    std = rng.uniform(0.5, 2.0, size=mean.shape)
    observed = mean + std * rng.normal(size=mean.shape)
    for level in (0.5, 0.9):
        z = stats.norm.ppf(0.5 + level / 2)
        expected = np.mean((observed >= mean - z * std) & (observed <= mean + z * std))
        coverage = metrics.interval_coverage(observed, mean, std, level=level)
        assert coverage == expected
        assert abs(coverage - level) < 0.01  # calibrated by construction
    assert metrics.interval_coverage(sparse.csr_matrix(mean), mean, np.zeros_like(mean)) == 1.0
    assert metrics.interval_coverage(observed, mean, std / 10) < 0.2
    with pytest.raises(ValueError, match="level"):
        metrics.interval_coverage(observed, mean, std, level=1.0)
