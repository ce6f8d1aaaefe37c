"""The training-length rule: a generous epoch cap, KL warm-up by steps, early stopping that keeps its best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from scvi.model.base import UnsupervisedTrainingMixin

import pengster
from pengster.model import JointVAE
from pengster.train import BestWeights, default_max_epochs, training_length

torch.set_num_threads(1)


def test_the_epoch_cap_is_scvi_tools_heuristic():
    # 100 cells: 400 epochs; 100k cells: 400 * 20k / 100k = 80; an atlas of 1M: 8
    assert default_max_epochs(100) == 400
    assert default_max_epochs(100_000) == 80
    assert default_max_epochs(1_000_000) == 8


def test_warm_up_and_patience_count_optimizer_steps():
    # 4,709 training cells in minibatches of 256: 19 steps an epoch; 250 steps of patience are 14 epochs, so 20 wins
    assert training_length(400, 4_709, 256) == (125, 20)
    # 900 training cells: 4 steps an epoch; 250 steps are 63 epochs
    assert training_length(400, 900, 256) == (125, 63)
    # a short explicit training warms up over a quarter of its steps: 3 epochs of 4 steps
    assert training_length(3, 900, 256) == (3, 63)


@pytest.mark.parametrize("explicit", [None, 7])
def test_train_passes_the_rule_to_scvi_tools(monkeypatch, explicit):
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 300}, seed=0)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    seen = {}

    def record(self, **kwargs):  # scvi-tools' train, which would start Lightning
        seen.update(kwargs)

    monkeypatch.setattr(UnsupervisedTrainingMixin, "train", record)
    model.train(max_epochs=explicit, batch_size=32)
    # 300 cells, 270 of them training cells, in minibatches of 32: 9 steps an epoch
    assert seen["max_epochs"] == (explicit or 400)
    assert seen["plan_kwargs"]["n_epochs_kl_warmup"] is None
    assert seen["plan_kwargs"]["n_steps_kl_warmup"] == (15 if explicit else 125)  # 7 * 9 // 4 = 15
    assert seen["early_stopping_patience"] == 28  # 250 steps / 9 a step, more than 20 epochs
    assert sum(isinstance(c, BestWeights) for c in seen["callbacks"]) == 1


def test_training_keeps_the_weights_of_the_lowest_validation_loss():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 200}, seed=1)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    kept = {}

    class Record(BestWeights):
        """Copies the weights of every epoch (the test's record, not the model's)."""

        def on_validation_end(self, trainer, pl_module):
            kept[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.module.state_dict().items()}

    # a learning rate this high makes the validation loss wander, so the last epoch is rarely the best one
    model.train(max_epochs=12, batch_size=32, plan_kwargs={"lr": 0.05}, callbacks=[Record()], enable_progress_bar=False)
    losses = model.history["validation_loss"].iloc[:, 0].to_numpy()
    best = int(np.argmin(losses))
    state = model.module.state_dict()
    # the weights are exactly those copied at the best epoch (a copy, so bit for bit)
    assert all(torch.equal(state[key], kept[best][key]) for key in state)
    if best != len(losses) - 1:
        assert not all(torch.equal(state[key], kept[len(losses) - 1][key]) for key in state)


def test_the_validation_loss_is_measured_at_the_full_kl_weight():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 200}, seed=1)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    seen, trained = [], []

    class Weight(BestWeights):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trained.append(float(pl_module.loss_kwargs["kl_weight"]))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(float(pl_module.loss_kwargs["kl_weight"]))

    # 1 epoch of 6 steps warms up over a quarter of them: training ends at KL weight 1 only if validation ignores it
    model.train(max_epochs=1, batch_size=32, callbacks=[Weight()], check_val_every_n_epoch=1, enable_progress_bar=False)
    assert seen and all(w == 1.0 for w in seen)
    # the training steps themselves warmed up: weights 0, 1/1, ... (1 step of warm-up: 6 steps // 4)
    assert trained[0] == 0.0
