"""Hyperparameter search for pengster on a validation split of the accuracy benchmark's TRAINING cells.

The test cells of ``benchmarks/accuracy.py`` are dropped before anything else: each dataset keeps only its training
cells, which are split into fit and validation cells (by library where the dataset has several training batches
that measured both modalities, else a fixed random 20%). The validation cells then play the role of test cells: the
benchmark's own configurations hide their target modality exactly as they hide test cells, pengster is trained with
each candidate configuration, and the benchmark's own scoring code gives the headline metrics. Run::

    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        .venv/bin/python benchmarks/tune.py --candidates default cross_2 --runs tune_a.csv
    .venv/bin/python benchmarks/tune.py --from-runs tune_a.csv tune_b.csv   # writes results/tune.{json,md}

Selection rule (fixed before any result was seen): for every (dataset, task) with a headline metric other than
calibration, average each candidate over seeds, rank the candidates (1 = best, ties share the mean rank), and choose
the candidate with the lowest mean rank over all (dataset, task); candidates are compared within one stage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _tasks, accuracy
from benchmarks._models import PengsterRunner

logger = logging.getLogger("benchmarks.tune")
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0
# SNARE-seq2: one of the six training libraries is the validation library
SNARE_VALIDATION_LIBRARY = "09F"
# headline metrics that choose the configuration (calibration is reported, not selected on: see the README)
SELECTED_TASKS = ("pearson_per_feature", "marker_auroc", "scib_aggregate", "foscttm")

# name -> (JointVAE keyword arguments, train keyword arguments). Every candidate is the defaults BEFORE tuning
# (learning rate 1e-3, mean ATAC cell factor) with one setting changed; `default` is those old defaults. The chosen
# settings (lr 3e-3, predict_cell_factor=True) are now pengster's defaults, so they are spelled out here.
OFF = {"predict_cell_factor": False}
OLD_LR = {"plan_kwargs": {"lr": 1e-3}}
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "default": (OFF, OLD_LR),
    "cross_2": ({**OFF, "cross_weight": 2.0}, OLD_LR),
    "cross_4": ({**OFF, "cross_weight": 4.0}, OLD_LR),
    "contrastive_0": ({**OFF, "contrastive_weight": 0.0}, OLD_LR),
    "contrastive_0.3": ({**OFF, "contrastive_weight": 0.3}, OLD_LR),
    "latent_30": ({**OFF, "n_latent": 30}, OLD_LR),
    "hidden_512": ({**OFF, "n_hidden": 512}, OLD_LR),
    "dropout_0.2": ({**OFF, "dropout_rate": 0.2}, OLD_LR),
    "lr_3e-3": (OFF, {"plan_kwargs": {"lr": 3e-3}}),
    "cell_factor": ({"predict_cell_factor": True}, OLD_LR),
    "encode_covariates": ({**OFF, "encode_covariates": True}, OLD_LR),
    # pengster's current defaults (lr 3e-3, predicted cell factor, RNA bridge and MMD where the RNA panels differ)
    "current": ({}, {}),
    "bridge_off": ({"bridge_weight": 0.0, "mixing_weight": 0.0}, {}),
    "mixing_off": ({"mixing_weight": 0.0}, {}),
    "mixing_3": ({"mixing_weight": 3.0}, {}),
    # the current defaults with every reconstruction term (cross_all, the default) or sampled ones (for speed)
    "cross_all": ({"cross_terms": "all"}, {}),
    "cross_sampled": ({"cross_terms": "sampled"}, {}),
    "cross_single": ({"cross_terms": "single"}, {}),
    # ATAC cross terms scored on a random fraction of the peaks each step (speed); peaks_1 scores every peak
    "peaks_1": ({"cross_peak_fraction": 1.0}, {}),
    "peaks_0.25": ({"cross_peak_fraction": 0.25}, {}),
    "peaks_0.1": ({"cross_peak_fraction": 0.1}, {}),
    # bf16 autocast (GPU only: on CPUs without bf16 instructions it is ~20x slower; PENGSTER_BENCH_ACCELERATOR=gpu)
    "precision_bf16": ({}, {"precision": "bf16-mixed"}),
}


# the current defaults and the RNA bridge / MMD alternatives, compared on the mosaics (the later stages)
MOSAIC_CANDIDATES = ("current", "bridge_off", "mixing_off", "mixing_3")
# the training objective's sampled variants (cross_terms), compared on every dataset with the final read-out
CROSS_CANDIDATES = ("cross_all", "cross_sampled", "cross_single")
# the fraction of peaks the ATAC cross terms are scored on, on the data sets with ATAC (default read-out); ties of
# the mean rank go to the smaller fraction (the faster one)
PEAK_CANDIDATES = ("peaks_1", "peaks_0.25", "peaks_0.1")
# trained as the package trains by default (max_epochs=None: early stopping decides); the others with the fixed
# epochs of the benchmark's configurations, as when they were compared
PACKAGE_LENGTH = PEAK_CANDIDATES

# name -> predict keyword arguments: read-outs of one trained model, scored side by side (no retraining)
READOUTS: dict[str, dict] = {
    "decoder": {"readout": "decoder"},
    "neighbors_10": {"readout": "blend", "n_neighbors": 10},
    "neighbors_20": {"readout": "blend", "n_neighbors": 20},
    "neighbors_50": {"readout": "blend", "n_neighbors": 50},
    "auto": {"readout": "auto"},
    # the same, reported on the data's own normalized scale (the layer that holds what the benchmark scores)
    "decoder_layer": {"readout": "decoder", "layer": _tasks.SCORED_LAYER},
    "auto_layer": {"readout": "auto", "layer": _tasks.SCORED_LAYER},
}


def _restrict(study: _tasks.Study, cells: pd.Index, fit: np.ndarray) -> _tasks.Study:
    """``study`` reduced to ``cells``, with ``train`` set to ``fit`` (the validation cells play the test cells)."""
    counts, scored = {}, {}
    for modality, adata in study.counts.items():
        keep = adata.obs_names.isin(cells)
        counts[modality] = adata[keep].copy()
        scored[modality] = study.scored[modality][keep]
    obs = study.obs.loc[cells].copy()
    obs["train"] = np.asarray(fit, dtype=bool)
    return _tasks.Study(study.name, counts, scored, obs, {}, study.measured)


def validation_study(study: _tasks.Study) -> _tasks.Study:
    """The training cells of ``study`` only, split into fit (``train`` True) and validation (``train`` False).

    SNARE-seq2 holds out one training library; the other datasets have one training batch per dataset (BMMC) or one
    paired training donor (PBMC p3), so a fixed random 20% of each training batch that measured more than one
    modality is held out (the same cells in the BMMC paired sets and in the BMMC mosaic).
    """
    train = study.obs[study.obs["train"].to_numpy()]
    if study.name == "snareseq2":
        fit = (train["batch"] != SNARE_VALIDATION_LIBRARY).to_numpy()
        return _restrict(study, train.index, fit)
    n_modalities = sum(train.index.isin(adata.obs_names).astype(int) for adata in study.counts.values())
    paired = n_modalities > 1
    fit = np.ones(len(train), dtype=bool)
    for batch in sorted(train["batch"].unique()):
        rows = np.flatnonzero((train["batch"] == batch).to_numpy() & paired)
        if len(rows) == 0:
            continue
        # the draw depends on the batch's cell names only, so the mosaic reuses the paired sets' validation cells
        names = train.index[rows].str.replace(r"-(multiome|cite)$", "", regex=True)
        order = np.argsort(names.to_numpy(), kind="stable")
        rng = np.random.default_rng(SPLIT_SEED)
        chosen = rng.permutation(len(rows))[: int(round(VALIDATION_FRACTION * len(rows)))]
        fit[rows[order[chosen]]] = False
    return _restrict(study, train.index, fit)


def _configs(datasets: list[str] | None) -> list[accuracy.Config]:
    return [c for c in accuracy.configs(quick=False) if not datasets or c.dataset in datasets]


def run(
    candidates: list[str],
    *,
    seeds: list[int],
    datasets: list[str] | None,
    baselines: bool,
    runs_path: Path,
    snare_cells: int | None = None,
    readouts: list[str] | None = None,
) -> pd.DataFrame:
    """Train and score every candidate on every dataset's validation split; append rows to ``runs_path``.

    With ``readouts``, each trained candidate is scored once per read-out (:data:`READOUTS`), as candidate
    ``<candidate>+<readout>``.
    """
    import torch

    torch.set_num_threads(1)
    rows = []
    studies = {}
    for config in _configs(datasets):
        if config.dataset not in studies:
            study = validation_study(config.load())
            if config.dataset == "snareseq2" and snare_cells:
                study = _subsample_fit(study, snare_cells)
            studies[config.dataset] = study
            logger.info(
                "%s: %d fit cells, %d validation cells",
                config.dataset,
                int(study.obs["train"].sum()),
                int((~study.obs["train"]).sum()),
            )
    for seed in seeds:
        for config in _configs(datasets):
            study = studies[config.dataset].hide(**config.hide(studies[config.dataset]))
            if baselines and seed == seeds[0]:
                for prediction in config.predictions:
                    for row in accuracy._baseline_rows(study, prediction, seed):
                        rows.append({**row, "candidate": row["method"]})
            for name in candidates:
                model_kwargs, train_kwargs = CANDIDATES[name]
                start = time.perf_counter()
                runner = PengsterRunner(model_kwargs, train_kwargs)
                runner.fit(study, seed=seed, max_epochs=None if name in PACKAGE_LENGTH else config.max_epochs)
                seconds = time.perf_counter() - start
                logger.info("%s %s seed %d: %d epochs in %.0f s", config.dataset, name, seed, runner.n_epochs, seconds)
                for readout in readouts or [None]:
                    runner.predict_kwargs = READOUTS[readout] if readout else {}
                    label = f"{name}+{readout}" if readout else name
                    for row in accuracy._model_rows(runner, study, config, seed, seconds):
                        rows.append({**row, "candidate": label, "n_epochs": runner.n_epochs})
                pd.DataFrame(rows).to_csv(runs_path, index=False)
    return pd.DataFrame(rows)


def _subsample_fit(study: _tasks.Study, n_cells: int) -> _tasks.Study:
    """At most ``n_cells`` fit cells (random, fixed seed); every validation cell is kept."""
    obs = study.obs
    fit = obs.index[obs["train"].to_numpy()]
    rng = np.random.default_rng(SPLIT_SEED)
    kept = fit[np.sort(rng.permutation(len(fit))[:n_cells])] if len(fit) > n_cells else fit
    cells = obs.index[obs.index.isin(kept) | ~obs["train"].to_numpy()]
    return _restrict(study, cells, obs.loc[cells, "train"].to_numpy())


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds of each (candidate, dataset, task, metric), with ``main`` and direction."""
    grouped = runs.groupby(["candidate", "dataset", "task", "metric"], sort=False)["value"]
    frame = grouped.agg(mean="mean", sd=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, n_seeds="count")
    frame = frame.reset_index()
    frame["main"] = [m == accuracy.main_metric(t) for t, m in zip(frame["task"], frame["metric"], strict=True)]
    frame["higher_is_better"] = [accuracy._scores.higher_is_better(m) for m in frame["metric"]]
    return frame


def ranks(summary: pd.DataFrame, candidates: list[str]) -> pd.DataFrame:
    """Rank of each candidate on each selected headline (1 = best) and their mean: the selection rule."""
    main = summary[summary["main"] & summary["metric"].isin(SELECTED_TASKS) & summary["candidate"].isin(candidates)]
    table = main.pivot_table(index=["dataset", "task", "metric"], columns="candidate", values="mean")
    table = table.dropna(axis=0)
    lower = table.index.get_level_values("metric").isin(list(accuracy._scores.LOWER_IS_BETTER))
    signed = table.mul(np.where(lower, -1.0, 1.0), axis=0)
    ranked = signed.rank(axis=1, ascending=False, method="average")
    return ranked[[c for c in candidates if c in ranked.columns]]


def markdown(summary: pd.DataFrame, stages: dict[str, list[str]], *, note: str) -> str:
    """Tables of headline metrics per candidate, with ranks and the choice of each stage."""
    lines = [
        "# pengster hyperparameters on a validation split of the training cells",
        "",
        f"{note}. Produced by `benchmarks/tune.py`; procedure and selection rule in benchmarks/README.md. "
        "No test cell is used: each dataset keeps its training cells, split into fit and validation cells.",
        "",
    ]
    main = summary[summary["main"]]
    for stage, candidates in stages.items():
        present = [c for c in candidates if c in set(main["candidate"])]
        if not present:
            continue
        table = ranks(summary, present)
        if table.empty:
            continue
        mean_rank = table.mean(0).sort_values()
        lines += [
            f"## {stage}",
            "",
            f"Chosen by mean rank over the {len(table)} (dataset, task) rows every candidate finished: "
            f"**{mean_rank.index[0]}**.",
            "",
        ]
        lines += ["| candidate | mean rank |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in mean_rank.items()]
        lines += ["", "Headline metric per (dataset, task), mean ± sd over seeds (baselines: seed 0):", ""]
        shown = present + [b for b in ("knn", "ridge") if b in set(main["candidate"])]
        lines += ["| dataset | task | metric | " + " | ".join(shown) + " |", "|" + "---|" * (3 + len(shown))]
        for (dataset, task, metric), group in main.groupby(["dataset", "task", "metric"], sort=False):
            by = group.set_index("candidate")
            cells = [f"{by.loc[c, 'mean']:.3f} ± {by.loc[c, 'sd']:.3f}" if c in by.index else "–" for c in shown]
            lines.append(f"| {dataset} | {task} | {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


STAGES = {
    "model change: ATAC cell factor predicted from the other modalities' depth": ["default", "cell_factor"],
    "stage 1: one setting at a time": [
        c
        for c in CANDIDATES
        if c not in ("cell_factor", "precision_bf16", *MOSAIC_CANDIDATES, *CROSS_CANDIDATES, *PEAK_CANDIDATES)
    ],
    "read-out of predict: decoder alone or averaged with k reference neighbours": [
        f"current+{readout}" for readout in READOUTS if not readout.endswith("_layer")
    ],
    "read-out on pengster's scale or on the data's own normalized scale (layer)": [
        f"current+{readout}" for readout in ("decoder", "auto", "decoder_layer", "auto_layer")
    ],
    "RNA bridge and MMD weights on the mosaics (decoder read-out)": [f"{c}+decoder" for c in MOSAIC_CANDIDATES],
    "RNA bridge and MMD weights on the mosaics (20-neighbour read-out)": [
        f"{c}+neighbors_20" for c in MOSAIC_CANDIDATES
    ],
    "RNA bridge and MMD weights on the mosaics (final read-out: auto on the data's scale)": [
        f"{c}+auto_layer" for c in MOSAIC_CANDIDATES
    ],
    "every reconstruction term, or sampled ones for speed (cross_terms; final read-out)": [
        f"{c}+auto_layer" for c in CROSS_CANDIDATES
    ],
    "ATAC cross terms on a fraction of the peaks, for speed (cross_peak_fraction; default read-out)": list(
        PEAK_CANDIDATES
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=["default"], choices=list(CANDIDATES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", help="only these datasets")
    parser.add_argument("--baselines", action="store_true", help="also score kNN, ridge and mean on the split")
    parser.add_argument("--readouts", nargs="+", choices=list(READOUTS), help="score each fit with these read-outs")
    parser.add_argument("--snare-cells", type=int, help="at most this many SNARE-seq2 fit cells")
    parser.add_argument("--runs", type=Path, default=Path("tune_runs.csv"), help="per-seed rows (CSV) to write")
    parser.add_argument("--from-runs", type=Path, nargs="+", help="summarize these CSVs into results/tune.*")
    parser.add_argument("--out", type=Path, default=accuracy.RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    if not args.from_runs:
        run(
            args.candidates,
            seeds=args.seeds,
            datasets=args.datasets,
            baselines=args.baselines,
            runs_path=args.runs,
            snare_cells=args.snare_cells,
            readouts=args.readouts,
        )
        return
    runs = pd.concat([pd.read_csv(path) for path in args.from_runs], ignore_index=True)
    runs = runs.drop_duplicates(["candidate", "dataset", "task", "metric", "seed"], keep="last")
    summary = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    records = summary.to_dict(orient="records")
    (args.out / "tune.json").write_text(json.dumps({"candidates": _described(), "records": records}, indent=1) + "\n")
    runs.to_csv(args.out / "tune_runs.csv", index=False)
    note = f"seeds {sorted(runs['seed'].unique().tolist())}, 1 torch thread"
    (args.out / "tune.md").write_text(markdown(summary, STAGES, note=note))


def _described() -> dict:
    return {name: {"model": model, "train": train} for name, (model, train) in CANDIDATES.items()}


if __name__ == "__main__":
    main()
