"""Scores of one prediction, one embedding, one pair of single-modality embeddings, one predictive interval."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from pengster import metrics

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = {"rmse", "foscttm", "coverage_90_error", "coverage_50_error", "train_seconds"}
NEUTRAL = {"coverage_50", "coverage_90"}


def higher_is_better(metric: str) -> bool | None:
    """Direction of a metric; None for raw coverages (closer to nominal is better, see the ``_error`` ones)."""
    if metric in NEUTRAL:
        return None
    return metric not in LOWER_IS_BETTER


def _measured_columns(observed: np.ndarray) -> np.ndarray:
    """Features measured in every scored cell (mosaic RNA is NaN where the dataset lacked the gene)."""
    return ~np.isnan(observed).any(0)


def prediction_scores(observed: np.ndarray, predicted: np.ndarray, *, binary: bool) -> dict[str, float]:
    """NeurIPS 2021 prediction metrics on the scored scale; AUROC and average precision for binary targets."""
    keep = _measured_columns(observed)
    observed, predicted = observed[:, keep], np.asarray(predicted, dtype=np.float64)[:, keep]
    scores = {
        "pearson_per_feature": metrics.pearson_per_feature(observed, predicted),
        "pearson_per_cell": metrics.pearson_per_cell(observed, predicted),
        "spearman_per_feature": metrics.spearman_per_feature(observed, predicted),
        "spearman_per_cell": metrics.spearman_per_cell(observed, predicted),
        "rmse": metrics.rmse(observed, predicted),
    }
    if binary:
        scores["auroc"] = metrics.auroc_per_feature(observed > 0, predicted)
        scores["average_precision"] = metrics.average_precision_per_feature(observed > 0, predicted)
        scores.update(overall_scores(observed, predicted, seed=0))
    return scores


OVERALL_PAIRS = 2_000_000


def overall_scores(observed: np.ndarray, predicted: np.ndarray, *, seed: int) -> dict[str, float]:
    """AUROC and average precision of all cell x peak pairs ranked together (a random subset of pairs).

    Per-peak AUROC asks whether a method ranks the cells within each peak; this asks whether its probabilities are
    comparable across peaks too (a constant per peak, each peak's open rate, scores 0.5 per peak but well here).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    flat = rng.choice(observed.size, min(OVERALL_PAIRS, observed.size), replace=False)
    truth, score = observed.ravel()[flat] > 0, predicted.ravel()[flat]
    return {
        "overall_auroc": float(roc_auc_score(truth, score)),
        "overall_average_precision": float(average_precision_score(truth, score)),
    }


def coverage_scores(observed: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Fraction of held-out values inside the Gaussian 50% and 90% predictive intervals."""
    keep = _measured_columns(observed)
    observed, mean, std = observed[:, keep], mean[:, keep], std[:, keep]
    scores = {}
    for level in (0.5, 0.9):
        coverage = metrics.interval_coverage(observed, mean, std, level=level)
        scores[f"coverage_{int(level * 100)}"] = coverage
        scores[f"coverage_{int(level * 100)}_error"] = abs(coverage - level)
    return scores


def marker_scores(predicted: pd.DataFrame, cell_types: np.ndarray, groups: dict[str, tuple[list, list]]) -> dict:
    """Mean over cell groups of the AUROC of the predicted marker protein for that group against all other cells.

    ``groups``: group name -> (cell types in the group, marker proteins); groups absent from the cells are skipped.
    """
    per_group = {}
    for group, (types, markers) in groups.items():
        members = np.isin(cell_types, types)
        if members.sum() == 0 or members.all():
            continue
        labels = np.where(members, group, "rest")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            value = metrics.marker_auroc(predicted, labels, {group: markers})
        if group in value.index:
            per_group[group] = float(value[group])
    scores = {"marker_auroc": float(np.mean(list(per_group.values())))}
    scores.update({f"marker_auroc_{group}": value for group, value in per_group.items()})
    return scores


def matching_scores(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """FOSCTTM and top-1 / top-10 matching accuracy between two embeddings of the same cells."""
    return {
        "foscttm": metrics.foscttm(x, y),
        "top1_matching": metrics.matching_accuracy(x, y, k=1),
        "top10_matching": metrics.matching_accuracy(x, y, k=10),
    }


def _exact_neighbours(latent: np.ndarray, n_neighbors: int):
    """Exact kNN (scikit-learn) as scib-metrics' NeighborsResults; no numba compilation, fine at these sizes."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(latent).kneighbors(latent)
    return NeighborsResults(indices=indices, distances=distances)


def scib_scores(
    latent: np.ndarray, labels: np.ndarray, batch: np.ndarray, *, seed: int = 0, kbet: bool = True
) -> dict[str, float]:
    """scib-metrics on one embedding; aggregate 0.6 bio conservation + 0.4 batch correction, unscaled.

    Bio: Leiden NMI and ARI, cell-type silhouette, isolated labels, cLISI. Batch: batch silhouette, iLISI, kBET,
    graph connectivity. A metric that fails on a small set (kBET on tiny cell types) is left out of its mean;
    ``kbet=False`` leaves kBET out (its first call compiles for about a minute; the quick run skips it).

    scib-metrics leaves torch with one intra-op thread per core; the benchmark's setting is put back, so that the
    models trained after a scoring run with the threads the benchmark states.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        return _scib_scores(latent, labels, batch, seed=seed, kbet=kbet)
    finally:
        torch.set_num_threads(threads)


def _scib_scores(latent, labels, batch, *, seed: int, kbet: bool) -> dict[str, float]:
    import scib_metrics

    latent = np.asarray(latent, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    batch = np.asarray(batch).astype(str)
    neighbours = _exact_neighbours(latent, min(90, latent.shape[0] - 1))
    bio, batch_scores = {}, {}
    clustering = scib_metrics.nmi_ari_cluster_labels_leiden(neighbours.subset_neighbors(15), labels, seed=seed)
    bio["nmi"], bio["ari"] = float(clustering["nmi"]), float(clustering["ari"])
    bio["silhouette_label"] = float(scib_metrics.silhouette_label(latent, labels))
    bio["isolated_labels"] = float(scib_metrics.isolated_labels(latent, labels, batch))
    bio["clisi"] = float(scib_metrics.clisi_knn(neighbours, labels))
    if len(np.unique(batch)) > 1:
        batch_scores["silhouette_batch"] = float(scib_metrics.silhouette_batch(latent, labels, batch))
        batch_scores["ilisi"] = float(scib_metrics.ilisi_knn(neighbours, batch))
        try:
            if kbet:
                batch_scores["kbet"] = float(
                    scib_metrics.kbet_per_label(neighbours.subset_neighbors(50), batch, labels)
                )
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as error:
            logger.warning("kBET failed: %s", error)
        batch_scores["graph_connectivity"] = float(
            scib_metrics.graph_connectivity(neighbours.subset_neighbors(15), labels)
        )
    scores = {**bio, **batch_scores}
    scores["bio_conservation"] = float(np.nanmean(list(bio.values())))
    if batch_scores:
        scores["batch_correction"] = float(np.nanmean(list(batch_scores.values())))
        scores["scib_aggregate"] = 0.6 * scores["bio_conservation"] + 0.4 * scores["batch_correction"]
    else:
        scores["scib_aggregate"] = scores["bio_conservation"]
    return scores
