"""The catalogue of bad inputs: each fails early with an error naming the object, the key and the fix (or, where
the input is merely unusual, warns and trains fine), and the user's data is left unchanged.

Cases: SETUP_CASES (errors of setup_mudata), GETTER_CASES (errors of the getters), and the tests below them
(AnnData input, no setup, query features, unseen categories, load checks, mosaic names, dense/sparse/backed input,
empty cells and features, protein panels).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from pengster.data import mosaic, synthetic_mosaic
from pengster.model import JointVAE

torch.set_num_threads(1)

ALL = {"rna": "rna", "atac": "atac", "protein": "prot"}


def _mosaic(seed: int = 0) -> md.MuData:
    return synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=seed)


def _copy(value):
    if isinstance(value, pd.DataFrame | pd.Index):
        return value.copy()
    if sparse.issparse(value):
        return value.copy()
    return np.array(value, copy=True)


def snapshot(data: md.MuData | ad.AnnData) -> dict:
    """Copies of X, every layer and obs of each modality, and mdata.obs and the obsm/uns keys."""
    if isinstance(data, ad.AnnData):
        return {"X": _copy(data.X), "obs": data.obs.copy(), "layers": {k: _copy(v) for k, v in data.layers.items()}}
    return {
        "obs": data.obs.copy(),
        "obsm": set(data.obsm),
        "uns": set(data.uns),
        "mod": {key: snapshot(adata) for key, adata in data.mod.items()},
    }


def _assert_matrix_equal(actual, expected, where: str) -> None:
    assert sparse.issparse(actual) == sparse.issparse(expected), where
    assert actual.dtype == expected.dtype, where
    if sparse.issparse(actual):
        actual, expected = actual.toarray(), expected.toarray()
    np.testing.assert_array_equal(actual, expected, err_msg=where)


def assert_same(data: md.MuData | ad.AnnData, snap: dict) -> None:
    """Raise unless ``data`` still holds what :func:`snapshot` copied."""
    if isinstance(data, ad.AnnData):
        _assert_matrix_equal(data.X, snap["X"], "X")
        pd.testing.assert_frame_equal(data.obs, snap["obs"])
        assert set(data.layers) == set(snap["layers"])
        for key, layer in snap["layers"].items():
            _assert_matrix_equal(data.layers[key], layer, f"layers[{key!r}]")
        return
    pd.testing.assert_frame_equal(data.obs, snap["obs"])
    assert set(data.obsm) == snap["obsm"]
    assert set(data.uns) == snap["uns"]
    assert set(data.mod) == set(snap["mod"])
    for key, mod_snap in snap["mod"].items():
        assert_same(data.mod[key], mod_snap)


def _assert_names(error: BaseException, *patterns: str) -> None:
    message = str(error)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in the message {message!r}"


def _assert_not_set_up(mdata) -> None:
    """The failed setup registered nothing: the model cannot be built, so nothing could have been trained."""
    with pytest.raises(ValueError, match=r"not set up.*setup_mudata"):
        JointVAE(mdata)


# --------------------------------------------------------------------------------------------- bad setup inputs
def _with_matrix(mdata: md.MuData, mod_key: str, change: Callable[[np.ndarray], np.ndarray]) -> md.MuData:
    """Replace .X of ``mdata.mod[mod_key]`` (dense float64) by ``change`` of its counts."""
    dense = np.asarray(mdata.mod[mod_key].layers["counts"].toarray(), dtype=np.float64)
    mdata.mod[mod_key].X = change(dense)
    return mdata


def _set_first(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(dense):
        dense[0, 0] = value
        return dense

    return change


def _log_normalized(dense: np.ndarray) -> np.ndarray:
    return np.log1p(dense / np.maximum(dense.sum(1, keepdims=True), 1) * 1e4)


def _duplicate_obs_names(mdata: md.MuData) -> md.MuData:
    rna = mdata.mod["rna"].copy()
    rna.obs_names = ["cell_a", "cell_a", *rna.obs_names[2:]]
    return md.MuData({"rna": rna})


def _nan_batch(mdata: md.MuData) -> md.MuData:
    batch = mdata.obs["batch"].astype(object)
    batch.iloc[3] = np.nan
    mdata.obs["batch"] = batch
    return mdata


def _zero_proteins(mdata: md.MuData) -> md.MuData:
    return md.MuData({"rna": mdata.mod["rna"], "atac": mdata.mod["atac"], "prot": mdata.mod["prot"][:, []].copy()})


def _tfidf(dense: np.ndarray) -> np.ndarray:
    idf = np.log1p(dense.shape[0] / (1 + (dense > 0).sum(0, keepdims=True)))
    return (dense > 0) / np.maximum((dense > 0).sum(1, keepdims=True), 1) * idf


def _clr(dense: np.ndarray) -> np.ndarray:
    return np.log1p(dense / np.exp(np.log1p(dense).mean(1, keepdims=True)))


def _prot_out_of_sync(mdata: md.MuData) -> md.MuData:
    prot = mdata.mod["prot"].copy()
    prot.obs_names = [f"other_{name}" for name in prot.obs_names]
    mdata.mod["prot"] = prot  # no mdata.update(): .obs no longer matches the modalities
    return mdata


def _multiome_subset_in_place(mdata: md.MuData) -> md.MuData:
    for key in ("rna", "atac"):
        adata = mdata.mod[key]
        mdata.mod[key] = adata[~adata.obs_names.isin([f"multiome_cell{i}" for i in range(10)])].copy()
    return mdata


def _renamed_mods(mdata: md.MuData) -> md.MuData:
    return md.MuData({"gene_expression": mdata.mod["rna"], "chromatin": mdata.mod["atac"]})


# id, make the bad MuData, setup_mudata kwargs, exception type, patterns the message must hold
SETUP_CASES = [
    (
        "mod_key_not_in_mdata",
        None,
        {"modalities": {"rna": "rna", "protein": "adt"}},
        KeyError,
        [r"mdata\.mod has no 'adt'", r"'protein'", r"\['rna', 'atac', 'prot'\]", r"pass modalities="],
    ),
    (
        "no_usual_mod_keys",
        _renamed_mods,
        {},
        KeyError,
        [r"mdata\.mod", r"'gene_expression', 'chromatin'", r"pass modalities="],
    ),
    (
        "unknown_modality_name",
        None,
        {"modalities": {"rna": "rna", "adt": "prot"}},
        ValueError,
        [r"modalities", r"unknown modality 'adt'", r"'protein'", r"modalities=\{'protein': 'prot'\}"],
    ),
    (
        "two_modalities_one_key",
        None,
        {"modalities": {"rna": "rna", "protein": "rna"}},
        ValueError,
        [r"modalities", r"same mdata\.mod key", r"'protein': 'rna'", r"give each modality its own key"],
    ),
    (
        "missing_layer",
        None,
        {"modalities": ALL, "layers": {"protein": "raw"}},
        KeyError,
        [r"mdata\.mod\['prot'\]\.layers has no 'raw'", r"\['counts'\]", r"layers=\{'protein'"],
    ),
    (
        "layers_names_unregistered_modality",
        None,
        {"modalities": {"rna": "rna"}, "layers": {"protein": "counts"}},
        ValueError,
        [r"layers", r"'protein'", r"modalities=", r"same modality names"],
    ),
    (
        "negative_counts",
        lambda m: _with_matrix(m, "prot", _set_first(-3.0)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"negative", r"layers=\{'protein': 'counts'\}"],
    ),
    (
        "negative_integer_counts",
        lambda m: _with_matrix(m, "prot", lambda x: _set_first(-3.0)(x).astype(np.int64)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"negative", r"layers=\{'protein': 'counts'\}"],
    ),
    (
        "log_normalized",
        lambda m: _with_matrix(m, "rna", _log_normalized),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"non-integer", r"looks log-normalized; pass the raw counts layer", r"'counts'"],
    ),
    (
        "nan",
        lambda m: _with_matrix(m, "atac", _set_first(np.nan)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['atac'\]\.X", r"NaN", r"layers=\{'atac': 'counts'\}"],
    ),
    (
        "inf",
        lambda m: _with_matrix(m, "atac", _set_first(np.inf)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['atac'\]\.X", r"infinite", r"layers=\{'atac': 'counts'\}"],
    ),
    (
        "string_dtype",
        lambda m: _with_matrix(m, "prot", lambda x: x.astype(str)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"dtype <U", r"not numbers", r"layers=\{'protein': 'counts'\}"],
    ),
    (
        "duplicate_obs_names",
        _duplicate_obs_names,
        {"modalities": {"rna": "rna"}},
        ValueError,
        [r"mdata\.obs_names", r"duplicates", r"'cell_a'", r"obs_names_make_unique"],
    ),
    (
        "batch_key_missing",
        None,
        {"modalities": ALL, "batch_key": "sample"},
        KeyError,
        [r"mdata\.obs has no column 'sample'", r"batch_key='sample'", r"'batch'", r"pass batch_key="],
    ),
    (
        "nan_in_batch",
        _nan_batch,
        {"modalities": ALL, "batch_key": "batch"},
        ValueError,
        [r"mdata\.obs\['batch'\]", r"1 missing value", r"fill them", r"batch_key='batch'"],
    ),
    (
        "covariate_missing",
        None,
        {"modalities": ALL, "categorical_covariate_keys": ["donor"]},
        KeyError,
        [r"mdata\.obs has no column 'donor'", r"categorical_covariate_keys", r"pass categorical_covariate_keys="],
    ),
    (
        "dataset_key_missing",
        None,
        {"modalities": ALL, "dataset_key": "study"},
        KeyError,
        [r"mdata\.obs has no column 'study'", r"dataset_key='study'", r"pass dataset_key="],
    ),
    (
        "cell_without_registered_modality",
        None,
        {"modalities": {"atac": "atac"}},
        ValueError,
        [r"60 cells of mdata", r"none of the modalities \['atac'\]", r"cite_cell0", r"drop them", r"register"],
    ),
    (
        "atac_tfidf",
        lambda m: _with_matrix(m, "atac", _tfidf),
        {"modalities": ALL},
        ValueError,
        [
            r"mdata\.mod\['atac'\]\.X",
            r"non-integer",
            r"looks TF-IDF",
            r"raw peak counts",
            r"layers=\{'atac': 'counts'\}",
        ],
    ),
    (
        "protein_clr",
        lambda m: _with_matrix(m, "prot", _clr),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"non-integer", r"looks CLR-normalized", r"layers=\{'protein': 'counts'\}"],
    ),
    (
        "object_dtype",
        lambda m: _with_matrix(m, "rna", lambda x: x.astype(object)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"dtype object", r"not numbers", r"layers are \['counts'\]"],
    ),
    (
        "int64_overflow_sized",
        lambda m: _with_matrix(m, "rna", lambda x: _set_first(2.0**40)(x).astype(np.int64)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"counts up to 1\.1e\+12", r"above 2\*\*31 - 1", r"overflowed", r"'counts'"],
    ),
    (
        "uint64_wrapped_negative",
        lambda m: _with_matrix(m, "prot", lambda x: _set_first(-1.0)(x).astype(np.int64).astype(np.uint64)),
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"1\.84e\+19", r"overflowed or was cast", r"layers=\{'protein'"],
    ),
    (
        "modality_cells_not_in_obs",
        _prot_out_of_sync,
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\] has 60 cells that are not in mdata\.obs_names", r"out of sync", r"mdata\.update\(\)"],
    ),
    (
        "obs_cells_dropped_from_modalities",
        _multiome_subset_in_place,
        {"modalities": ALL},
        ValueError,
        [r"10 cells of mdata have none of the modalities", r"multiome_cell0", r"call mdata\.update\(\)"],
    ),
    (
        "modality_with_zero_features",
        _zero_proteins,
        {"modalities": ALL},
        ValueError,
        [r"mdata\.mod\['prot'\]", r"zero features", r"drop modality 'protein'"],
    ),
]


# _setup.prepare drops layers entries of unregistered modalities before check_layers sees them, so a typo such as
# layers={'protein': ...} with no 'protein' in modalities is silently ignored
_KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "patterns"),
    [
        pytest.param(
            *case[1:],
            id=case[0],
            marks=[pytest.mark.xfail(reason=_KNOWN_BUGS[case[0]], strict=True)] if case[0] in _KNOWN_BUGS else [],
        )
        for case in SETUP_CASES
    ],
)
def test_setup_rejects_bad_input_before_registering(make, kwargs, error, patterns):
    mdata = _mosaic()
    if make is not None:
        mdata = make(mdata)
    snap = snapshot(mdata)
    with pytest.raises(error) as excinfo:
        JointVAE.setup_mudata(mdata, **kwargs)
    assert type(excinfo.value) is error
    _assert_names(excinfo.value, *patterns)
    assert_same(mdata, snap)
    _assert_not_set_up(mdata)


def test_anndata_is_rejected_with_the_wrapping_fix():
    adata = _mosaic().mod["rna"]
    snap = snapshot(adata)
    with pytest.raises(TypeError) as excinfo:
        JointVAE.setup_mudata(adata, modalities={"rna": "rna"})
    _assert_names(excinfo.value, r"needs a MuData, got an AnnData", r"mudata\.MuData\(\{'rna': adata\}\)")
    with pytest.raises(TypeError, match=r"registers MuData.*mudata\.MuData\(\{'rna': adata\}\).*setup_mudata"):
        JointVAE.setup_anndata(adata)
    assert_same(adata, snap)
    assert not any(column.startswith("_scvi") for column in adata.obs.columns)
    assert not any(key.startswith("_scvi") for key in adata.uns)


def test_model_without_setup_says_to_call_setup_mudata():
    mdata = _mosaic()
    snap = snapshot(mdata)
    with pytest.raises(ValueError, match=r"mdata is not set up; call pengster\.model\.JointVAE\.setup_mudata\(mdata"):
        JointVAE(mdata)
    assert_same(mdata, snap)


# --------------------------------------------------------------------------------------------- bad getter calls
@pytest.fixture(scope="module")
def rna_atac_model():
    """A JointVAE trained (one epoch) on rna + atac only."""
    mdata = _mosaic()
    JointVAE.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac"}, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    return model, mdata


GETTER_CASES = [
    (
        "predict_untrained_modality",
        lambda model: model.predict(target="protein"),
        [r"target='protein'", r"trained on \['rna', 'atac'\]", r"pass one of those", r"modalities=\{'protein'"],
    ),
    (
        "predict_unknown_source",
        lambda model: model.predict(target="rna", source=["atac", "protein"]),
        [r"source='protein'", r"trained on \['rna', 'atac'\]", r"pass one of those"],
    ),
    (
        "predict_target_from_itself",
        lambda model: model.predict(target="rna", source="rna"),
        [r"source \['rna'\]", r"target 'rna'", r"or None for all modalities but the target"],
    ),
    ("predict_zero_samples", lambda model: model.predict(target="rna", n_samples=0), [r"n_samples=0", r">= 1"]),
    (
        "latent_unknown_modality",
        lambda model: model.get_latent_representation(modality="nope"),
        [r"modality='nope'", r"trained on \['rna', 'atac'\]", r"pass one of those"],
    ),
    (
        "normalized_untrained_modality",
        lambda model: model.get_normalized_expression(modality="protein"),
        [r"modality='protein'", r"trained on \['rna', 'atac'\]"],
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
    _assert_names(excinfo.value, *patterns)
    assert_same(mdata, snap)


def test_predict_on_new_data_with_other_features_names_them(rna_atac_model):
    model, _ = rna_atac_model
    query = _mosaic(seed=1)
    rna = query.mod["rna"]
    rna.var_names = ["novel_gene_a", "novel_gene_b", *rna.var_names[2:]]
    snap = snapshot(query)
    with pytest.raises(ValueError) as excinfo:
        model.predict(query, target="atac")
    _assert_names(
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
    assert JointVAE._store.get(query) is None


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
    query = make(_mosaic(seed=2))
    snap = snapshot(query)
    with pytest.raises(ValueError) as excinfo:
        if call == "predict":
            model.predict(query, target="atac")
        else:
            model.get_latent_representation(query)
    assert type(excinfo.value) is ValueError
    _assert_names(excinfo.value, *patterns)
    assert_same(query, snap)


def test_load_against_data_with_other_features_names_them(rna_atac_model, tmp_path):
    model, _ = rna_atac_model
    model.save(tmp_path / "model")
    other = _mosaic(seed=1)
    other.mod["atac"].var_names = ["chr9_1_2", *other.mod["atac"].var_names[1:]]
    snap = snapshot(other)
    with pytest.raises(ValueError) as excinfo:
        JointVAE.load(str(tmp_path / "model"), mdata=other)
    _assert_names(
        excinfo.value,
        r"mdata\.mod\['atac'\] has features that differ from the model's: 1 missing \(e\.g\. \['peak0'\]\)",
        r"1 unknown \(e\.g\. \['chr9_1_2'\]\)",
        r"trained on 40 features of 'atac'",
    )
    assert_same(other, snap)
    assert JointVAE._store.get(other) is None


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
    _assert_names(excinfo.value, r"obs_names still collide after appending '-<dataset name>'", r"rename the cells")
