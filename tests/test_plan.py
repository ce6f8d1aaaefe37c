"""The module computes without side effects; the training plan updates its running statistics in one place."""

from __future__ import annotations

import numpy as np
import scvi
import torch

import pengster
from pengster.dataloaders._device_loader import loader_from_manager
from pengster.model import JointVAE
from pengster.module._constants import MODULE_KEYS

torch.set_num_threads(1)

BATCH_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")
"""torch's own batch-norm layers (in scvi-tools' decoders) keep their statistics as every torch model does."""


def _model_and_minibatch():
    mdata = pengster.data.synthetic_mosaic(n_cells={"multiome": 50, "cite": 40}, gene_overlap=0.8, seed=3)
    JointVAE.setup_mudata(
        mdata, modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}, batch_key="batch"
    )
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_hidden=16, n_latent=4)
    loader = loader_from_manager(
        model.adata_manager, indices=np.arange(90), strata=np.zeros(90), batch_size=90, device="cpu", shuffle=False,
        binary_keys=("x_atac",),
    )  # fmt: skip
    return model, next(iter(loader))


def _own_buffers(module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers() if not name.endswith(BATCH_NORM_STATISTICS)}


def test_inference_generative_and_loss_change_no_buffer_and_the_update_is_explicit():
    model, tensors = _model_and_minibatch()
    module = model.module.train()
    # a fitted regression first, so that its update has moments to move
    inference, _, _ = module(tensors)
    module.update_running_statistics(inference)
    before = _own_buffers(module)
    assert {"heads.atac.cell_factor_mean", "heads.atac.cell_factor_predictor.moment_xx"} <= set(before)
    torch.manual_seed(0)
    inference, _, loss = module(tensors, loss_kwargs={"kl_weight": 0.5})
    loss.loss.backward()
    for name, buffer in _own_buffers(module).items():
        torch.testing.assert_close(buffer, before[name], rtol=0, atol=0, msg=name)

    module.update_running_statistics(inference)
    has_atac = inference[MODULE_KEYS.HAS]["atac"] > 0
    encoded = inference[MODULE_KEYS.STATE]["atac"][has_atac].mean()
    expected = before["heads.atac.cell_factor_mean"] + 0.01 * (encoded - before["heads.atac.cell_factor_mean"])
    torch.testing.assert_close(module.heads["atac"].cell_factor_mean, expected)
    predictor = module.heads["atac"].cell_factor_predictor
    assert predictor.n_updates == before["heads.atac.cell_factor_predictor.n_updates"] + 1
    assert not torch.equal(predictor.moment_xy, before["heads.atac.cell_factor_predictor.moment_xy"])


def test_training_updates_the_running_statistics_once_per_step():
    model, _ = _model_and_minibatch()
    calls = []
    original = type(model.module).update_running_statistics

    def update(module, inference_outputs):
        calls.append(module.training)
        return original(module, inference_outputs)

    type(model.module).update_running_statistics = update
    try:
        model.train(max_epochs=2, batch_size=32, enable_progress_bar=False, train_size=1.0)
    finally:
        type(model.module).update_running_statistics = original
    assert calls == [True] * (2 * 3)  # 90 cells, minibatches of 32: 3 steps an epoch
    assert model.module.heads["atac"].cell_factor_mean.item() != 0.5
    assert model.module.heads["atac"].cell_factor_predictor.fitted
