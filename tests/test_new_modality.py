"""A fourth modality, defined and registered here without editing pengster: trains, embeds, predicts, reads out.

The head is a Gaussian "morphology" modality (continuous image features, e.g. cell area and shape). Everything pengster
needs to know of it is in this file: the table entry (its MuData keys, that it holds no counts) and the head.
"""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest
import torch
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Normal

import pengster
from pengster.model import JointVAE
from pengster.module import Head, Modality, register_modality, unregister_modality


class MorphologyHead(Head):
    """Standardised image features with a Gaussian likelihood; reported and linear scale: the decoded mean."""

    name = "morphology"

    def __init__(self, n_features, n_input, n_cat_list, *, n_hidden, n_layers, **_):
        super().__init__(n_features, n_input, n_cat_list, n_hidden=n_hidden, n_layers=n_layers, **_)
        self.layers = FCLayers(n_input, n_hidden, n_cat_list=list(n_cat_list), n_layers=n_layers, n_hidden=n_hidden)
        self.mean = nn.Linear(n_hidden, n_features)
        self.log_scale = nn.Parameter(torch.zeros(n_features))

    def encoder_input(self, counts, feature_mask):
        return counts * feature_mask

    def observed(self, counts, feature_mask):
        return counts * feature_mask

    def forward(self, z, inputs):
        return Normal(
            self.mean(self.layers(z, *inputs.categoricals)).float(), self.log_scale.exp(), validate_args=False
        )

    def reported(self, px, inputs, *, variance=False, **_):
        return px.loc, px.scale.expand_as(px.loc) ** 2 if variance else None

    def normalized(self, px, inputs, *, library_size=None):
        return px.loc


@pytest.fixture(scope="module")
def morphology():
    register_modality(Modality("morphology", ("morph",), "standardised value", counts=False), MorphologyHead)
    yield
    unregister_modality("morphology")


def _mosaic(seed: int = 0) -> md.MuData:
    """Multiome + CITE-seq cells; the CITE-seq cells were also imaged: morphology follows their cell type."""
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 80, "cite": 80}, n_genes=40, n_peaks=50, n_proteins=8, seed=seed
    )
    cite = mdata.mod["prot"].obs_names
    types = mdata.obs.loc[cite, "cell_type"].astype("category").cat.codes.to_numpy()
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, size=(types.max() + 1, 6))
    values = (centres[types] + rng.normal(0, 0.3, size=(len(cite), 6))).astype(np.float32)
    image = ad.AnnData(values, obs=mdata.mod["prot"].obs[[]].copy())
    image.var_names = [f"shape{i}" for i in range(6)]
    mods = {key: mdata.mod[key] for key in mdata.mod}
    mods["morph"] = image
    out = md.MuData(mods)
    out.obs = out.obs.join(mdata.obs[["batch", "dataset", "cell_type"]])
    return out


def test_a_fourth_modality_trains_embeds_and_predicts(morphology):
    torch.set_num_threads(1)
    mdata = _mosaic()
    modalities = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot", "morphology_layer": "morph"}
    JointVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities, morphology_layer=None)
    model = JointVAE(mdata, n_latent=4, n_hidden=32)
    assert list(model.modalities) == ["rna", "atac", "protein", "morphology"]
    model.train(max_epochs=30, batch_size=64, enable_progress_bar=False)
    latent = model.get_latent_representation(modality="morph")
    imaged = mdata.obs_names.isin(mdata.mod["morph"].obs_names)
    assert np.isfinite(latent[imaged]).all() and np.isnan(latent[~imaged]).all()
    # morphology of the multiome cells, which were never imaged, from their RNA and ATAC
    predicted = model.predict(target="morphology", readout="decoder")
    assert np.isfinite(predicted.loc[~imaged].to_numpy()).all()
    # held-in check that the head learned something: predicted from RNA alone, imaged cells' morphology beats the mean
    from_rna = model.predict(target="morph", source="rna", readout="decoder").loc[imaged].to_numpy()
    measured = mdata.mod["morph"].X
    mean_error = ((measured - measured.mean(0)) ** 2).mean()
    assert ((from_rna - measured) ** 2).mean() < 0.5 * mean_error
    linear = model.get_normalized_expression(modality="morphology", return_numpy=True)
    assert linear.shape == (mdata.n_obs, 6)
    written = pengster.tl.write_results(model, mdata)
    assert "pengster_pred_morphology" in written["obsm"]
