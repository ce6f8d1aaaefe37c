from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning.pytorch as pl
    import numpy as np
    import scvi
    import torch

    import pengster

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    out = sys.argv[1]

    class Record(pl.Callback):
        def __init__(self):
            self.panels, self.losses = [], []

        def on_train_epoch_start(self, trainer, module):
            self.losses = []  # (loss, cells) of this epoch's steps

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.panels.append(len(batch["panel"]))
            self.losses.append((float(outputs["loss"]), len(batch["panel"])))

        def on_train_end(self, trainer, module):
            rank = trainer.global_rank
            logged = float(trainer.callback_metrics["train_loss"])
            with open(f"{out}/rank{rank}.json", "w") as handle:
                json.dump(
                    {"world": trainer.world_size, "cells": self.panels, "losses": self.losses, "logged": logged},
                    handle,
                )

    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 120, "cite": 100}, n_genes=40, n_peaks=50, n_proteins=8, seed=1
    )
    pengster.model.JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
    )
    model = pengster.model.JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(
        max_epochs=2, batch_size=32, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
        early_stopping=False, enable_progress_bar=False, callbacks=[Record()],
    )
    """
)


def test_ddp_two_cpu_processes_split_every_epoch(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PL_TORCH_DISTRIBUTED_BACKEND": "gloo"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # both ranks take the same number of steps (else DDP hangs) and together cover an epoch's cells
    assert len(ranks[0]["cells"]) == len(ranks[1]["cells"]) > 0
    per_epoch = (sum(ranks[0]["cells"]) + sum(ranks[1]["cells"])) / 2
    assert per_epoch >= 0.9 * 220 * 0.9
    # the epoch's loss is reduced over the ranks (Lightning's sync_dist of scvi-tools' epoch metrics): the same on
    # both ranks, and nearer the mean over all cells than either rank's own mean. (Not equal to it: Lightning
    # averages the ranks' summed cell counts in integers: about 0.4% off with an odd number of cells.)
    steps = ranks[0]["losses"] + ranks[1]["losses"]
    expected = sum(loss * cells for loss, cells in steps) / sum(cells for _, cells in steps)
    own = [sum(loss * cells for loss, cells in r["losses"]) / sum(cells for _, cells in r["losses"]) for r in ranks]
    assert ranks[0]["logged"] == ranks[1]["logged"]
    assert abs(ranks[0]["logged"] - expected) < min(abs(mean - expected) for mean in own)
