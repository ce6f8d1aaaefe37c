"""The training plan logs scvi-tools' metrics once an epoch, with the same values as logging them every step."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import scvi
import torch

import pengster
from pengster.model import JointVAE
from pengster.model._plan import EpochSums, JointTrainingPlan

torch.set_num_threads(1)


class _CountLogs(pl.Callback):
    """Count ``LightningModule.log`` calls inside training steps, and keep the progress bar's metrics."""

    def __init__(self, monkeypatch):
        self.in_step, self.calls, self.bar = False, 0, {}
        original = pl.LightningModule.log

        def log(module, *args, **kwargs):
            self.calls += self.in_step
            return original(module, *args, **kwargs)

        monkeypatch.setattr(pl.LightningModule, "log", log)

    def on_train_batch_start(self, *args):
        self.in_step = True

    def on_train_batch_end(self, *args):
        self.in_step = False

    def on_train_end(self, trainer, pl_module):
        self.bar = dict(trainer.progress_bar_metrics)


def _history(monkeypatch, *, every_step: bool, callbacks=()) -> dict:
    if every_step:  # scvi-tools' own training and validation steps, which log every metric every step
        monkeypatch.setattr(JointTrainingPlan, "_epoch_logging", property(lambda self: False))
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 90, "cite": 70}, n_genes=30, n_peaks=40, seed=0)
    JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    model.train(max_epochs=3, batch_size=48, enable_progress_bar=False, callbacks=list(callbacks))
    return model.history


def test_epoch_metrics_equal_those_logged_every_step_without_a_log_call_per_step(monkeypatch):
    counter = _CountLogs(monkeypatch)
    history = _history(monkeypatch, every_step=False, callbacks=[counter])
    assert counter.calls == 0  # Lightning's log costs host time a GPU waits for
    assert "train_loss" in counter.bar  # the progress bar still shows the loss
    with monkeypatch.context() as patched:
        reference = _history(patched, every_step=True)
    keys = set(reference) - {"kl_weight"}  # logged every step, kept at every 10th step only
    assert keys <= set(history) and {"train_loss", "validation_loss", "elbo_train", "contrastive_train"} <= keys
    for key in sorted(keys):
        np.testing.assert_array_equal(history[key].to_numpy(), reference[key].to_numpy(), err_msg=key)
    assert len(history["kl_weight"]) == 3  # now one value an epoch


def test_epoch_sums_weigh_by_cells_and_refuse_changing_names():
    sums = EpochSums()
    sums.add({"a": (torch.tensor(1.0), 10), "b": (torch.tensor(4.0), 2)})
    sums.add({"a": (torch.tensor(3.0), 30), "b": (torch.tensor(0.0), 2)})
    means = sums.means()
    assert means["a"].item() == pytest.approx((10 + 90) / 40) and means["b"].item() == pytest.approx(2.0)
    doubled = sums.means(lambda tensor, reduce_op: tensor * 2)  # two ranks with the same sums
    assert doubled["a"].item() == pytest.approx(means["a"].item())
    with pytest.raises(ValueError, match=r"metrics \['a'\] logged after \['a', 'b'\]"):
        sums.add({"a": (torch.tensor(1.0), 1)})
