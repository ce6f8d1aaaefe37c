"""Every public method of JointVAE that scvi-tools' base classes give it works, or says what to use instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pengster
from pengster.model import JointVAE

MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.set_num_threads(1)
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=6, seed=0
    )
    JointVAE.setup_mudata(mdata, modalities=MODALITIES, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder)
    return model, mdata, folder


def test_setup_viewers_and_the_saved_registry(saved, capsys):
    model, mdata, folder = saved
    registry = JointVAE.load_registry(folder)
    assert registry["model_name"] == "JointVAE" and registry["setup_args"]["batch_key"] == "batch"
    assert registry["setup_args"] == model.registry_["setup_args"]
    JointVAE.view_setup_args(folder)
    assert "'batch_key': 'batch'" in capsys.readouterr().out
    model.view_anndata_setup(mdata, hide_state_registries=True)
    printed = capsys.readouterr().out
    assert "x_protein" in printed and "Summary Statistics" in printed
    with pytest.raises(ValueError, match=r"prefix='m_': pengster saves no file-name prefix"):
        JointVAE.load_registry(folder, prefix="m_")


def test_load_names_the_new_keyword_of_0_1(saved):
    _, mdata, folder = saved
    with pytest.raises(TypeError, match=r"load\(\) got mdata=, pengster 0.1's name; pass adata="):
        JointVAE.load(folder, mdata=mdata)


def test_rna_at_the_cells_own_depth(saved):
    """``library_size="latent"``: the expected counts at each cell's own depth, as scVI's; they sum to that depth."""
    model, mdata, _ = saved
    expected = model.get_normalized_expression(library_size="latent", modality="rna").to_numpy()
    counts = mdata.mod["rna"].X
    depth = np.asarray(counts.sum(1)).ravel()
    rows = mdata.obs_names.get_indexer(mdata.mod["rna"].obs_names)
    # a float32 sum of 30 frequencies times the depth: a few ulps
    np.testing.assert_allclose(expected[rows].sum(1), np.maximum(depth, 1.0), rtol=1e-5)
