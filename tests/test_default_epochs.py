"""The default number of epochs: a budget of optimizer steps, within scvi-tools' heuristic."""

from __future__ import annotations

import pytest
import scvi
import torch
from scvi.model.base import UnsupervisedTrainingMixin

import pengster
from pengster.model import JointVAE
from pengster.train import default_max_epochs

torch.set_num_threads(1)


def test_default_epochs_give_about_a_thousand_steps_within_scvi_tools_heuristic():
    # 4,709 training cells in minibatches of 256: 19 steps an epoch, 27 epochs for 500 steps (not scvi-tools' 400)
    assert default_max_epochs(5_232, 4_709, 256) == 27
    # 100 cells: 1 step an epoch would ask for 500 epochs; scvi-tools' heuristic caps them at 400
    assert default_max_epochs(100, 90, 256) == 400
    # 100k cells: 88 steps an epoch; 6 epochs would do 500 steps, but at least 20 epochs are trained
    assert default_max_epochs(100_000, 90_000, 1_024) == 20
    # an atlas: scvi-tools' heuristic (400 * 20k / 1M = 8 epochs) is the upper bound
    assert default_max_epochs(1_000_000, 900_000, 2_048) == 8


@pytest.mark.parametrize("explicit", [None, 7])
def test_train_uses_the_default_epochs_and_warms_up_over_a_quarter_of_them(monkeypatch, explicit):
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 300}, seed=0)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    seen = {}

    def record(self, **kwargs):  # scvi-tools' train, which would start Lightning
        seen.update(kwargs)

    monkeypatch.setattr(UnsupervisedTrainingMixin, "train", record)
    model.train(max_epochs=explicit, batch_size=32)
    # 300 cells, 270 of them training cells, in minibatches of 32: 9 steps an epoch, 56 epochs for 500 steps
    expected = explicit or 56
    assert seen["max_epochs"] == expected
    assert seen["plan_kwargs"]["n_epochs_kl_warmup"] == max(1, expected // 4)
