"""Reference mapping on real data: SNARE-seq2 libraries 09G and 09H mapped onto a reference of 09A-09F.

For each seed: train a reference on libraries 09A-09F (RNA + ATAC, the 5,000 peaks most often open in the
reference nuclei), map the query libraries 09G and 09H (RNA + ATAC) with scArches-style surgery, and score

- label transfer: 15-nearest-neighbour vote from reference to query cells in the latent (accuracy, macro F1
  against the annotated ``cell_type``);
- batch mixing of query with reference: scib's batch ASW (``1 - |silhouette|`` of reference vs query within each
  cell type, averaged over types) :cite:p:`luecken2022scib`;
- cross-modal prediction for the query cells: RNA predicted from their ATAC alone (mean per-gene Pearson against
  log1p counts per 10k) and ATAC from their RNA alone (AUROC over all entries).

Methods: ``pengster`` (JointVAE.load_query_data + pengster.tl.transfer_labels with the unknown rules off, i.e. a
plain kNN vote), ``multivi`` (scvi-tools' MULTIVI.load_query_data, weight decay 0 as in the scvi-tools scArches
tutorial; modality-only inputs by zeroing the other modality, which MULTIVI reads as unmeasured), and for label
transfer ``pca_knn`` (PCA of log-normalized RNA of reference and query together, same kNN vote; no mapping).

Usage (one CPU thread, as recorded in the results)::

    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/query.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from sklearn.metrics import accuracy_score, f1_score, silhouette_samples
from sklearn.neighbors import KNeighborsClassifier

import pengster
from pengster import metrics
from pengster.model import JointVAE

QUERY_LIBRARIES = ["09G", "09H"]
N_PEAKS = 5000
N_NEIGHBORS = 15
DATASET = "snareseq2_mop"


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float64)


def log_normalized(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4)


def split() -> tuple[md.MuData, md.MuData]:
    """Reference (09A-09F) and query (09G, 09H) MuData with RNA and the reference's most open peaks."""
    snare = pengster.datasets.mop_snareseq2()
    is_query = snare.obs["batch"].astype(str).isin(QUERY_LIBRARIES).to_numpy()
    atac = snare.mod["atac"]
    frequency = np.asarray((atac.X[~is_query] > 0).mean(axis=0)).ravel()
    peaks = atac.var_names[np.argsort(-frequency)[:N_PEAKS]]
    parts = []
    for cells in (~is_query, is_query):
        part = md.MuData({"rna": snare.mod["rna"][cells].copy(), "atac": atac[cells, peaks].copy()})
        part.obs = snare.obs.loc[part.obs_names, ["batch", "cell_type"]].copy()
        part.obs["batch"] = part.obs["batch"].astype(str)
        parts.append(part)
    return parts[0], parts[1]


def batch_asw(latent: np.ndarray, is_query: np.ndarray, labels: np.ndarray) -> float:
    """scib's batch ASW: per cell type, mean of ``1 - |silhouette(batch)|``; averaged over cell types."""
    scores = []
    for label in np.unique(labels):
        rows = labels == label
        if len(np.unique(is_query[rows])) < 2 or rows.sum() < 3:
            continue
        scores.append(np.mean(1.0 - np.abs(silhouette_samples(latent[rows], is_query[rows]))))
    return float(np.mean(scores))


def label_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0)),
    }


def knn_vote(reference_latent: np.ndarray, labels: np.ndarray, query_latent: np.ndarray) -> np.ndarray:
    return KNeighborsClassifier(n_neighbors=N_NEIGHBORS).fit(reference_latent, labels).predict(query_latent)


def cross_modal(observed_rna, predicted_rna, observed_atac, predicted_atac) -> dict[str, float]:
    return {
        "atac_to_rna_pearson_per_gene": float(metrics.pearson_per_feature(observed_rna, predicted_rna)),
        "rna_to_atac_auroc": float(metrics.auroc(observed_atac > 0, predicted_atac)),
    }


def run_pengster(reference, query, *, seed: int, epochs: tuple[int, int]) -> dict:
    scvi.settings.seed = seed
    JointVAE.setup_mudata(reference, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    model = JointVAE(reference, n_hidden=128)
    model.train(max_epochs=epochs[0], batch_size=256, enable_progress_bar=False)
    query_model = JointVAE.load_query_data(query, model)
    query_model.train(max_epochs=epochs[1], batch_size=256, enable_progress_bar=False)
    mapped = query_model.mdata
    result = pengster.tl.transfer_labels(
        query_model, mapped, labels_key="cell_type", reference=reference, min_confidence=0.0, distance_quantile=None
    )
    latent = np.concatenate([query_model.get_latent_representation(reference), query_model.get_latent_representation()])
    return {
        "predicted": result["cell_type_pred"].astype(str).to_numpy(),
        "latent": latent,
        "rna": query_model.predict(target="rna", source="atac").to_numpy(),
        "atac": query_model.predict(target="atac", source="rna").to_numpy(),
    }


def _without(mdata: md.MuData, modality: str) -> md.MuData:
    """A copy of ``mdata`` whose ``modality`` counts are zero: MULTIVI reads that as not measured."""
    out = mdata.copy()
    out.mod[modality].X = out.mod[modality].X * 0
    return out


def run_multivi(reference, query, *, seed: int, epochs: tuple[int, int]) -> dict:
    scvi.settings.seed = seed
    reference, query = reference.copy(), query.copy()
    scvi.model.MULTIVI.setup_mudata(reference, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = scvi.model.MULTIVI(reference)
    model.train(max_epochs=epochs[0], batch_size=256, enable_progress_bar=False)
    query_model = scvi.model.MULTIVI.load_query_data(query, model)
    query_model.train(
        max_epochs=epochs[1], batch_size=256, enable_progress_bar=False, plan_kwargs={"weight_decay": 0.0}
    )
    reference_latent = query_model.get_latent_representation(reference)
    query_latent = query_model.get_latent_representation(query)
    expression = query_model.get_normalized_expression(_without(query, "rna"), return_numpy=True)
    accessibility = query_model.get_normalized_accessibility(_without(query, "atac"), return_numpy=True)
    return {
        "predicted": knn_vote(reference_latent, reference.obs["cell_type"].astype(str).to_numpy(), query_latent),
        "latent": np.concatenate([reference_latent, query_latent]),
        "rna": log_normalized(dense(expression)),
        "atac": dense(accessibility),
    }


def run_pca_knn(reference, query, *, seed: int) -> dict:
    counts = np.concatenate([dense(reference.mod["rna"].X), dense(query.mod["rna"].X)])
    adata = sc.AnnData(log_normalized(counts))
    sc.pp.pca(adata, n_comps=30, random_state=seed)
    latent = adata.obsm["X_pca"]
    n_ref = reference.n_obs
    labels = reference.obs["cell_type"].astype(str).to_numpy()
    return {"predicted": knn_vote(latent[:n_ref], labels, latent[n_ref:]), "latent": latent}


def score(output: dict, reference, query) -> dict[str, float]:
    truth = query.obs["cell_type"].astype(str).to_numpy()
    scores = label_scores(truth, output["predicted"])
    is_query = np.r_[np.zeros(reference.n_obs, bool), np.ones(query.n_obs, bool)]
    labels = np.r_[reference.obs["cell_type"].astype(str).to_numpy(), truth]
    scores["batch_asw"] = batch_asw(output["latent"], is_query, labels)
    if "rna" in output:
        observed_rna = log_normalized(dense(query.mod["rna"].X))
        scores |= cross_modal(observed_rna, output["rna"], dense(query.mod["atac"].X), output["atac"])
    return scores


TASKS = {
    "accuracy": ("query_label_transfer", True),
    "macro_f1": ("query_label_transfer", True),
    "batch_asw": ("query_batch_mixing", True),
    "atac_to_rna_pearson_per_gene": ("query_atac_to_rna", True),
    "rna_to_atac_auroc": ("query_rna_to_atac", True),
}


def records(per_seed: dict[str, list[dict[str, float]]]) -> list[dict]:
    out = []
    for method, runs in per_seed.items():
        for metric in runs[0]:
            values = np.array([run[metric] for run in runs])
            task, higher = TASKS[metric]
            out.append(
                {
                    "dataset": DATASET,
                    "task": task,
                    "metric": metric,
                    "method": method,
                    "mean": round(float(values.mean()), 4),
                    "sd": round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4),
                    "n_seeds": len(values),
                    "main": metric in ("accuracy", "batch_asw", "atac_to_rna_pearson_per_gene", "rna_to_atac_auroc"),
                    "higher_is_better": higher,
                }
            )
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    frame = pd.DataFrame(rows)
    frame["value"] = frame["mean"].map("{:.3f}".format) + " ± " + frame["sd"].map("{:.3f}".format)
    methods = list(dict.fromkeys(frame["method"]))
    table = ["| task | metric | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for (task, metric), group in frame.groupby(["task", "metric"], sort=False):
        values = group.set_index("method")["value"]
        table.append(f"| {task} | {metric} | " + " | ".join(values.get(m, "") for m in methods) + " |")
    lines = [
        "# Reference mapping: SNARE-seq2 libraries 09G + 09H onto 09A-09F",
        "",
        f"`{meta['command']}`: {meta['n_seeds']} seeds, {meta['threads']} CPU thread, epochs reference/query "
        f"{meta['epochs']}, {meta['n_reference']} reference and {meta['n_query']} query nuclei, {N_PEAKS} peaks.",
        f"Wall time per seed (s): {meta['seconds']}.",
        "",
        "Mean ± sd over seeds; all metrics higher is better. Label transfer is a 15-NN vote in each latent.",
        "",
        *table,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reference-epochs", type=int, default=50)
    parser.add_argument("--query-epochs", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=["pengster", "multivi", "pca_knn"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    md.set_options(pull_on_update=False)
    scvi.settings.dl_num_workers = 0
    logging.getLogger("lightning").setLevel(logging.WARNING)
    epochs = (args.reference_epochs, args.query_epochs)
    reference, query = split()
    per_seed: dict[str, list[dict]] = {m: [] for m in args.methods}
    seconds: dict[str, list[float]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            start = time.perf_counter()
            if method == "pengster":
                output = run_pengster(reference.copy(), query.copy(), seed=seed, epochs=epochs)
            elif method == "multivi":
                output = run_multivi(reference, query, seed=seed, epochs=epochs)
            else:
                output = run_pca_knn(reference, query, seed=seed)
            seconds[method].append(round(time.perf_counter() - start, 1))
            per_seed[method].append(score(output, reference, query))
            print(method, seed, seconds[method][-1], per_seed[method][-1], flush=True)
    rows = records(per_seed)
    command = "python benchmarks/query.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--reference-epochs", str(epochs[0]), "--query-epochs", str(epochs[1])]
    )
    meta = {
        "command": command,
        "threads": torch.get_num_threads(),
        "epochs": list(epochs),
        "n_seeds": len(args.seeds),
        "n_reference": reference.n_obs,
        "n_query": query.n_obs,
        "seconds": seconds,
        "machine": platform.processor() or platform.machine(),
        "versions": {"pengster": pengster.__version__, "scvi-tools": scvi.__version__, "torch": torch.__version__},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "query.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "query.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
