"""Reference mapping (load_query_data, prepare_query) and label transfer, on small synthetic mosaics."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import pengster
from pengster._constants import MEASURED_VARM_KEY
from pengster.model import JointVAE
from pengster.model._query import transfer_weights
from pengster.module import HeadInput, JointVAEModule

SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def subset(mdata: md.MuData, cells: np.ndarray) -> md.MuData:
    """The cells of ``mdata`` (a mosaic) as a new mosaic keeping only the modalities those cells have."""
    names = mdata.obs_names[cells]
    mods = {k: a[a.obs_names.isin(names)].copy() for k, a in mdata.mod.items() if a.obs_names.isin(names).any()}
    out = md.MuData(mods)
    out.obs = mdata.obs.loc[out.obs_names].copy()
    return out[names].copy()


@pytest.fixture(scope="module")
def mosaic():
    return pengster.data.synthetic_mosaic(
        n_cells={"multiome": 150, "cite": 150, "cite_query": 120},
        n_genes=60,
        n_peaks=80,
        n_proteins=12,
        n_batches=3,
        seed=3,
    )


@pytest.fixture(scope="module")
def reference(mosaic):
    """Reference: multiome and CITE cells of batches b0 and b1."""
    cells = (mosaic.obs["dataset"] != "cite_query").to_numpy() & (mosaic.obs["batch"] != "b2").to_numpy()
    return subset(mosaic, cells)


@pytest.fixture(scope="module")
def query(mosaic):
    """Query: a CITE-seq run (rna + protein, no ATAC) of a batch the reference never saw."""
    cells = (mosaic.obs["dataset"] == "cite_query").to_numpy() & (mosaic.obs["batch"] == "b2").to_numpy()
    out = subset(mosaic, cells)
    del out.obs["dataset"]
    return out


@pytest.fixture(scope="module")
def reference_model(reference):
    torch.set_num_threads(1)
    JointVAE.setup_mudata(reference, modalities=SETUP_MODALITIES, batch_key="batch")
    model = JointVAE(reference, n_latent=6, n_hidden=32)
    model.train(max_epochs=30, batch_size=64, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def query_model(query, reference_model):
    model = JointVAE.load_query_data(query, reference_model)
    model._initial_state = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=20, batch_size=64, enable_progress_bar=False)
    return model


def test_query_with_new_batch_trains_and_keeps_reference_fixed(query_model, reference_model, reference, query):
    batches = query_model.adata_manager.get_state_registry("batch").categorical_mapping
    assert list(batches) == ["b0", "b1", "b2"]
    assert query_model.is_trained and query_model.mdata.n_obs == query.n_obs
    # the reference cells keep their coordinates: every reference weight is frozen
    np.testing.assert_allclose(
        query_model.get_latent_representation(reference), reference_model.get_latent_representation(), atol=1e-5
    )
    before, after = query_model._initial_state, query_model.module.state_dict()
    weight = "encoders.rna.encoder.fc_layers.Layer 0.0.weight"  # columns: 60 genes, then 3 panels
    n_genes = 60
    torch.testing.assert_close(after[weight][:, : n_genes + 2], before[weight][:, : n_genes + 2])
    assert not torch.allclose(after[weight][:, n_genes + 2], before[weight][:, n_genes + 2])  # new panel trained
    decoder = "heads.rna.decoder.px_decoder.fc_layers.Layer 0.0.weight"  # columns: 6 latent, then 3 batches
    torch.testing.assert_close(after[decoder][:, :8], before[decoder][:, :8])
    assert not torch.allclose(after[decoder][:, 8], before[decoder][:, 8])
    background = "heads.protein.log_background"
    torch.testing.assert_close(after[background][:, :2], before[background][:, :2])
    assert not torch.allclose(after[background][:, 2], before[background][:, 2])
    for key in ("heads.rna.log_theta", "projection_heads.rna.layers.0.weight", "heads.atac.cell_factor_mean"):
        torch.testing.assert_close(after[key], before[key])


def test_query_maps_onto_its_cell_types(query_model, reference_model, reference, query):
    """Label transfer through the mapped latent recovers the query's cell types (a new batch, no ATAC)."""
    result = pengster.tl.transfer_labels(query_model, query_model.mdata, labels_key="cell_type", reference=reference)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    accuracy = (result["cell_type_pred"].astype(str).to_numpy() == truth).mean()
    assert accuracy > 0.8, accuracy
    # the query cells get protein predicted from their RNA, and no ATAC cell was invented
    protein = query_model.predict(target="protein", source="rna")
    assert protein.shape == (query.n_obs, 12) and np.isfinite(protein.to_numpy()).all()
    keys = pengster.tl.write_results(query_model, query_model.mdata, n_samples=2)
    assert "pengster_pred_atac" in keys["obsm"] and "atac/pengster_denoised" not in keys["layers"]


def test_query_missing_genes_are_masked(reference_model, query):
    """A query panel lacking genes (shuffled, with unknown extras) is aligned, and the missing genes are ignored."""
    rna = query.mod["rna"]
    kept = rna.var_names[20:][::-1]
    extra = rna[:, :3].copy()
    extra.var_names = ["unknown_a", "unknown_b", "unknown_c"]
    panel = ad.concat([rna[:, kept], extra], axis=1, merge="first")
    partial = md.MuData({"rna": panel, "prot": query.mod["prot"].copy()})
    partial.obs = query.obs.copy()
    with pytest.warns(UserWarning, match="only 40 of the reference's 60 rna features"):
        prepared = pengster.data.prepare_query(partial, reference_model)
    report = prepared.uns["pengster_prepare_query"]["rna"]
    assert sorted(report["missing"]) == sorted(rna.var_names[:20]) and len(report["dropped"]) == 3
    assert prepared.mod["rna"].var_names.equals(reference_model.adata.mod["rna"].var_names)
    measured = prepared.mod["rna"].varm[MEASURED_VARM_KEY]["query"].to_numpy()
    assert measured.sum() == 40 and not measured[prepared.mod["rna"].var_names.isin(rna.var_names[:20])].any()
    np.testing.assert_array_equal(
        prepared.mod["rna"][:, kept].layers["counts"].toarray(), rna[:, kept].layers["counts"].toarray()
    )

    model = JointVAE.load_query_data(prepared, reference_model)
    assert model.mdata is prepared
    mask = model.module.feature_mask_rna[-1].numpy()
    np.testing.assert_array_equal(mask, measured.astype(np.float32))
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    latent = model.get_latent_representation(modality="rna")
    assert np.isfinite(latent).all()
    # counts in the masked genes must not move the latent
    poisoned = prepared.copy()
    counts = poisoned.mod["rna"].layers["counts"].toarray()
    counts[:, ~measured] = 1000
    poisoned.mod["rna"].layers["counts"] = counts
    np.testing.assert_allclose(model.get_latent_representation(poisoned, modality="rna"), latent, atol=1e-5)


def test_unseen_label_categories_are_reported_unknown(query_model, reference, query):
    """Query cells of a type without labelled reference cells are reported as unknown, not forced or crashing."""
    hidden = reference.copy()
    labels = hidden.obs["cell_type"].astype(object)
    labels[labels == "type2"] = np.nan
    hidden.obs["cell_type"] = labels
    mapped = query_model.mdata
    own = mapped.obs.drop(columns=["cell_type_pred", "cell_type_pred_confidence"], errors="ignore")
    result = pengster.tl.transfer_labels(query_model, mapped, labels_key="cell_type", reference=hidden)
    predicted = result["cell_type_pred"].astype(str).to_numpy()
    assert "type2" not in result["cell_type_pred"].cat.categories
    truth = query.obs["cell_type"].astype(str).to_numpy()
    unseen = truth == "type2"
    assert unseen.sum() > 5
    assert (predicted[unseen] == "unknown").mean() > 0.8
    assert (predicted[~unseen] == truth[~unseen]).mean() > 0.8
    # the query's own labels (with their category the reference lacks) and the reference are untouched
    pd.testing.assert_frame_equal(mapped.obs[own.columns], own)
    assert hidden.obs["cell_type"].isna().sum() == (reference.obs["cell_type"] == "type2").sum()


def test_transfer_labels_matches_sklearn_knn(query_model, reference):
    """Without the unknown rules the vote is scikit-learn's k-nearest-neighbour classifier."""
    result = pengster.tl.transfer_labels(
        query_model,
        query_model.mdata,
        labels_key="cell_type",
        reference=reference,
        n_neighbors=7,
        min_confidence=0.0,
        distance_quantile=None,
    )
    classifier = KNeighborsClassifier(n_neighbors=7).fit(
        query_model.get_latent_representation(reference), reference.obs["cell_type"].astype(str)
    )
    latent = query_model.get_latent_representation()
    probabilities = classifier.predict_proba(latent)
    np.testing.assert_allclose(result["cell_type_pred_confidence"], probabilities.max(1))
    np.testing.assert_array_equal(result["cell_type_pred"].astype(str).to_numpy(), classifier.predict(latent))


def test_covariate_columns_are_placed_per_covariate():
    """A wider module with new batches, panels and covariate categories reproduces the reference's outputs."""
    torch.manual_seed(0)
    masks = {"rna": torch.ones(2, 30), "protein": torch.ones(2, 5)}
    kwargs = {"n_latent": 4, "n_hidden": 16, "encode_covariates": True, "dropout_rate": 0.0}
    reference = JointVAEModule({"rna": 30, "protein": 5}, masks, n_batch=2, n_cats_per_cov=[3], **kwargs)
    wider = {m: torch.cat([mask, torch.ones(1, mask.shape[1])]) for m, mask in masks.items()}
    query = JointVAEModule({"rna": 30, "protein": 5}, wider, n_batch=4, n_cats_per_cov=[5], **kwargs)
    transfer_weights(reference, query)
    reference.eval()
    query.eval()
    n_cells = 40
    inputs = {
        "x": {
            "rna": torch.poisson(torch.full((n_cells, 30), 3.0)),
            "protein": torch.poisson(torch.full((n_cells, 5), 9.0)),
        },
        "has": {"rna": torch.ones(n_cells), "protein": torch.ones(n_cells)},
        "batch_index": torch.randint(2, (n_cells, 1)),
        "cat_covs": torch.randint(3, (n_cells, 1)),
        "panel": torch.randint(2, (n_cells, 1)),
    }
    with torch.no_grad():
        for modality, (mean, variance) in reference.experts(**inputs).items():
            torch.testing.assert_close(query.experts(**inputs)[modality][0], mean)
            torch.testing.assert_close(query.experts(**inputs)[modality][1], variance)
        z = torch.randn(n_cells, 4)
        categoricals = [inputs["batch_index"], inputs["cat_covs"]]
        for modality in ("rna", "protein"):
            inputs = HeadInput(categoricals, torch.ones(n_cells, 30 if modality == "rna" else 5))
            torch.testing.assert_close(
                query.heads[modality].reported(query.decode(modality, z, inputs), inputs, variance=True),
                reference.heads[modality].reported(reference.decode(modality, z, inputs), inputs, variance=True),
            )


def test_query_from_saved_reference_and_bad_input(reference_model, query, tmp_path):
    reference_model.save(tmp_path / "reference")
    from_folder = JointVAE.load_query_data(query, str(tmp_path / "reference"))
    from_model = JointVAE.load_query_data(query, reference_model)
    for key, value in from_model.module.state_dict().items():
        torch.testing.assert_close(from_folder.module.state_dict()[key], value)

    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match=r"query.obs has no column 'batch'.*query.obs\['batch'\] = "):
        JointVAE.load_query_data(no_batch, reference_model)
    with pytest.raises(FileNotFoundError, match=r"has no pengster\.json: it is not a folder written by JointVAE\.save"):
        JointVAE.load_query_data(query, str(tmp_path))
    with pytest.raises(ValueError, match="unknown_label='unknown' is one of the labels"):
        relabelled = reference_model.mdata.copy()
        relabelled.obs["cell_type"] = "unknown"
        pengster.tl.transfer_labels(from_model, query, labels_key="cell_type", reference=relabelled)


def test_unfrozen_query_trains_reference_weights(reference_model, reference, query):
    """unfrozen=True (as in scvi-tools) releases every weight: the reference cells then move."""
    model = JointVAE.load_query_data(query, reference_model, unfrozen=True)
    assert all(parameter.requires_grad for parameter in model.module.parameters())
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    moved = np.abs(model.get_latent_representation(reference) - reference_model.get_latent_representation())
    assert moved.max() > 1e-3
