"""Predictions with the package defaults on pengster's reported scales, against the mean profile, ridge and kNN.

For each data set and seed, one model is trained with the defaults (``JointVAE(mdata)``, ``model.train()``) on the
training cells and on the test cells with one modality hidden: half of the test cells (drawn with the seed) show only
their RNA, the other half only their other modality. Predicted with ``model.predict(target=...)`` and no other argument:

- ATAC -> RNA (multiome) and protein -> RNA (CITE-seq), scored on log1p of counts per 10k (the reported scale;
  computed from the counts, for BMMC too), per cell (Pearson r, RMSE) and per gene, and the coverage of the
  predictive intervals (``return_std=True``, 25 draws). ``pengster`` is the default read-out (``"auto"``: the
  ``blend``, the decoder's expected log1p of a measurement at the training cells' median depth averaged with the
  50 nearest training cells' measured values); ``pengster log of mean`` is the same read-out with the log1p of the
  expected count (``np.log1p(get_normalized_expression(source=..., library_size=1e4))``) in place of the
  expectation, as pengster 0.2 decoded.
- RNA -> ATAC, scored against the binary peaks: AUROC and average precision per peak (averaged) and overall (all
  cell x peak pairs ranked together; a random 2M pairs), and a reliability table (10 bins of the predicted
  probability: mean predicted vs fraction open; ``ece``: the count-weighted mean gap). ``pengster`` is the default
  (``"auto"``: the ``population`` read-out, the decoded probability averaged with each peak's open rate over the
  training cells).

``pengster <readout>`` rows score the other read-outs of the same model. Baselines are fitted on the training cells
in the same run (``benchmarks/_baselines.py``). ``--validation`` runs the same on tune.py's validation split of the
training cells (no test cell is read): that run chose the ``"auto"`` read-outs.

    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reported_scale.py --validation
    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reported_scale.py
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pengster
from benchmarks import _baselines, _scores, _tasks, tune

logger = logging.getLogger("benchmarks.reported_scale")
RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = {"bmmc_multiome": _tasks.bmmc_multiome, "snareseq2": _tasks.snareseq2, "bmmc_cite": _tasks.bmmc_cite}
SECOND = {"bmmc_multiome": "atac", "snareseq2": "atac", "bmmc_cite": "protein"}
NAMES = {"rna": "GEX", "atac": "ATAC", "protein": "ADT"}
STD_SAMPLES = 25
READOUTS = {"rna": ("decoder", "blend"), "atac": ("decoder", "blend", "population")}
"""The read-outs scored besides the default one (``readout="auto"``, method ``pengster``)."""
BINS = 10


def _per_10k(study: _tasks.Study) -> _tasks.Study:
    """The study with RNA scored as log1p of counts per 10k (pengster's reported scale)."""
    study.scored["rna"] = _tasks._log_normalize(study.counts["rna"])
    return study


def reliability(observed: np.ndarray, predicted: np.ndarray) -> dict:
    """Mean predicted probability and fraction open in bins of equal width; the expected calibration error."""
    edges = np.linspace(0, 1, BINS + 1)
    which = np.clip(np.digitize(predicted.ravel(), edges) - 1, 0, BINS - 1)
    truth, score = (observed.ravel() > 0).astype(np.float64), predicted.ravel().astype(np.float64)
    count = np.bincount(which, minlength=BINS)
    mean_predicted = np.bincount(which, score, BINS) / count.clip(1)
    fraction_open = np.bincount(which, truth, BINS) / count.clip(1)
    ece = float((count * np.abs(mean_predicted - fraction_open)).sum() / count.sum())
    return {"ece": ece, "bins": {"count": count.tolist(), "predicted": mean_predicted.tolist(),
                                 "open": fraction_open.tolist()}}  # fmt: skip


def _baseline_predictions(study, source, target, query, seed) -> dict[str, np.ndarray]:
    train = study.obs.index[study.obs["train"].to_numpy()]
    train_source, query_source = study.truth(source, train), study.truth(source, query)
    train_target = study.truth(target, train)
    out = {"mean": _baselines.predict_mean(train_target, len(query))}
    for name, fit in (("ridge", _baselines.predict_ridge), ("knn", _baselines.predict_knn)):
        out[name] = fit(source, train_source, train_target, query_source, seed=seed)
    return out


def run_one(dataset: str, seed: int, *, validation: bool = False) -> list[dict]:
    study = _per_10k(DATASETS[dataset]())
    if validation:  # the training cells only, split into fit and validation cells, as tune.py splits them
        study = tune.validation_study(study)
    second = SECOND[dataset]
    test = study.obs.index[~study.obs["train"].to_numpy()]
    halves = np.random.default_rng(seed).permutation(len(test))
    rna_hidden, second_hidden = test[np.sort(halves[: len(test) // 2])], test[np.sort(halves[len(test) // 2 :])]
    study = study.hide(rna=rna_hidden, **{second: second_hidden})
    scvi.settings.seed = seed
    mdata = study.mudata(layout="mosaic")
    layers = {"rna_layer": "rna", f"{second}_layer": _tasks.MOD_KEYS[second]}
    pengster.model.JointVAE.setup_mudata(mdata, modalities=layers, batch_key="batch")
    model = pengster.model.JointVAE(mdata)
    start = time.perf_counter()
    model.train(accelerator="cpu", enable_progress_bar=False)
    seconds = time.perf_counter() - start
    epochs = len(model.history["train_loss"])
    logger.info("%s seed %d: trained %d epochs in %.0f s", dataset, seed, epochs, seconds)
    rows = []

    def add(task, method, scores):
        rows.extend({"dataset": dataset, "task": task, "method": method, "seed": seed, "metric": key, "value": value}
                    for key, value in scores.items())  # fmt: skip

    # second modality -> RNA on the reported scale (the default read-out; the log of the mean count in its place)
    task = f"{NAMES[second]}->GEX"
    cells = mdata.obs_names.get_indexer(rna_hidden)
    observed = study.truth("rna", rna_hidden)
    default, std = (frame.to_numpy() for frame in model.predict(target="rna", indices=cells, return_std=True,
                                                                n_samples=STD_SAMPLES))  # fmt: skip
    decoder = model.predict(target="rna", indices=cells, readout="decoder").to_numpy()
    log_of_mean = np.log1p(
        model.get_normalized_expression(indices=cells, source=second, library_size=1e4, return_numpy=True)
    )
    # the same read-out with the log of the mean in place of the decoder's expectation (blend: half of it)
    weight = 1.0 if np.allclose(default, decoder) else 0.5
    predictions = {
        "pengster": default,
        "pengster log of mean": default + weight * (log_of_mean - decoder),
        **_baseline_predictions(study, second, "rna", rna_hidden, seed),
    }
    for readout in READOUTS["rna"]:
        predictions[f"pengster {readout}"] = model.predict(target="rna", indices=cells, readout=readout).to_numpy()
    for method, predicted in predictions.items():
        add(task, method, _scores.prediction_scores(observed, predicted, binary=False))
    add(f"{task} calibration", "pengster", _scores.coverage_scores(observed, default, std))
    if second == "atac":
        rows.extend(_atac_rows(model, mdata, study, second_hidden, dataset, seed))
    add("training", "pengster", {"train_seconds": seconds, "epochs": epochs})
    return rows


def _atac_rows(model, mdata, study, hidden, dataset: str, seed: int) -> list[dict]:
    """RNA -> ATAC: per peak, overall, reliability."""
    rows = []
    cells = mdata.obs_names.get_indexer(hidden)
    observed = study.truth("atac", hidden)
    predictions = {
        "pengster": model.predict(target="atac", indices=cells).to_numpy(),
        **_baseline_predictions(study, "rna", "atac", hidden, seed),
    }
    for readout in READOUTS["atac"]:
        predictions[f"pengster {readout}"] = model.predict(target="atac", indices=cells, readout=readout).to_numpy()
    for method, predicted in predictions.items():
        predicted = np.clip(predicted, 0, 1)
        scores = _scores.prediction_scores(observed, predicted, binary=True)
        scores.update(_scores.overall_scores(observed, predicted, seed=seed))
        table = reliability(observed, predicted)
        scores["ece"] = table["ece"]
        rows.extend({"dataset": dataset, "task": "GEX->ATAC", "method": method, "seed": seed, "metric": key,
                     "value": value} for key, value in scores.items())  # fmt: skip
        rows.append({"dataset": dataset, "task": "GEX->ATAC reliability", "method": method, "seed": seed,
                     "metric": "bins", "value": json.dumps(table["bins"])})  # fmt: skip
    return rows


METRICS = {
    "pearson_per_cell": "r per cell",
    "rmse": "RMSE",
    "pearson_per_feature": "r per feature",
    "spearman_per_cell": "Spearman per cell",
    "auroc": "AUROC per peak",
    "average_precision": "AP per peak",
    "overall_auroc": "AUROC overall",
    "overall_average_precision": "AP overall",
    "ece": "ECE",
    "coverage_50": "50% interval coverage",
    "coverage_90": "90% interval coverage",
}


def summarize(runs: pd.DataFrame) -> str:
    """One table per (dataset, task): methods x metrics, mean ± sd over seeds; then the reliability bins."""
    numeric = runs[runs["metric"].isin(METRICS)].astype({"value": float})
    lines = []
    for (dataset, task), group in numeric.groupby(["dataset", "task"], sort=False):
        table = group.groupby(["method", "metric"])["value"].agg(["mean", "std"])
        metrics = [m for m in METRICS if m in group["metric"].unique()]
        lines += [f"## {dataset}: {task}", "", "| method | " + " | ".join(METRICS[m] for m in metrics) + " |"]
        lines.append("|---" * (len(metrics) + 1) + "|")
        for method in group["method"].unique():
            cells = []
            for metric in metrics:
                if (method, metric) not in table.index or np.isnan(table.loc[(method, metric), "mean"]):
                    cells.append("")
                    continue
                mean, sd = table.loc[(method, metric)]
                cells.append(f"{mean:.3f}" + ("" if np.isnan(sd) else f" ± {sd:.3f}"))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    bins = runs[runs["metric"] == "bins"]
    for dataset, group in bins.groupby("dataset", sort=False):
        lines += [f"## {dataset}: reliability of RNA -> ATAC (pairs of all seeds pooled)", ""]
        lines += ["| method | " + " | ".join(f"bin {b + 1}" for b in range(BINS)) + " |", "|---" * (BINS + 1) + "|"]
        for method, rows in group.groupby("method", sort=False):
            tables = [json.loads(v) for v in rows["value"]]
            counts = np.array([t["count"] for t in tables], dtype=np.float64)
            count = counts.sum(0)
            # pooled over seeds: each seed's bin weighted by its number of pairs
            predicted = (counts * [t["predicted"] for t in tables]).sum(0) / count.clip(1)
            fraction = (counts * [t["open"] for t in tables]).sum(0) / count.clip(1)
            cells = [f"{p:.3f} / {o:.3f}" if c else "" for p, o, c in zip(predicted, fraction, count, strict=True)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write(runs: pd.DataFrame, out: Path, *, validation: bool) -> None:
    stem = "reported_scale_validation" if validation else "reported_scale"
    split = "a validation split of the training cells (tune.py's)" if validation else "the test cells"
    seeds = sorted(runs["seed"].unique().tolist())
    note = (
        f"Measured on {date.today()} with the pengster {pengster.__version__} development code on {split}, seeds "
        f"{seeds}, one torch thread (CPU). Generated by `benchmarks/reported_scale.py`; see its docstring for the "
        "method. Each cell: mean ± sd over seeds. Reliability: mean predicted probability / fraction open, in 10 "
        "bins of width 0.1 (empty bins blank)."
    )
    title = "Predictions with the package defaults, on pengster's reported scales"
    if validation:
        title += " (validation split)"
    runs.to_csv(out / f"{stem}_runs.csv", index=False)
    (out / f"{stem}.md").write_text(f"# {title}\n\n{note}\n\n{summarize(runs)}")
    records = [
        {**r, "value": r["value"] if r["metric"] == "bins" else float(r["value"])} for r in runs.to_dict("records")
    ]
    (out / f"{stem}.json").write_text(json.dumps({"note": note, "runs": records}, indent=1))
    logger.info("wrote %s/%s.*", out, stem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--validation", action="store_true", help="score on a validation split of the training cells (tune.py's)"
    )
    parser.add_argument("--from-runs", type=Path, help="rewrite the tables from this runs CSV")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_runs:
        write(pd.read_csv(args.from_runs), args.out, validation=args.validation)
        return
    rows = []
    for seed in args.seeds:
        for dataset in args.datasets:
            rows.extend(run_one(dataset, seed, validation=args.validation))
            write(pd.DataFrame(rows), args.out, validation=args.validation)


if __name__ == "__main__":
    main()
