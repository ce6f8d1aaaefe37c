"""The MULTIVI and TOTALVI tutorials' calls (scvi-tools 1.4), with ``JointVAE`` in place of the class name, on the
real BMMC starter subsets: an scvi-tools user keeps their habits.

The calls follow the tutorials (setup_mudata in their form, the model from the MuData alone, train, the getters with
``adata``/``indices``, save with ``save_anndata=True``, load, reference mapping). Few epochs: these tests check that
the calls work and return what scvi-tools returns, plus a baseline each (the trained model's ELBO beats the untrained
one's).
"""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch

import pengster
from pengster.model import JointVAE

torch.set_num_threads(1)

EPOCHS = 4


@pytest.fixture(scope="module")
def multiome(data_dir):
    return pengster.datasets.bmmc_multiome()


@pytest.fixture(scope="module")
def cite(data_dir):
    return pengster.datasets.bmmc_cite()


def _set_up_and_train(mdata, **setup):
    """setup_mudata as a scvi-tools tutorial calls it (the batch read from the RNA modality); the untrained ELBO."""
    JointVAE.setup_mudata(mdata, batch_key="batch", **setup)
    untrained_elbo = JointVAE(mdata).get_elbo()
    model = JointVAE(mdata)
    model.train(max_epochs=EPOCHS)
    return model, untrained_elbo


@pytest.fixture(scope="module")
def multivi_like(multiome):
    """MULTIVI tutorial: setup_mudata with the batch read from the RNA modality, the model from the MuData alone."""
    return _set_up_and_train(
        multiome,
        rna_layer="counts",
        atac_layer="counts",
        modalities={"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"},
    )


@pytest.fixture(scope="module")
def totalvi_like(cite):
    """TOTALVI tutorial: RNA and protein counts layers, batch from the RNA modality."""
    return _set_up_and_train(
        cite,
        rna_layer="counts",
        protein_layer="counts",
        modalities={"rna_layer": "rna", "protein_layer": "prot", "batch_key": "rna"},
    )


# --------------------------------------------------------------------------------------------- MULTIVI tutorial
def test_multivi_setup_train_and_latent(multivi_like, multiome):
    model, _ = multivi_like
    assert model.is_trained_
    assert model.modalities == {"rna": "rna", "atac": "atac"}
    assert model.summary_stats.n_batch == multiome.mod["rna"].obs["batch"].nunique()
    latent = model.get_latent_representation()
    assert latent.shape == (multiome.n_obs, 20) and np.isfinite(latent).all()


def test_multivi_elbo_beats_the_untrained_model(multivi_like, multiome):
    model, untrained_elbo = multivi_like
    elbo = model.get_elbo()
    assert np.isfinite(float(elbo)) and float(elbo) > float(untrained_elbo)
    errors = model.get_reconstruction_error(adata=multiome, indices=np.arange(50))
    assert set(errors) == {"reconstruction_rna", "reconstruction_atac"}


def test_multivi_normalized_expression_for_every_cell(multivi_like, multiome):
    model, _ = multivi_like
    expression = model.get_normalized_expression(modality="rna")
    assert expression.shape == (multiome.n_obs, multiome.mod["rna"].n_vars)
    assert np.isfinite(expression.to_numpy()).all()


def test_multivi_getters_take_adata_indices_and_give_mean(multivi_like, multiome):
    model, _ = multivi_like
    cells = np.arange(40)
    latent = model.get_latent_representation(adata=multiome, indices=cells, give_mean=True)
    sampled = model.get_latent_representation(adata=multiome, indices=cells, give_mean=False)
    assert latent.shape == sampled.shape == (40, 20) and not np.allclose(latent, sampled)
    genes = multiome.mod["rna"].var_names[:25].tolist()
    expression = model.get_normalized_expression(
        adata=multiome, indices=cells, modality="rna", gene_list=genes, library_size=1e4, n_samples=3, return_mean=True
    )
    assert isinstance(expression, pd.DataFrame) and list(expression.columns) == genes
    # scaled to library_size over all genes, so the 25 asked for sum to less
    assert (expression.sum(axis=1) < 1e4).all() and (expression.to_numpy() > 0).all()
    as_array = model.get_normalized_expression(adata=multiome, indices=cells, modality="rna", return_numpy=True)
    assert isinstance(as_array, np.ndarray) and as_array.shape == (40, multiome.mod["rna"].n_vars)


def test_multivi_save_with_anndata_and_load_from_the_folder(multivi_like, tmp_path):
    model, _ = multivi_like
    model.save(tmp_path / "multivi_like", save_anndata=True)
    loaded = JointVAE.load(tmp_path / "multivi_like")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


def test_multivi_load_with_adata(multivi_like, multiome, tmp_path):
    model, _ = multivi_like
    model.save(str(tmp_path / "multivi_like"), overwrite=True)
    loaded = JointVAE.load(str(tmp_path / "multivi_like"), adata=multiome, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())


# --------------------------------------------------------------------------------------------- TOTALVI tutorial
def test_totalvi_setup_train_latent_and_elbo(totalvi_like, cite):
    model, untrained_elbo = totalvi_like
    assert model.modalities == {"rna": "rna", "protein": "prot"}
    latent = model.get_latent_representation()
    assert latent.shape == (cite.n_obs, 20) and np.isfinite(latent).all()
    assert float(model.get_elbo(adata=cite)) > float(untrained_elbo)
    proteins = model.get_normalized_expression(modality="protein")
    assert proteins.shape == (cite.n_obs, cite.mod["prot"].n_vars)


def test_totalvi_normalized_expression_with_transform_batch(totalvi_like, cite):
    model, _ = totalvi_like
    batches = sorted(cite.mod["rna"].obs["batch"].astype(str).unique())
    expression = model.get_normalized_expression(
        modality="rna", n_samples=5, return_mean=True, transform_batch=batches[:2]
    )
    assert expression.shape == (cite.n_obs, cite.mod["rna"].n_vars)
    other = model.get_normalized_expression(modality="rna", n_samples=5, return_mean=True, transform_batch=batches[0])
    assert not np.allclose(expression.to_numpy(), other.to_numpy())


def test_totalvi_reference_mapping_in_archesmixin_form(totalvi_like, cite, tmp_path):
    model, _ = totalvi_like
    query = cite[cite.obs_names[:100]].copy()
    with md.set_options(pull_on_update=False):
        query.mod["rna"].obs["batch"] = "query_run"
    query.obs["batch"] = "query_run"
    model.save(tmp_path / "reference", save_anndata=False)
    query_model = JointVAE.load_query_data(adata=query, reference_model=tmp_path / "reference")
    query_model.train(max_epochs=1)
    assert query_model.get_latent_representation(adata=query).shape == (100, 20)
    again = JointVAE.load_query_data(query, model, accelerator="cpu", device="auto", freeze_dropout=True)
    assert again.module is not model.module


# --------------------------------------------------------------------------------------------- the mosaic (DESIGN)
def test_mosaic_session_with_three_layers(multiome, cite):
    mdata = pengster.data.mosaic({"multiome": multiome, "cite": cite})
    pengster.model.JointVAE.setup_mudata(
        mdata,
        rna_layer="counts",
        atac_layer="counts",
        protein_layer="counts",
        batch_key="batch",
        modalities={"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"},
    )
    model = pengster.model.JointVAE(mdata, n_latent=10)
    model.train(max_epochs=2)
    assert model.modalities == {"rna": "rna", "atac": "atac", "protein": "prot"}
    assert model.get_latent_representation().shape == (mdata.n_obs, 10)
    # the datasets of the mosaic are registered from its 'dataset' column (dataset_key's default)
    assert model.summary_stats["n_panel"] == 2
