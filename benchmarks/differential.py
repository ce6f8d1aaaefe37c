"""Differential analysis benchmark: DE of a modality the cells never measured, against DE where it was measured.

On the BMMC mosaic (a multiome run and a CITE-seq run; RNA is the only shared modality), for broad cell types present
in both runs (each type against the other cells of the same run):

- **protein**: pengster's ``differential_expression(modality="protein", source=["rna", "atac"])`` between multiome
  cells (no protein measured) against the measured protein of CITE-seq cells;
- **accessibility**: pengster's ``differential_accessibility(source="rna")`` between CITE-seq cells (no ATAC) against
  the measured peaks of multiome cells.

The measured reference is the log2 fold change of the measured means (protein: ``expm1`` of the CLR values; ATAC: the
fraction of cells with the peak open) and, for the top markers, scanpy's Wilcoxon test on the measured values. Scores
per cell type: Spearman correlation of the predicted and measured log fold changes over features, and the AUROC with
which the predicted log fold change ranks the measured top markers first. Also scored: a kNN baseline (the modality
imputed from the nearest cells of the other run in PCA of the shared genes, then Wilcoxon / fold change of means), the
same model's DE of the cells that measured the modality, and TOTALVI's protein DE on the CITE-seq cells themselves (a
ceiling: it sees the measured protein of the very cells it tests).

Calibration under the null: one cell type split at random into two halves; the share of features called DE at FDR
0.05. Stability: the called sets of models trained with different seeds (pairwise Jaccard).

Run (writes benchmarks/results/differential.json and differential.md)::

    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/differential.py

``--quick --out <folder>``: one seed, 3 epochs, fewer posterior samples (a smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _baselines, _tasks
from benchmarks._models import PengsterRunner, TotalviRunner

logger = logging.getLogger("benchmarks.differential")
RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2)
# TOTALVI's default on 600 cells is 400 epochs; the cap keeps the ceiling within the benchmark's CPU budget
TOTALVI_MAX_EPOCHS = 100
FDR = 0.05
CALLED = f"is_de_fdr_{FDR}"
# measured markers: the top features by Wilcoxon score among those up in the cell type at adjusted p < FDR
N_TOP = {"protein": 10, "atac": 20}
# peaks open in fewer multiome cells have no measurable fold change between a few dozen cells
MIN_OPEN_CELLS = 10
# added to the means of the linear scale before their log2 ratio (protein: expm1(CLR); ATAC: open fraction)
PSEUDOCOUNT = 0.01
# broad cell types with at least 30 cells in each run: group -> prefixes of the published cell type labels
GROUPS = {
    "B": ("B1 B", "Naive CD20+ B", "Transitional B"),
    "CD14 monocyte": ("CD14+ Mono",),
    "CD4 T": ("CD4+ T",),
    "CD8 T": ("CD8+ T",),
    "NK": ("NK",),
    "erythroid": ("Erythroblast", "Normoblast", "Proerythroblast"),
}
NULL_GROUP = "CD4 T"
RUNS = {"multiome": "bmmc_multiome", "cite": "bmmc_cite"}
# which cells predict each modality, and which measured it
PREDICTED_IN = {"protein": "multiome", "atac": "cite"}
MEASURED_IN = {"protein": "cite", "atac": "multiome"}
SOURCES = {"protein": ["rna", "atac"], "atac": ["rna"]}


# ------------------------------------------------------------------------------------------------ cells
def broad_groups(cell_types: pd.Series) -> pd.Series:
    """The :data:`GROUPS` name of each cell (``"other"`` for the rest)."""
    labels = pd.Series("other", index=cell_types.index)
    for group, prefixes in GROUPS.items():
        labels[cell_types.astype(str).str.startswith(prefixes)] = group
    return labels


def null_halves(obs: pd.DataFrame, run: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two random halves of :data:`NULL_GROUP`'s cells of ``run``, as boolean masks over ``obs``."""
    cells = np.flatnonzero((obs["dataset"] == RUNS[run]).to_numpy() & (obs["group"] == NULL_GROUP).to_numpy())
    shuffled = np.random.default_rng(seed).permutation(cells)
    half1, half2 = np.zeros(len(obs), dtype=bool), np.zeros(len(obs), dtype=bool)
    half1[shuffled[: len(cells) // 2]] = True
    half2[shuffled[len(cells) // 2 :]] = True
    return half1, half2


# ------------------------------------------------------------------------------------------------ statistics
def log_fold_change(linear: np.ndarray, mask1: np.ndarray, mask2: np.ndarray) -> np.ndarray:
    """log2 of the ratio of the means of ``linear`` (cells x features) over two groups of rows."""
    mean1, mean2 = linear[mask1].mean(0), linear[mask2].mean(0)
    return np.log2((mean1 + PSEUDOCOUNT) / (mean2 + PSEUDOCOUNT))


def wilcoxon(values: np.ndarray, mask1: np.ndarray, mask2: np.ndarray) -> pd.DataFrame:
    """scanpy's Wilcoxon test of rows ``mask1`` against rows ``mask2``: ``scores`` and ``pvals_adj`` per feature."""
    import scanpy as sc

    rows = mask1 | mask2
    adata = ad.AnnData(np.asarray(values[rows], dtype=np.float32))
    adata.var_names = [f"f{i}" for i in range(values.shape[1])]
    adata.obs["side"] = pd.Categorical(np.where(mask1[rows], "in", "out"))
    sc.tl.rank_genes_groups(adata, "side", groups=["in"], reference="out", method="wilcoxon", tie_correct=True)
    table = sc.get.rank_genes_groups_df(adata, group="in").set_index("names").reindex(adata.var_names)
    return table[["scores", "pvals_adj"]].reset_index(drop=True)


def top_markers(test: pd.DataFrame, n_top: int) -> np.ndarray:
    """Boolean mask of the ``n_top`` features with the highest Wilcoxon score among those up at adjusted p < FDR."""
    up = (test["pvals_adj"] < FDR) & (test["scores"] > 0)
    chosen = test["scores"].where(up).nlargest(n_top).index
    mask = np.zeros(len(test), dtype=bool)
    mask[chosen] = True
    return mask


def agreement(predicted_lfc: np.ndarray, measured_lfc: np.ndarray, markers: np.ndarray) -> dict[str, float]:
    """Spearman of the log fold changes, and AUROC of the predicted ones for the measured top markers."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(markers, predicted_lfc) if 0 < markers.sum() < len(markers) else np.nan
    return {"spearman_lfc": float(spearmanr(predicted_lfc, measured_lfc).statistic), "top_marker_auroc": float(auroc)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else np.nan


# ------------------------------------------------------------------------------------------------ the data
class Mosaic:
    """The BMMC mosaic with broad groups, measured values per run and the features each score uses."""

    def __init__(self) -> None:
        self.study = _tasks.bmmc_mosaic()
        self.study.obs["group"] = broad_groups(self.study.obs["cell_type"])
        self.obs = self.study.obs
        self.cells = {run: self.obs.index[(self.obs["dataset"] == name).to_numpy()] for run, name in RUNS.items()}
        measured = {"protein": self.study.truth("protein", self.cells["cite"])}
        measured["atac"] = self.study.truth("atac", self.cells["multiome"])
        peaks = (measured["atac"] > 0).sum(0) >= MIN_OPEN_CELLS
        self.features = {"protein": np.ones(measured["protein"].shape[1], dtype=bool), "atac": peaks}
        # the linear scale of the fold changes: expm1 of CLR (counts over their geometric mean) and open fractions
        self.measured = {"protein": measured["protein"], "atac": measured["atac"][:, peaks]}
        self.linear = {"protein": np.expm1(self.measured["protein"]), "atac": self.measured["atac"]}
        self.names = {m: self.study.counts[m].var_names[self.features[m]] for m in self.measured}

    def masks(self, run: str, group: str) -> tuple[np.ndarray, np.ndarray]:
        """The cells of ``group`` and the other cells of ``run``, over the run's cells."""
        labels = self.obs.loc[self.cells[run], "group"].to_numpy()
        return labels == group, labels != group

    def knn_imputed(self, modality: str, seed: int) -> np.ndarray:
        """``modality`` of the cells that did not measure it: kNN regression from the run that did, on shared genes."""
        shared = self.study.measured["rna"].all(axis=1).to_numpy()
        train = self.study.truth("rna", self.cells[MEASURED_IN[modality]])[:, shared]
        query = self.study.truth("rna", self.cells[PREDICTED_IN[modality]])[:, shared]
        return _baselines.predict_knn("rna", train, self.measured[modality], query, seed=seed)


# ------------------------------------------------------------------------------------------------ the methods
def pengster_de(model, obs, modality, mask1, mask2, *, source, de_kwargs) -> pd.DataFrame:
    """pengster's test of ``modality`` between two groups of cells (boolean masks over the model's cells)."""
    if modality == "atac":
        return model.differential_accessibility(idx1=mask1, idx2=mask2, source=source, silent=True, **de_kwargs)
    return model.differential_expression(
        idx1=mask1, idx2=mask2, modality=modality, source=source, silent=True, **de_kwargs
    )


def _over(obs: pd.DataFrame, cells: pd.Index, mask: np.ndarray) -> np.ndarray:
    """A mask over ``cells`` as a mask over all of ``obs``."""
    out = np.zeros(len(obs), dtype=bool)
    out[obs.index.get_indexer(cells[mask])] = True
    return out


def run_seed(data: Mosaic, seed: int, *, quick: bool) -> tuple[list[dict], list[dict], dict]:
    """Train pengster (package defaults) and TOTALVI with ``seed``; return agreement rows, null rows, called sets."""
    import scvi

    de_kwargs = {"n_samples_overall": 500} if quick else {}
    start = time.perf_counter()
    runner = PengsterRunner(train_kwargs={"batch_size": None})
    runner.fit(data.study, seed=seed, max_epochs=3 if quick else None)
    model, obs = runner.model, runner.mdata.obs
    logger.info("seed %d: pengster trained, %d epochs in %.0f s", seed, runner.n_epochs, time.perf_counter() - start)
    scvi.settings.seed = seed
    rows, called = [], {}
    groups = list(GROUPS)[:2] if quick else list(GROUPS)
    for modality, group in itertools.product(("protein", "atac"), groups):
        measured_mask = data.masks(MEASURED_IN[modality], group)
        measured_lfc = log_fold_change(data.linear[modality], *measured_mask)
        markers = top_markers(wilcoxon(data.measured[modality], *measured_mask), N_TOP[modality])
        for method, run, source in (
            ("pengster", PREDICTED_IN[modality], SOURCES[modality]),
            ("pengster (measured cells)", MEASURED_IN[modality], None),
        ):
            mask1, mask2 = (_over(obs, data.cells[run], m) for m in data.masks(run, group))
            table = pengster_de(model, obs, modality, mask1, mask2, source=source, de_kwargs=de_kwargs)
            table = table.loc[data.names[modality]]
            scores = agreement(table["lfc_mean"].to_numpy(), measured_lfc, markers)
            rows.append({"modality": modality, "group": group, "method": method, "cells": run, "seed": seed, **scores})
            called[(modality, run, group)] = set(table.index[table[CALLED].to_numpy()])
    logger.info("seed %d: agreement scored in %.0f s", seed, time.perf_counter() - start)
    rows.extend(_knn_rows(data, seed, groups))
    rows.extend(_totalvi_rows(data, seed, groups, quick=quick))
    null = _null_rows(data, model, obs, seed, de_kwargs)
    logger.info("seed %d: done in %.0f s", seed, time.perf_counter() - start)
    return rows, null, called


def _knn_rows(data: Mosaic, seed: int, groups: list[str]) -> list[dict]:
    rows = []
    for modality in ("protein", "atac"):
        imputed = data.knn_imputed(modality, seed)
        linear = np.expm1(imputed) if modality == "protein" else np.clip(imputed, 0, None)
        run = PREDICTED_IN[modality]
        for group in groups:
            measured_mask = data.masks(MEASURED_IN[modality], group)
            measured_lfc = log_fold_change(data.linear[modality], *measured_mask)
            markers = top_markers(wilcoxon(data.measured[modality], *measured_mask), N_TOP[modality])
            scores = agreement(log_fold_change(linear, *data.masks(run, group)), measured_lfc, markers)
            rows.append({"modality": modality, "group": group, "method": "kNN", "cells": run, "seed": seed, **scores})
    return rows


def _totalvi_rows(data: Mosaic, seed: int, groups: list[str], *, quick: bool) -> list[dict]:
    """TOTALVI trained on the CITE-seq cells alone, its protein DE between them: the measured cells' own test."""
    study = _tasks.bmmc_cite()
    start = time.perf_counter()
    runner = TotalviRunner()
    runner.fit(study, seed=seed, max_epochs=3 if quick else TOTALVI_MAX_EPOCHS)
    logger.info("seed %d: TOTALVI trained, %d epochs in %.0f s", seed, runner.n_epochs, time.perf_counter() - start)
    labels = broad_groups(runner.mdata.obs["cell_type"]).to_numpy()
    kwargs = {"n_samples_overall": 500} if quick else {}
    rows = []
    for group in groups:
        measured_mask = data.masks("cite", group)
        measured_lfc = log_fold_change(data.linear["protein"], *measured_mask)
        markers = top_markers(wilcoxon(data.measured["protein"], *measured_mask), N_TOP["protein"])
        table = runner.model.differential_expression(
            runner.mdata, idx1=np.flatnonzero(labels == group), idx2=np.flatnonzero(labels != group), silent=True,
            **kwargs,
        )  # fmt: skip
        # TOTALVI's one table of genes and proteins names a protein "<name>_protein"
        lfc = table.loc[data.names["protein"] + "_protein", "lfc_mean"].to_numpy()
        scores = agreement(lfc, measured_lfc, markers)
        rows.append({"modality": "protein", "group": group, "method": "TOTALVI", "cells": "cite", "seed": seed,
                     **scores})  # fmt: skip
    return rows


def _null_rows(data: Mosaic, model, obs: pd.DataFrame, seed: int, de_kwargs: dict) -> list[dict]:
    """Share of features called DE between two random halves of one cell type, measured and predicted."""
    rows = []
    cases = [
        ("rna", "multiome", "measured"), ("rna", "cite", "measured"),
        ("protein", "cite", "measured"), ("protein", "multiome", "predicted"),
        ("atac", "multiome", "measured"), ("atac", "cite", "predicted"),
    ]  # fmt: skip
    for modality, run, kind in cases:
        half1, half2 = null_halves(obs, run, seed)
        source = SOURCES[modality] if kind == "predicted" else None
        table = pengster_de(model, obs, modality, half1, half2, source=source, de_kwargs=de_kwargs)
        rows.append({"modality": modality, "cells": run, "kind": kind, "method": "pengster", "seed": seed,
                     "called_fraction": float(table[CALLED].mean()), "n_features": len(table)})  # fmt: skip
    # the Wilcoxon test of the measured values, and of the kNN-imputed values of the cells that did not measure them
    for modality in ("protein", "atac"):
        for kind, run, values in (
            ("measured", MEASURED_IN[modality], data.measured[modality]),
            ("predicted", PREDICTED_IN[modality], data.knn_imputed(modality, seed)),
        ):
            halves = null_halves(obs, run, seed)
            rows_of_run = obs.index.get_indexer(data.cells[run])
            test = wilcoxon(values, halves[0][rows_of_run], halves[1][rows_of_run])
            method = "Wilcoxon" if kind == "measured" else "kNN + Wilcoxon"
            called_fraction = float((test["pvals_adj"] < FDR).mean())
            rows.append({"modality": modality, "cells": run, "kind": kind, "method": method, "seed": seed,
                         "called_fraction": called_fraction, "n_features": len(test)})  # fmt: skip
    return rows


def stability(called: dict[int, dict]) -> list[dict]:
    """Pairwise Jaccard of the called sets of every seed pair, per modality and cells, over cell types."""
    seeds = sorted(called)
    keys = sorted(called[seeds[0]])
    rows = []
    for modality, run in sorted({(m, r) for m, r, _ in keys}):
        values, sizes = [], []
        for _, _, group in (k for k in keys if k[:2] == (modality, run)):
            sets = [called[s][(modality, run, group)] for s in seeds]
            sizes += [len(s) for s in sets]
            values += [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
        kind = "predicted" if PREDICTED_IN[modality] == run else "measured"
        rows.append({"modality": modality, "cells": run, "kind": kind, "jaccard": float(np.nanmean(values)),
                     "jaccard_sd": float(np.nanstd(values)), "n_pairs": int(np.sum(~np.isnan(values))),
                     "mean_called": float(np.mean(sizes))})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ SNARE-seq2
# cell types with at least this many nuclei in the held-out libraries
SNARE_MIN_NUCLEI = 30
SNARE_NULL_TYPE = "L2/3"


def run_snareseq2(seed: int, *, quick: bool = False) -> tuple[list[dict], list[dict]]:
    """ATAC predicted from RNA for the held-out libraries' nuclei (their ATAC hidden in training) against their own
    measured ATAC: each cell type against the other held-out nuclei."""
    import scvi

    study = _tasks.snareseq2()
    obs = study.obs
    test = obs.index[~obs["train"].to_numpy()]
    study = study.hide(atac=test)
    start = time.perf_counter()
    runner = PengsterRunner(train_kwargs={"batch_size": None})
    runner.fit(study, seed=seed, max_epochs=1 if quick else None)
    logger.info("SNARE-seq2 seed %d: %d epochs in %.0f s", seed, runner.n_epochs, time.perf_counter() - start)
    scvi.settings.seed = seed
    model, model_obs = runner.model, runner.mdata.obs
    measured = study.truth("atac", test)
    peaks = (measured > 0).sum(0) >= MIN_OPEN_CELLS
    names = study.counts["atac"].var_names[peaks]
    measured = measured[:, peaks]
    labels = obs.loc[test, "cell_type"].astype(str).to_numpy()
    train = obs.index[obs["train"].to_numpy()]
    train_labels = obs.loc[train, "cell_type"].astype(str).to_numpy()
    imputed = _baselines.predict_knn(
        "rna", study.truth("rna", train), study.truth("atac", train)[:, peaks], study.truth("rna", test), seed=seed
    )
    groups = [g for g in pd.unique(labels) if (labels == g).sum() >= SNARE_MIN_NUCLEI]
    rows = []
    for group in sorted(groups):
        mask1, mask2 = labels == group, labels != group
        measured_lfc = log_fold_change(measured, mask1, mask2)
        markers = top_markers(wilcoxon(measured, mask1, mask2), N_TOP["atac"])
        cases = [
            ("pengster", test, labels, "rna"),
            ("pengster (measured cells)", train, train_labels, None),
        ]
        for method, cells, cell_labels, source in cases:
            idx1, idx2 = (_over(model_obs, cells, m) for m in (cell_labels == group, cell_labels != group))
            table = model.differential_accessibility(idx1=idx1, idx2=idx2, source=source, silent=True).loc[names]
            scores = agreement(table["lfc_mean"].to_numpy(), measured_lfc, markers)
            rows.append({"group": group, "method": method, "seed": seed, **scores})
        scores = agreement(log_fold_change(np.clip(imputed, 0, None), mask1, mask2), measured_lfc, markers)
        rows.append({"group": group, "method": "kNN", "seed": seed, **scores})
    halves = np.random.default_rng(seed).permutation(np.flatnonzero(labels == SNARE_NULL_TYPE))
    half1, half2 = (_over(model_obs, test, np.isin(np.arange(len(test)), h)) for h in np.array_split(halves, 2))
    table = model.differential_accessibility(idx1=half1, idx2=half2, source="rna", silent=True)
    null = [{"method": "pengster", "seed": seed, "called_fraction": float(table[CALLED].mean()),
             "n_features": len(table), "n_peaks_scored": int(peaks.sum())}]  # fmt: skip
    logger.info("SNARE-seq2 seed %d: done in %.0f s", seed, time.perf_counter() - start)
    return rows, null


# ------------------------------------------------------------------------------------------------ the results
def summarize(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> list[dict]:
    """Per ``keys``: each metric averaged over cell types per seed, then mean and sd over seeds."""
    records = []
    per_seed = frame.groupby([*keys, "seed"], sort=False)[metrics].mean().reset_index()
    for key, group in per_seed.groupby(keys, sort=False):
        record = dict(zip(keys, key, strict=True))
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            record[metric] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1
                              else 0.0, "per_seed": dict(zip(group["seed"].astype(int).astype(str), values.tolist(),
                                                             strict=True))}  # fmt: skip
        records.append(record)
    return records


def markdown(results: dict) -> str:
    s = results["settings"]

    def value(entry):
        return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"

    lines = [
        "# Differential analysis benchmark",
        "",
        f"pengster {s['pengster']}, scvi-tools {s['scvi_tools']}, measured {s['date']} on CPU (1 torch thread); seeds "
        f"{s['seeds']}; wall time {s['wall_time_s']:.0f} s. Produced by `benchmarks/differential.py`; every number "
        "below is in `differential.json`. Mean ± sd over seeds of the mean over cell types.",
        "",
        "Data: the BMMC mosaic (NeurIPS 2021 starter sets: 500 multiome cells with RNA + ATAC, 600 CITE-seq cells with "
        "RNA + protein; no cell has all three), all cells, no subsampling. pengster trains once per seed on the whole "
        "mosaic with its defaults (`model.train()`); TOTALVI trains on the CITE-seq cells alone with its defaults but "
        f"at most {s['totalvi_max_epochs']} epochs. Cell types: {', '.join(s['groups'])} (broad groups of the "
        "published labels), each against the other cells of the same run. ATAC: the "
        f"{s['n_peaks_scored']} of {s['n_peaks']} peaks open in at least {s['min_open_cells']} multiome cells.",
        "",
        "## Predicted against measured",
        "",
        "Protein: DE between multiome cells (protein never measured; pengster decodes it from RNA + ATAC, "
        "`source=['rna', 'atac']`) against the measured protein of CITE-seq cells of the same cell types. "
        "Accessibility: DE between CITE-seq cells (ATAC never measured; decoded from RNA) against the measured peaks "
        "of multiome cells. Reference: log2 fold change of the measured means (protein: expm1 of CLR; ATAC: open "
        f"fraction; pseudocount {s['pseudocount']}) and, for the markers, the top {s['n_top']['protein']} proteins / "
        f"{s['n_top']['atac']} peaks by Wilcoxon score among those up at adjusted p < {s['fdr']} (scanpy). "
        "`spearman_lfc`: Spearman correlation of predicted and measured log fold changes over features; "
        "`top_marker_auroc`: AUROC of the predicted log fold change for the measured top markers (0.5 is chance). "
        "kNN: the modality imputed for each cell from its nearest cells of the other run (PCA of the genes both runs "
        "measured, k by 3-fold CV), fold change of the imputed means. `pengster (measured cells)` and TOTALVI test the "
        "cells that measured the modality (TOTALVI: a ceiling, trained on the measured protein of the cells it tests).",
        "",
        "| modality | method | cells tested | Spearman of LFC | top-marker AUROC |",
        "|---|---|---|---:|---:|",
    ]
    for r in results["agreement"]:
        lines.append(f"| {r['modality']} | {r['method']} | {r['cells']} | {value(r['spearman_lfc'])} | "
                     f"{value(r['top_marker_auroc'])} |")  # fmt: skip
    lines += [
        "",
        "## Calibration under the null",
        "",
        f"The {s['null_group']} cells of one run split at random into two halves (a new split per seed); the share of "
        f"features called DE at FDR {s['fdr']} (pengster: `is_de_fdr_{s['fdr']}`, `mode='change'`, its default "
        "`delta` per modality; Wilcoxon: adjusted p < 0.05). Every call here is a false positive.",
        "",
        "| modality | cells | measured / predicted | method | share called DE |",
        "|---|---|---|---|---:|",
    ]
    for r in results["null"]:
        lines.append(
            f"| {r['modality']} | {r['cells']} | {r['kind']} | {r['method']} | {value(r['called_fraction'])} |"
        )
    lines += [
        "",
        "## Stability across seeds",
        "",
        f"Features called DE at FDR {s['fdr']} (each cell type against the rest of its run) by the models of seeds "
        f"{s['seeds']}: Jaccard index of the called sets of each pair of seeds, mean ± sd over pairs and cell types.",
        "",
        "| modality | cells | measured / predicted | Jaccard | features called (mean) |",
        "|---|---|---|---:|---:|",
    ]
    for r in results["stability"]:
        lines.append(f"| {r['modality']} | {r['cells']} | {r['kind']} | {r['jaccard']:.3f} ± {r['jaccard_sd']:.3f} | "
                     f"{r['mean_called']:.1f} |")  # fmt: skip
    if "snareseq2" in results:
        lines += snare_markdown(results["snareseq2"])
    lines += ["", "Per cell type and seed: `per_group` in `differential.json`.", ""]
    return "\n".join(lines)


def snare_markdown(snare: dict) -> list[str]:
    def value(entry):
        return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"

    s = snare["settings"]
    lines = [
        "",
        "## SNARE-seq2: accessibility predicted for held-out libraries",
        "",
        f"SNARE-seq2 mouse motor cortex, the {s['n_peaks']} peaks most often open in the training nuclei; libraries "
        f"{', '.join(s['test_libraries'])} held out: their ATAC is hidden from training, so their accessibility is "
        "predicted from their RNA (`source='rna'`) and compared with their own measured peaks. Each cell type with "
        f"at least {s['min_nuclei']} held-out nuclei ({', '.join(s['groups'])}) against the other held-out nuclei; "
        f"peaks open in at least {s['min_open_cells']} held-out nuclei ({s['n_peaks_scored']}). `pengster (measured "
        "cells)`: the same model's test of the training nuclei of the same types. kNN: ATAC imputed from the training "
        f"nuclei by kNN on RNA PCA. pengster trains at its defaults; seeds {s['seeds']}.",
        "",
        "| method | Spearman of LFC | top-marker AUROC |",
        "|---|---:|---:|",
    ]
    for r in snare["agreement"]:
        lines.append(f"| {r['method']} | {value(r['spearman_lfc'])} | {value(r['top_marker_auroc'])} |")
    null = snare["null"][0]
    lines += [
        "",
        f"Null: the held-out {s['null_type']} nuclei split at random in two halves; share of peaks called DA at FDR "
        f"{FDR}: {value(null['called_fraction'])}.",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--quick", action="store_true", help="one seed, 3 epochs, 2 cell types (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--snareseq2", action="store_true", help="only the SNARE-seq2 part, added to the results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    import scvi
    import torch

    import pengster

    torch.set_num_threads(1)
    if args.snareseq2:
        main_snareseq2(args.seeds[:1] if args.quick else args.seeds, args.out, quick=args.quick)
        return
    seeds = args.seeds[:1] if args.quick else args.seeds
    start = time.perf_counter()
    data = Mosaic()
    rows, null, called = [], [], {}
    for seed in seeds:
        seed_rows, seed_null, called[seed] = run_seed(data, seed, quick=args.quick)
        rows += seed_rows
        null += seed_null
        agreement_frame, null_frame = pd.DataFrame(rows), pd.DataFrame(null)
        results = {
            "settings": {
                "pengster": pengster.__version__, "scvi_tools": scvi.__version__,
                "date": datetime.now(UTC).strftime("%Y-%m-%d"), "seeds": sorted(called), "quick": args.quick,
                "totalvi_max_epochs": TOTALVI_MAX_EPOCHS, "fdr": FDR, "n_top": N_TOP, "pseudocount": PSEUDOCOUNT,
                "groups": list(GROUPS), "null_group": NULL_GROUP, "min_open_cells": MIN_OPEN_CELLS,
                "n_peaks": int(len(data.features["atac"])), "n_peaks_scored": int(data.features["atac"].sum()),
                "n_cells": {run: len(cells) for run, cells in data.cells.items()},
                "wall_time_s": round(time.perf_counter() - start),
            },
            "agreement": summarize(agreement_frame, ["modality", "method", "cells"],
                                   ["spearman_lfc", "top_marker_auroc"]),
            "null": summarize(null_frame, ["modality", "cells", "kind", "method"], ["called_fraction"]),
            "stability": stability(called) if len(called) > 1 else [],
            "per_group": agreement_frame.to_dict(orient="records"),
        }  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "differential.json").write_text(json.dumps(results, indent=1) + "\n")
        (args.out / "differential.md").write_text(markdown(results))
        logger.info("wrote %s after seed %d", args.out, seed)


def main_snareseq2(seeds: list[int], out: Path, *, quick: bool = False) -> None:
    """Run the SNARE-seq2 part for ``seeds`` and add it to ``out/differential.json`` (the BMMC part is kept)."""
    start = time.perf_counter()
    rows, null = [], []
    for seed in seeds:
        seed_rows, seed_null = run_snareseq2(seed, quick=quick)
        rows += seed_rows
        null += seed_null
    results = json.loads((out / "differential.json").read_text())
    frame = pd.DataFrame(rows)
    results["snareseq2"] = {
        "settings": {
            "seeds": seeds, "n_peaks": _tasks.SNARE_TOP_PEAKS, "test_libraries": list(_tasks.SNARE_TEST_LIBRARIES),
            "min_nuclei": SNARE_MIN_NUCLEI, "min_open_cells": MIN_OPEN_CELLS, "null_type": SNARE_NULL_TYPE,
            "groups": sorted(frame["group"].unique().tolist()), "n_peaks_scored": null[0]["n_peaks_scored"],
            "wall_time_s": round(time.perf_counter() - start),
        },
        "agreement": summarize(frame, ["method"], ["spearman_lfc", "top_marker_auroc"]),
        "null": summarize(pd.DataFrame(null), ["method"], ["called_fraction"]),
        "per_group": frame.to_dict(orient="records"),
    }  # fmt: skip
    (out / "differential.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "differential.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
