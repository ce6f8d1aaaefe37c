"""The same seed gives bit-identical latents, predictions and written results on CPU; another seed does not."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest
import scvi
import torch

from pengster.data import synthetic_mosaic
from pengster.dataloaders import MosaicBatchSampler
from pengster.model import JointVAE
from pengster.tl import write_results

torch.set_num_threads(1)

ALL = {"rna": "rna", "atac": "atac", "protein": "prot"}
SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def _run(seed: int) -> tuple[JointVAE, md.MuData]:
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=5)
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch")
    scvi.settings.seed = seed
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
    return model, mdata


def _outputs(model: JointVAE, mdata: md.MuData) -> dict[str, np.ndarray]:
    outputs = {
        "latent": model.get_latent_representation(),
        "protein_only": model.get_latent_representation(modality="protein"),
    }
    for target in ALL:
        outputs[f"predict_{target}"] = model.predict(target=target).to_numpy()
        scvi.settings.seed = 11  # sampled predictions are reproducible given the seed set before them
        mean, std = model.predict(target=target, n_samples=4, return_std=True)
        outputs[f"sampled_{target}"], outputs[f"std_{target}"] = mean.to_numpy(), std.to_numpy()
        outputs[f"denoised_{target}"] = model.get_normalized_expression(modality=target).to_numpy()
    scvi.settings.seed = 11
    write_results(model, mdata, n_samples=3)
    outputs |= {f"obsm_{key}": np.asarray(value) for key, value in mdata.obsm.items()}
    return outputs


@pytest.fixture(scope="module")
def first():
    return _outputs(*_run(seed=7))


def test_same_seed_is_bit_identical(first):
    second = _outputs(*_run(seed=7))
    assert set(first) == set(second)
    for key, value in first.items():
        np.testing.assert_array_equal(second[key], value, err_msg=key)


def test_another_seed_gives_another_model(first):
    other = _outputs(*_run(seed=8))
    assert not np.allclose(other["latent"], first["latent"])
    assert not np.allclose(other["predict_protein"], first["predict_protein"])


def test_sampler_epochs_depend_only_on_seed_and_epoch():
    strata = np.array([0] * 70 + [1] * 30)
    first, second = MosaicBatchSampler(strata, 16, seed=3), MosaicBatchSampler(strata, 16, seed=3)
    second.set_epoch(0)
    list(second)  # an extra epoch drawn before does not matter
    for sampler in (first, second):
        sampler.set_epoch(5)
    assert list(first) == list(second)
    first.set_epoch(6)
    assert list(first) != list(second)


def test_step_seed_seeds_torch_from_the_run_seed_epoch_minibatch_and_rank():
    from pengster.train._callbacks import StepSeed, step_seed

    trainer = type("Trainer", (), {"current_epoch": 2, "global_rank": 1})()
    StepSeed(7).on_train_batch_start(trainer, None, None, 5)
    drawn = torch.rand(4)
    torch.manual_seed(step_seed(7, 2, 5, 1))
    assert torch.equal(drawn, torch.rand(4))
    assert len({step_seed(7, 2, 5, 1), step_seed(7, 2, 5, 0), step_seed(7, 2, 4, 1), step_seed(7, 1, 5, 1)}) == 4
