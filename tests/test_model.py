from __future__ import annotations

import numpy as np
import pytest
import torch

import pengster
from pengster.dataloaders import MosaicBatchSampler
from pengster.model import JointVAE
from pengster.nn import product_of_experts

SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def trained(mdata, max_epochs=3, **model_kwargs):
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=6, n_hidden=32, **model_kwargs)
    model.train(max_epochs=max_epochs, batch_size=64, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def mosaic():
    return pengster.data.synthetic_mosaic(
        n_cells={"multiome": 120, "cite": 100}, n_genes=60, n_peaks=80, n_proteins=12, gene_overlap=0.7, seed=1
    )


@pytest.fixture(scope="module")
def model(mosaic):
    torch.set_num_threads(1)
    return trained(mosaic)


def test_product_of_experts_closed_form_and_mask():
    mean = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.5]])]
    variance = [torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, 0.25]])]
    both = product_of_experts(mean, variance, [torch.ones(1), torch.ones(1)])
    precision = 1 + 1 / variance[0] + 1 / variance[1]
    expected_mean = (mean[0] / variance[0] + mean[1] / variance[1]) / precision
    torch.testing.assert_close(both.loc, expected_mean)
    torch.testing.assert_close(both.scale, precision.rsqrt())
    # a masked expert contributes nothing, even if it holds NaN
    poisoned = product_of_experts(
        [mean[0], torch.full_like(mean[1], torch.nan)], variance, [torch.ones(1), torch.zeros(1)]
    )
    alone = product_of_experts(mean[:1], variance[:1], [torch.ones(1)])
    torch.testing.assert_close(poisoned.loc, alone.loc)
    torch.testing.assert_close(poisoned.scale, alone.scale)


def test_sampler_puts_every_dataset_in_every_minibatch():
    strata = np.array([0] * 500 + [1] * 30 + [2] * 5)
    sampler = MosaicBatchSampler(strata, batch_size=64, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == int(np.ceil(len(strata) / 64))
    for batch in batches:
        assert set(strata[batch]) == {0, 1, 2}
    seen = np.concatenate(batches)
    assert set(seen) == set(range(len(strata)))  # every cell once per epoch (small strata are resampled)
    # two ranks split the minibatches of one shuffle
    ranks = [list(MosaicBatchSampler(strata, 64, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) + len(ranks[1]) == len(batches)


def test_joint_posterior_ignores_unmeasured_modality(model, mosaic):
    """A cell without protein gets no protein expert: its joint posterior is the one of its other modalities."""
    tensors = next(iter(model._make_data_loader(model.adata, batch_size=400)))
    inputs = model.module._get_inference_input(tensors)
    with torch.inference_mode():
        experts = model.module.experts(**inputs)
        has = inputs["has"]
        joint = model.module.fuse(experts, has)
        without_protein = model.module.fuse(experts, has, ["rna", "atac"])
    no_protein = has["protein"] == 0
    assert no_protein.any() and (~no_protein).any()
    torch.testing.assert_close(joint.loc[no_protein], without_protein.loc[no_protein])
    # and where protein was measured it does change the posterior
    assert not torch.allclose(joint.loc[~no_protein], without_protein.loc[~no_protein])
    latent = model.get_latent_representation()
    np.testing.assert_allclose(latent, joint.loc.numpy(), rtol=1e-5, atol=1e-6)


def test_latents_and_predictions_shapes(model, mosaic):
    latent = model.get_latent_representation()
    assert latent.shape == (mosaic.n_obs, 6) and np.isfinite(latent).all()
    atac_only = model.get_latent_representation(modality="atac")
    has_atac = mosaic.obs_names.isin(mosaic.mod["atac"].obs_names)
    assert np.isnan(atac_only[~has_atac]).all() and np.isfinite(atac_only[has_atac]).all()
    mean, std = model.predict(target="protein", n_samples=4, return_std=True)
    assert list(mean.columns) == list(mosaic.mod["prot"].var_names)
    assert (std.to_numpy() > 0).all() and np.isfinite(mean.to_numpy()).all()
    atac = model.predict(target="atac")
    assert ((atac.to_numpy() > 0) & (atac.to_numpy() < 1)).all()
    # every cell, the CITE-seq cells' ATAC imputed from what they measured
    denoised = model.get_normalized_expression(modality="atac")
    assert list(denoised.index) == list(mosaic.obs_names) and np.isfinite(denoised.to_numpy()).all()


def test_prediction_uses_only_the_source(model, mosaic):
    """Predicting protein from RNA must not change when the cell's measured protein changes."""
    prot_cells = mosaic.mod["prot"].obs_names
    before = model.predict(target="protein", source="rna").loc[prot_cells]
    changed = mosaic.copy()
    changed.mod["prot"].X = changed.mod["prot"].X * 5
    JointVAE.setup_mudata(changed, modalities=SETUP_MODALITIES, batch_key="batch")
    after = model.predict(changed, target="protein", source="rna").loc[prot_cells]
    np.testing.assert_allclose(before.to_numpy(), after.to_numpy(), rtol=1e-5)
    with_protein = model.get_latent_representation(changed)
    assert not np.allclose(with_protein, model.get_latent_representation())


def test_save_load_round_trip(model, mosaic, tmp_path):
    model.save(tmp_path / "model", overwrite=True)
    loaded = JointVAE.load(str(tmp_path / "model"), adata=mosaic)
    np.testing.assert_array_equal(model.get_latent_representation(), loaded.get_latent_representation())
    np.testing.assert_array_equal(model.predict(target="rna").to_numpy(), loaded.predict(target="rna").to_numpy())


def test_training_reduces_loss_and_contrastive_switch(mosaic):
    model = trained(mosaic, max_epochs=15, contrastive_weight=0.0)
    loss = model.history["train_loss"].iloc[:, 0].to_numpy()
    assert loss[-1] < loss[0]
    assert float(model.history["contrastive_train"].iloc[-1, 0]) >= 0
    assert model.module.contrastive_weight == 0.0


def test_zinb_rna_and_poisson_atac_train_and_predict(mosaic):
    model = trained(mosaic, max_epochs=10, rna_likelihood="zinb", atac_likelihood="poisson")
    loss = model.history["train_loss"].iloc[:, 0].to_numpy(dtype=float)
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    rna, atac = model.predict(target="rna"), model.predict(target="atac")
    assert np.isfinite(rna.to_numpy()).all() and (rna.to_numpy() >= 0).all()
    assert np.isfinite(atac.to_numpy()).all() and (atac.to_numpy() >= 0).all()
    assert rna.to_numpy().std() > 0 and atac.to_numpy().std() > 0


def test_contrastive_loss_decreases_with_training(mosaic):
    model = trained(mosaic, max_epochs=25, contrastive_weight=5.0)
    contrastive = model.history["contrastive_train"].iloc[:, 0].to_numpy()
    assert contrastive[-3:].mean() < contrastive[:3].mean()


def test_same_seed_same_latent(mosaic):
    import scvi

    latents = []
    for _ in range(2):
        scvi.settings.seed = 7
        latents.append(trained(mosaic, max_epochs=2).get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])
