"""Inputs that are unusual but valid: dense, CSC and backed matrices, empty cells and features, protein panels that
differ between datasets. Each trains to finite outputs, warns where the user should know, and leaves the data alone.
"""

from __future__ import annotations

import hashlib

import mudata as md
import numpy as np
import pytest
import scvi
import torch
from scipy import sparse
from test_bad_inputs import assert_names, assert_same, snapshot

from pengster.data import synthetic_mosaic
from pengster.data._checks import is_backed
from pengster.model import JointVAE

torch.set_num_threads(1)

ALL = {"rna": "rna", "atac": "atac", "protein": "prot"}
SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def _mosaic() -> md.MuData:
    return synthetic_mosaic(n_cells={"multiome": 50, "cite": 50}, n_genes=30, n_peaks=40, n_proteins=8, seed=3)


def _fit(mdata: md.MuData, **setup_kwargs) -> JointVAE:
    scvi.settings.seed = 0
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, batch_key="batch", **setup_kwargs)
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, batch_size=50, enable_progress_bar=False)
    return model


def _assert_finite_outputs(model: JointVAE, mdata: md.MuData) -> None:
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, 4) and np.isfinite(latent).all()
    for target in ALL:
        predicted = model.predict(target=target).to_numpy()
        has_source = np.isfinite(predicted).all(axis=1)
        assert has_source.sum() == mdata.n_obs  # every cell has rna, so every target has a source


@pytest.fixture(scope="module")
def reference_latent():
    mdata = _mosaic()
    return _fit(mdata).get_latent_representation()


def _dense(mdata):
    for adata in mdata.mod.values():
        adata.X = adata.X.toarray()
    return mdata


def _csc(mdata):
    for adata in mdata.mod.values():
        adata.X = sparse.csc_matrix(adata.X)
    return mdata


def _int64(mdata):
    for adata in mdata.mod.values():
        adata.X = adata.X.astype(np.int64)
    return mdata


@pytest.mark.parametrize("layout", ["dense", "csc", "int64"])
def test_matrix_layouts_train_to_the_same_model(layout, reference_latent):
    """Dense, CSC and integer inputs give bit-identical latents to in-memory float CSR."""
    mdata = {"dense": _dense, "csc": _csc, "int64": _int64}[layout](_mosaic())
    snap = snapshot(mdata)
    model = _fit(mdata)
    _assert_finite_outputs(model, mdata)
    np.testing.assert_array_equal(model.get_latent_representation(), reference_latent)
    assert_same(mdata, snap)


def _paired() -> md.MuData:
    return synthetic_mosaic(n_cells={"multiome": 100}, n_genes=30, n_peaks=40, seed=3)


def _fit_paired(mdata: md.MuData) -> JointVAE:
    scvi.settings.seed = 0
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, batch_size=50, enable_progress_bar=False)
    return model


def test_backed_data_whose_modalities_hold_every_cell_trains_from_disk(tmp_path):
    """A backed MuData whose modalities all hold every cell stays on disk and trains to the in-memory model."""
    in_memory = _fit_paired(_paired()).get_latent_representation()
    _paired().write(tmp_path / "paired.h5mu")
    before = hashlib.sha256((tmp_path / "paired.h5mu").read_bytes()).hexdigest()
    backed = md.read_h5mu(tmp_path / "paired.h5mu", backed=True)
    assert backed.mod["rna"].isbacked
    model = _fit_paired(backed)
    # the registered matrices are the file's datasets, not in-memory copies
    assert all(is_backed(model.adata.mod[key].X) for key in ("rna", "atac"))
    np.testing.assert_array_equal(model.get_latent_representation(), in_memory)
    assert hashlib.sha256((tmp_path / "paired.h5mu").read_bytes()).hexdigest() == before


def test_backed_mosaic_is_refused_with_the_fix(tmp_path):
    """A backed mosaic would be loaded into memory to align its modalities: setup_mudata says so and gives the fix."""
    _mosaic().write(tmp_path / "mosaic.h5mu")
    backed = md.read_h5mu(tmp_path / "mosaic.h5mu", backed=True)
    with pytest.raises(ValueError) as excinfo:
        JointVAE.setup_mudata(backed, modalities=SETUP_MODALITIES, batch_key="batch")
    assert_names(
        excinfo.value,
        r"mdata is backed",
        r"mosaic\.h5mu",
        r"mdata\.mod\['atac'\] holds 50 of its 100 cells",
        r"load it into memory",
        r"mudata\.read_h5mu\('.*mosaic\.h5mu'\) \(without backed\)",
    )
    with pytest.raises(ValueError, match="not set up"):
        JointVAE(backed)
    # loaded as the message says, the same file sets up
    JointVAE.setup_mudata(md.read_h5mu(tmp_path / "mosaic.h5mu"), modalities=SETUP_MODALITIES, batch_key="batch")


def test_empty_cells_and_features_warn_and_train():
    mdata = _mosaic()
    rna = mdata.mod["rna"].X.tolil()
    rna[:4, :] = 0
    rna[:, :3] = 0
    mdata.mod["rna"].X = rna.tocsr()
    prot = mdata.mod["prot"].X.toarray()
    prot[:2] = 0
    mdata.mod["prot"].X = prot
    snap = snapshot(mdata)
    with pytest.warns(UserWarning) as record:
        model = _fit(mdata)
    messages = [str(w.message) for w in record]
    assert any(
        "mdata.mod['rna'].X has 4 of 100 cells with no counts (e.g. ['multiome_cell0'" in m and "kept" in m
        for m in messages
    )
    assert any(
        "mdata.mod['rna'].X has 3 of 30 features with no counts in any cell (e.g. ['gene0'" in m for m in messages
    )
    assert any(
        "mdata.mod['prot'].X has 2 of 50 cells with no counts (e.g. ['cite_cell0', 'cite_cell1'])" in m
        for m in messages
    )
    _assert_finite_outputs(model, mdata)
    assert np.isfinite(model.get_normalized_expression(modality="protein").to_numpy()).all()
    assert_same(mdata, snap)


def test_protein_panel_missing_in_one_dataset_is_masked():
    """Two CITE-seq datasets; the second lacks three antibodies (zero counts): they are masked for it, as totalVI."""
    mdata = synthetic_mosaic(n_cells={"cite_a": 50, "cite_b": 50}, n_genes=30, n_proteins=8, seed=4)
    prot = mdata.mod["prot"]
    in_b = prot.obs_names.str.startswith("cite_b")
    counts = prot.X.toarray()
    counts[np.ix_(in_b, [0, 1, 2])] = 0
    prot.X = sparse.csr_matrix(counts)
    snap = snapshot(mdata)
    scvi.settings.seed = 0
    with pytest.warns(
        UserWarning,
        match=r"mdata\.mod\['prot'\]: 3 proteins have no count in any cell of dataset "
        r"'cite_b' \(e\.g\. \['protein0', 'protein1', 'protein2'\]\).*as totalVI does",
    ):
        JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    mask = model.module.feature_mask_protein.numpy()
    np.testing.assert_array_equal(mask, [[1] * 8, [0, 0, 0] + [1] * 5])  # panels in order cite_a, cite_b
    model.train(max_epochs=2, batch_size=50, enable_progress_bar=False)
    latent = model.get_latent_representation(modality="protein")
    assert np.isfinite(latent).all()
    # the masked proteins are left out of cite_b's encoder input and likelihood: their values change nothing there
    cells_b = mdata.obs_names.str.startswith("cite_b")
    for cells, should_change in ((in_b, False), (~in_b, True)):
        changed = mdata.copy()
        changed_counts = changed.mod["prot"].X.toarray()
        changed_counts[np.ix_(cells, [0, 1, 2])] = 50
        changed.mod["prot"].X = sparse.csr_matrix(changed_counts)
        latent_changed = model.get_latent_representation(changed, modality="protein")
        rows = cells_b if not should_change else ~cells_b
        assert np.allclose(latent_changed[rows], latent[rows]) != should_change
    assert_same(mdata, snap)


def test_a_modality_with_one_cell_per_minibatch_trains():
    """Three multiome cells spread over the minibatches of a CITE-seq run: batch norm sees one ATAC cell at a time."""
    mdata = synthetic_mosaic(n_cells={"multiome": 3, "cite": 80}, n_genes=20, n_peaks=30, n_proteins=6, seed=6)
    snap = snapshot(mdata)
    model = _fit(mdata)
    _assert_finite_outputs(model, mdata)
    assert_same(mdata, snap)


def test_train_size_one_trains_without_validation_cells(caplog):
    mdata = synthetic_mosaic(n_cells={"multiome": 40}, n_genes=30, n_peaks=40, seed=5)
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    model = JointVAE(mdata, n_hidden=8, n_latent=3)
    with caplog.at_level("WARNING"):
        model.train(max_epochs=2, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
    assert model.is_trained_ and len(model.history["elbo_train"]) == 2
    assert "no validation cells; early stopping is off" in caplog.text
