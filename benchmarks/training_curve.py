"""How many optimizer steps pengster needs: validation accuracy along one long training, on training cells only.

SNARE-seq2 (``pengster.datasets.mop_snareseq2``): the six libraries the first tutorial trains on (09A-09F) are split
by library into fit (09A-09D) and validation (09E-09F) nuclei; the tutorial's held-out libraries (09G, 09H) are
never read. One model is trained for ``--epochs`` epochs with the default settings otherwise (early stopping off, so
the whole curve is seen); every ``--every`` epochs the validation nuclei are predicted from one modality, and scored:
ATAC->RNA Pearson r per gene, RNA->ATAC AUROC and Pearson r per peak; the validation loss is logged every epoch.
The default ``max_epochs`` (:func:`pengster.train.default_max_epochs`) is chosen from these curves.

    OMP_NUM_THREADS=1 python benchmarks/training_curve.py    # writes benchmarks/results/training_curve.json/.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mudata as md
import numpy as np
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import pengster
from pengster import metrics

RESULTS = Path(__file__).resolve().parent / "results"
FIT, VALIDATION = ["09A", "09B", "09C", "09D"], ["09E", "09F"]


def _subset(mdata: md.MuData, mask: np.ndarray, keep: dict) -> md.MuData:
    subset = md.MuData({key: adata[mask][:, keep[key]].copy() for key, adata in mdata.mod.items()})
    subset.obs = mdata.obs.loc[subset.obs_names].copy()
    return subset


def _only(mdata: md.MuData, modality: str) -> md.MuData:
    single = md.MuData({modality: mdata.mod[modality].copy()})
    single.obs = mdata.obs.loc[single.obs_names].copy()
    return single


def _log_normalize(counts) -> np.ndarray:
    counts = np.asarray(counts.toarray(), dtype=np.float32)
    return np.log1p(counts / counts.sum(1, keepdims=True).clip(1) * 1e4)


class Scores(Callback):
    """Score the validation nuclei every ``every`` epochs (the module is put back in training mode after)."""

    def __init__(self, model, validation: md.MuData, every: int):
        self.model, self.validation, self.every, self.rows = model, validation, every, []
        self.observed_rna = _log_normalize(validation.mod["rna"].X)
        self.observed_atac = (validation.mod["atac"].X > 0).astype(np.float32).toarray()
        self.rna_only, self.atac_only = _only(validation, "rna"), _only(validation, "atac")

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        if epoch % self.every:
            return
        start = time.perf_counter()
        # the getters refuse a model whose training has not ended; this one is scored mid-training on purpose
        self.model.is_trained_ = True
        try:
            rna = self.model.predict(adata=self.atac_only, target="rna", source="atac")
            atac = self.model.predict(adata=self.rna_only, target="atac", source="rna")
        finally:
            self.model.is_trained_ = False
            self.model.module.train()
        self.rows.append(
            {
                "epoch": epoch,
                "steps": trainer.global_step,
                "atac_to_rna_pearson_per_gene": metrics.pearson_per_feature(self.observed_rna, rna.to_numpy()),
                "rna_to_atac_auroc_per_peak": metrics.auroc_per_feature(self.observed_atac, atac.to_numpy()),
                "rna_to_atac_pearson_per_peak": metrics.pearson_per_feature(self.observed_atac, atac.to_numpy()),
                "score_seconds": time.perf_counter() - start,
            }
        )
        print(self.rows[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scvi.settings.seed = args.seed
    md.set_options(pull_on_update=False)
    snare = pengster.datasets.mop_snareseq2()
    library = snare.obs["batch"].astype(str)
    fit_mask = library.isin(FIT).to_numpy()
    keep = {key: np.asarray((adata.X[fit_mask] > 0).sum(0)).ravel() > 0 for key, adata in snare.mod.items()}
    fit = _subset(snare, fit_mask, keep)
    validation = _subset(snare, library.isin(VALIDATION).to_numpy(), keep)
    pengster.model.JointVAE.setup_mudata(fit, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = pengster.model.JointVAE(fit)
    scores = Scores(model, validation, args.every)
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        early_stopping=False,
        check_val_every_n_epoch=1,  # the validation loss of every epoch (scvi-tools skips it without early stopping)
        enable_progress_bar=False,
        callbacks=[scores],
    )
    seconds = time.perf_counter() - start
    history = {key: model.history[key].iloc[:, 0].tolist() for key in ("train_loss", "validation_loss")}
    result = {
        "data": f"SNARE-seq2, fit libraries {FIT}, validation libraries {VALIDATION}",
        "n_fit": fit.n_obs,
        "n_validation": validation.n_obs,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "train_seconds": seconds,
        "scores": scores.rows,
        "history": history,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_curve.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Validation accuracy along one training (SNARE-seq2, training libraries only)",
        "",
        f"Fit {fit.n_obs:,} nuclei ({', '.join(FIT)}), validation {validation.n_obs:,} ({', '.join(VALIDATION)}); "
        f"seed {args.seed}, 1 torch thread, {seconds:.0f} s. Produced by `benchmarks/training_curve.py`.",
        "",
        "| epoch | steps | ATAC->RNA r per gene | RNA->ATAC AUROC per peak | RNA->ATAC r per peak | validation loss |",
        "|---|---|---|---|---|---|",
    ]
    for row in scores.rows:
        loss = history["validation_loss"][row["epoch"] - 1]
        lines.append(
            f"| {row['epoch']} | {row['steps']} | {row['atac_to_rna_pearson_per_gene']:.3f} | "
            f"{row['rna_to_atac_auroc_per_peak']:.3f} | {row['rna_to_atac_pearson_per_peak']:.3f} | {loss:.0f} |"
        )
    (args.out / "training_curve.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
