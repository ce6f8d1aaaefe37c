"""Bad calls on a set-up or trained model: getter arguments, new data whose features or categories differ from the
training data, loading against other data, and colliding cell names in :func:`pengster.data.mosaic`. Each fails with
an error naming the object, the key and the fix, and leaves the user's data unchanged.
"""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from test_bad_inputs import assert_names, assert_same, small_mosaic, snapshot

from pengster.data import mosaic
from pengster.model import JointVAE

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- bad getter calls
@pytest.fixture(scope="module")
def rna_atac_model():
    """A JointVAE trained (one epoch) on rna + atac only."""
    mdata = small_mosaic()
    JointVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    return model, mdata


GETTER_CASES = [
    (
        "predict_untrained_modality",
        lambda model: model.predict(target="protein"),
        [r"target='protein'", r"trained on \{'rna': 'rna', 'atac': 'atac'\}", r"pass one of \['rna', 'atac'\]"],
    ),
    (
        "predict_unknown_source",
        lambda model: model.predict(target="rna", source=["atac", "protein"]),
        [r"source='protein'", r"trained on \{'rna': 'rna', 'atac': 'atac'\}", r"pass one of \['rna', 'atac'\]"],
    ),
    (
        "predict_target_from_itself",
        lambda model: model.predict(target="rna", source="rna"),
        [r"source \['rna'\]", r"target 'rna'", r"or None for all modalities but the target"],
    ),
    (
        "predict_negative_samples",
        lambda model: model.predict(target="rna", n_samples=-1, return_std=True),
        [r"n_samples=-1", r">= 0"],
    ),
    ("predict_unknown_readout", lambda model: model.predict(target="rna", readout="knn"), [r"readout='knn'", "blend"]),
    (
        "normalized_zero_samples",
        lambda model: model.get_normalized_expression(n_samples=0),
        [r"n_samples=0", r">= 1"],
    ),
    (
        "latent_unknown_modality",
        lambda model: model.get_latent_representation(modality="nope"),
        [r"modality='nope'", r"trained on \{'rna': 'rna', 'atac': 'atac'\}", r"pass one of \['rna', 'atac'\]"],
    ),
    (
        "normalized_untrained_modality",
        lambda model: model.get_normalized_expression(modality="protein"),
        [r"modality='protein'", r"trained on \{'rna': 'rna', 'atac': 'atac'\}"],
    ),
]


@pytest.mark.parametrize(
    ("call", "patterns"), [case[1:] for case in GETTER_CASES], ids=[case[0] for case in GETTER_CASES]
)
def test_getters_reject_bad_arguments(rna_atac_model, call, patterns):
    model, mdata = rna_atac_model
    snap = snapshot(mdata)
    with pytest.raises(ValueError) as excinfo:
        call(model)
    assert type(excinfo.value) is ValueError
    assert_names(excinfo.value, *patterns)
    assert_same(mdata, snap)


def test_predict_on_new_data_with_other_features_names_them(rna_atac_model):
    model, _ = rna_atac_model
    query = small_mosaic(seed=1)
    rna = query.mod["rna"]
    rna.var_names = ["novel_gene_a", "novel_gene_b", *rna.var_names[2:]]
    snap = snapshot(query)
    with pytest.raises(ValueError) as excinfo:
        model.predict(query, target="atac")
    assert_names(
        excinfo.value,
        r"mdata\.mod\['rna'\] has features that differ from the model's",
        r"2 missing",
        r"novel_gene_a",
        r"\[:, model_features\]",
    )
    missing = model.adata.mod["rna"].var_names[:2].tolist()
    assert all(name in str(excinfo.value) for name in missing)
    assert_same(query, snap)
    # the failed call registered nothing: the query is not remembered as set up
    assert JointVAE._prepared(query) is None


# --------------------------------------------------------------------------------------------- new data for a model
def _with_batches(mdata: md.MuData, batches: list[str]) -> md.MuData:
    mdata.obs["batch"] = pd.Categorical(np.resize(np.asarray(batches), mdata.n_obs))
    return mdata


QUERY_CASES = [
    (
        "unseen_batch_category",
        lambda q: _with_batches(q, ["b0", "site9"]),
        [r"mdata\.obs\['batch'\] \(batch_key\)", r"never saw in training: \['site9'\]", r"knows \['b0', 'b1'\]"],
    ),
    (
        "unseen_dataset",
        lambda q: q.obs.__setitem__("dataset", "new_lab") or q,
        [r"mdata\.obs\['dataset'\] \(dataset_key\)", r"\['new_lab'\]", r"knows \['cite', 'multiome'\]"],
    ),
    (
        "dataset_column_missing",
        lambda q: q.obs.drop(columns="dataset", inplace=True) or q,
        [r"trained with dataset_key categories \['cite', 'multiome'\]", r"no such column", r"mdata\.obs\['dataset'\]"],
    ),
]


@pytest.mark.parametrize(("make", "patterns"), [c[1:] for c in QUERY_CASES], ids=[c[0] for c in QUERY_CASES])
@pytest.mark.parametrize("call", ["predict", "latent"])
def test_new_data_with_categories_unseen_in_training(rna_atac_model, make, patterns, call):
    model, _ = rna_atac_model
    query = make(small_mosaic(seed=2))
    snap = snapshot(query)
    with pytest.raises(ValueError) as excinfo:
        if call == "predict":
            model.predict(query, target="atac")
        else:
            model.get_latent_representation(query)
    assert type(excinfo.value) is ValueError
    assert_names(excinfo.value, *patterns)
    assert_same(query, snap)


def test_load_against_data_with_other_features_names_them(rna_atac_model, tmp_path):
    model, _ = rna_atac_model
    model.save(tmp_path / "model")
    other = small_mosaic(seed=1)
    other.mod["atac"].var_names = ["chr9_1_2", *other.mod["atac"].var_names[1:]]
    snap = snapshot(other)
    with pytest.raises(ValueError) as excinfo:
        JointVAE.load(str(tmp_path / "model"), adata=other)
    assert_names(
        excinfo.value,
        r"adata\.mod\['atac'\] has features that differ from the model's: 1 missing \(e\.g\. \['peak0'\]\)",
        r"1 unknown \(e\.g\. \['chr9_1_2'\]\)",
        r"trained on 40 features of 'atac'",
    )
    assert_same(other, snap)
    assert JointVAE._prepared(other) is None


# --------------------------------------------------------------------------------------------- mosaic() inputs
def _paired(prefix: str, names: list[str]) -> md.MuData:
    rna = ad.AnnData(
        X=sparse.csr_matrix(np.ones((len(names), 3), dtype=np.float32)),
        obs=pd.DataFrame(index=names),
        var=pd.DataFrame(index=[f"{prefix}_g{i}" for i in range(3)]),
    )
    return md.MuData({"rna": rna})


def test_mosaic_renames_colliding_obs_names_and_leaves_inputs_alone(caplog):
    first, second = _paired("a", ["AAAC-1", "AAAG-1"]), _paired("b", ["AAAC-1", "TTTC-1"])
    snaps = [snapshot(first), snapshot(second)]
    with caplog.at_level("INFO", logger="pengster.data._mosaic"):
        combined = mosaic({"lab1": first, "lab2": second})
    assert "obs_names collide" in caplog.text
    assert list(combined.obs_names) == ["AAAC-1-lab1", "AAAG-1-lab1", "AAAC-1-lab2", "TTTC-1-lab2"]
    assert_same(first, snaps[0])
    assert_same(second, snaps[1])


def test_mosaic_names_that_still_collide_after_renaming():
    first, second = _paired("a", ["c-", "d"]), _paired("b", ["c", "d"])
    with pytest.raises(ValueError) as excinfo:
        mosaic({"1": first, "-1": second})  # 'c-' + '-1' == 'c' + '--1'
    assert_names(excinfo.value, r"obs_names still collide after appending '-<dataset name>'", r"rename the cells")
