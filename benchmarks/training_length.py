"""How long to train: two default rules compared on validation splits of training cells, and where early stopping stops.

Rules (``RULES``):

- ``steps_500`` (pengster 0.2): ``max_epochs`` for about 500 optimizer steps, at least 20 epochs, at most scvi-tools'
  heuristic; KL warm-up over a quarter of the epochs; the last epoch's weights. (0.2 also had early stopping with a
  patience of 20 epochs, which within 20-39 epochs almost never fired; here it is off.)
- ``early_stopping`` (pengster 0.3, ``model.train()``): scvi-tools' heuristic as the cap, KL warm-up over 125 steps,
  validation loss at the full KL weight, stop after 20 epochs or 250 steps without improvement, and the weights of
  the lowest validation loss kept (:func:`pengster.train.training_length`).

Real data: every configuration of ``benchmarks/accuracy.py`` on ``tune.py``'s validation split (each dataset keeps
its training cells only, split into fit and validation cells; no test cell is read), scored with the accuracy
benchmark's own code and the default read-outs. Synthetic CITE-seq sets of growing size (``--synthetic``) show the
step/epoch trade-off: where the validation loss stops falling, and how far below the 0.2 budget's last epoch it is
(synthetic data say nothing about accuracy).

    PENGSTER_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_length.py \
        --datasets bmmc_cite bmmc_multiome --runs length_a.csv
    .venv/bin/python benchmarks/training_length.py --synthetic 2000 8000 32000 --runs length_s.csv
    .venv/bin/python benchmarks/training_length.py --from-runs length_*.csv    # results/training_length.{json,md}
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
from benchmarks import _models, accuracy, tune

logger = logging.getLogger("benchmarks.training_length")
RULES = ("steps_500", "early_stopping")
SELECTED = tune.SELECTED_TASKS
TRAIN_FRACTION = 0.9  # scvi-tools' default train_size


def steps_500(n_cells: int) -> dict:
    """pengster 0.2's default length, spelled out as ``train`` arguments (minibatches of 256)."""
    steps_per_epoch = math.ceil(int(n_cells * TRAIN_FRACTION) / 256)
    epochs = max(20, math.ceil(500 / steps_per_epoch))
    epochs = min(epochs, pengster.train.default_max_epochs(n_cells))
    return {"max_epochs": epochs, "early_stopping": False, "plan_kwargs": {"n_epochs_kl_warmup": max(1, epochs // 4)}}


def _fit(runner: _models.PengsterRunner, study, *, seed: int, rule: str) -> dict:
    """Train ``runner`` on ``study`` with ``rule``; return epochs, best epoch and seconds."""
    scvi.settings.seed = seed
    runner.study = study
    runner.mdata = study.mudata(layout="mosaic")
    modalities = {f"{m}_layer": _models.MOD_KEYS[m] for m in _models.MOD_KEYS if m in study.counts}
    pengster.model.JointVAE.setup_mudata(runner.mdata, modalities=modalities, batch_key="batch")
    runner.model = pengster.model.JointVAE(runner.mdata)
    kwargs = steps_500(runner.mdata.n_obs) if rule == "steps_500" else {}
    start = time.perf_counter()
    runner.model.train(accelerator=_models.ACCELERATOR, enable_progress_bar=False, **kwargs)
    return _length(runner.model, time.perf_counter() - start, runner.mdata.n_obs)


def _length(model, seconds: float, n_cells: int) -> dict:
    history = model.history
    n_epochs = len(history["train_loss"])
    losses = history["validation_loss"].iloc[:, 0].to_numpy() if "validation_loss" in history else np.array([])
    best = int(np.nanargmin(losses)) + 1 if len(losses) else n_epochs
    steps = math.ceil(int(n_cells * TRAIN_FRACTION) / 256)
    return {"n_epochs": n_epochs, "best_epoch": best, "steps_per_epoch": steps, "train_seconds": seconds}


def run_real(datasets: list[str] | None, seeds: list[int], runs_path: Path) -> None:
    """Both rules on every configuration's validation split; rows appended to ``runs_path``."""
    torch.set_num_threads(1)
    rows, studies = [], {}
    for seed in seeds:
        for config in accuracy.configs(quick=False):
            if datasets and config.dataset not in datasets:
                continue
            if config.dataset not in studies:
                studies[config.dataset] = tune.validation_study(config.load())
            study = studies[config.dataset].hide(**config.hide(studies[config.dataset]))
            for rule in RULES:
                runner = _models.PengsterRunner()
                length = _fit(runner, study, seed=seed, rule=rule)
                logger.info("%s %s seed %d %s: %s", config.dataset, config.predictions[0].task, seed, rule, length)
                tasks = "+".join(p.task for p in config.predictions)
                for key, value in length.items():
                    rows.append(_row(config.dataset, f"length of {tasks}", key, rule, seed, value))
                for row in accuracy._model_rows(runner, study, config, seed, length["train_seconds"]):
                    rows.append({**row, "method": rule})
                pd.DataFrame(rows).to_csv(runs_path, index=False)


def _row(dataset: str, task: str, metric: str, method: str, seed: int, value: float) -> dict:
    return {"dataset": dataset, "task": task, "metric": metric, "method": method, "seed": seed, "value": float(value)}


def run_synthetic(sizes: list[int], seeds: list[int], runs_path: Path) -> None:
    """The default rule on synthetic CITE-seq sets of ``sizes`` cells: where training stops, and why."""
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        for n_cells in sizes:
            mdata = pengster.data.synthetic_mosaic(
                n_cells={"cite": n_cells}, n_genes=1000, n_proteins=30, n_batches=2, seed=seed
            )
            pengster.model.JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
            scvi.settings.seed = seed
            model = pengster.model.JointVAE(mdata)
            start = time.perf_counter()
            model.train(enable_progress_bar=False)
            length = _length(model, time.perf_counter() - start, n_cells)
            losses = model.history["validation_loss"].iloc[:, 0].to_numpy()
            old = steps_500(n_cells)["max_epochs"]
            length.update(
                cap=pengster.train.default_max_epochs(n_cells),
                steps_500_epochs=old,
                loss_at_best=float(losses[length["best_epoch"] - 1]),
                loss_at_steps_500=float(losses[min(old, len(losses)) - 1]),
            )
            logger.info("synthetic %d cells seed %d: %s", n_cells, seed, length)
            for key, value in length.items():
                rows.append(_row(f"synthetic_{n_cells}", "length", key, "early_stopping", seed, value))
            pd.DataFrame(rows).to_csv(runs_path, index=False)


def markdown(runs: pd.DataFrame, note: str) -> str:
    """The headline metrics of both rules, their mean ranks, the lengths, and the synthetic sets."""
    lines = [
        "# Training length: two default rules on validation splits of the training cells",
        "",
        note,
        "",
        "- `steps_500` (pengster 0.2): about 500 optimizer steps, at least 20 epochs, KL warm-up over a quarter of "
        "the epochs, the last epoch's weights.",
        "- `early_stopping` (pengster 0.3, `model.train()`): scvi-tools' heuristic as the cap, KL warm-up over 125 "
        "steps, validation loss at the full KL weight, stop after 20 epochs or 250 steps without improvement, the "
        "weights of the lowest validation loss kept.",
        "",
        "Each dataset keeps its training cells only, split into fit and validation cells as in `tune.py`; the "
        "validation cells play the test cells of `accuracy.py`, scored with its code and the default read-outs. "
        "`best_epoch` is the epoch of the lowest validation loss (for `steps_500`, the weights kept are the last "
        "epoch's).",
        "",
    ]
    real = runs[~runs["dataset"].str.startswith("synthetic")]
    if not real.empty:
        summary = tune.summarize(real.rename(columns={"method": "candidate"}))
        table = tune.ranks(summary, list(RULES))
        if not table.empty:
            mean_rank = table.mean(0).sort_values()
            lines += [
                f"Mean rank over the {len(table)} (dataset, task) headline metrics (1 = better; the rule chosen "
                f"before the run: the lower mean rank): **{mean_rank.index[0]}**.",
                "",
                "| rule | mean rank |",
                "|---|---|",
                *[f"| {name} | {value:.2f} |" for name, value in mean_rank.items()],
                "",
            ]
        lines += ["| dataset | task | metric | " + " | ".join(RULES) + " |", "|---|---|---|" + "---|" * len(RULES)]
        shown = summary[summary["main"] | summary["task"].str.startswith("length")]
        shown = shown[~shown["metric"].isin(["steps_per_epoch"])]
        for (dataset, task, metric), group in shown.groupby(["dataset", "task", "metric"], sort=False):
            by = group.set_index("candidate")
            cells = [_cell(by, rule, metric) for rule in RULES]
            shown_task = (
                f"length ({task.removeprefix('length of ').split('+')[0]})" if task.startswith("length") else task
            )
            lines.append(f"| {dataset} | {shown_task} | {metric} | " + " | ".join(cells) + " |")
        lines.append("")
    synthetic = runs[runs["dataset"].str.startswith("synthetic")]
    if not synthetic.empty:
        wide = synthetic.pivot_table(index=["dataset", "seed"], columns="metric", values="value").reset_index()
        wide["n"] = wide["dataset"].str.replace("synthetic_", "").astype(int)
        lines += [
            "## Synthetic CITE-seq sets (1,000 genes, 30 proteins): where the default rule stops",
            "",
            "| cells | seed | steps an epoch | cap (epochs) | stopped at epoch | best epoch | best step | "
            "0.2 budget (epochs) | validation loss at 0.2's last epoch | at the best epoch | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, row in wide.sort_values(["n", "seed"]).iterrows():
            lines.append(
                f"| {row['n']:,} | {row['seed']} | {row['steps_per_epoch']:.0f} | {row['cap']:.0f} | "
                f"{row['n_epochs']:.0f} | {row['best_epoch']:.0f} | {row['best_epoch'] * row['steps_per_epoch']:.0f} "
                f"| {row['steps_500_epochs']:.0f} | {row['loss_at_steps_500']:.1f} | {row['loss_at_best']:.1f} | "
                f"{row['train_seconds']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _cell(by: pd.DataFrame, rule: str, metric: str) -> str:
    if rule not in by.index:
        return "–"
    digits = 0 if metric in ("n_epochs", "best_epoch", "train_seconds") else 3
    return f"{by.loc[rule, 'mean']:.{digits}f} ± {by.loc[rule, 'sd']:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", help="only these datasets of the accuracy benchmark")
    parser.add_argument("--synthetic", type=int, nargs="+", help="synthetic CITE-seq sets of these sizes instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs", type=Path, default=Path("training_length_runs.csv"))
    parser.add_argument("--from-runs", type=Path, nargs="+", help="summarize these CSVs into results/")
    parser.add_argument("--out", type=Path, default=accuracy.RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    if args.synthetic:
        run_synthetic(args.synthetic, args.seeds, args.runs)
    elif not args.from_runs:
        run_real(args.datasets, args.seeds, args.runs)
    if not args.from_runs:
        return
    runs = pd.concat([pd.read_csv(path) for path in args.from_runs], ignore_index=True)
    seeds = sorted(runs["seed"].unique().tolist())
    note = (
        f"Measured on {date.today()} with the pengster {pengster.__version__} development code, seeds {seeds}, "
        "1 torch thread; seconds are wall time on a 2-core machine that ran other benchmarks at the same time. "
        "Produced by `benchmarks/training_length.py`; "
        "no test cell is read."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "training_length_runs.csv", index=False)
    records = tune.summarize(runs.rename(columns={"method": "candidate"})).to_dict(orient="records")
    (args.out / "training_length.json").write_text(json.dumps(records, indent=1) + "\n")
    (args.out / "training_length.md").write_text(markdown(runs, note))


if __name__ == "__main__":
    main()
