"""The catalogue of bad setup inputs: each fails early with an error naming the object, the key and the fix, and the
user's data is left unchanged.

Cases: SETUP_CASES (errors of setup_mudata) and the tests below them (AnnData input, no setup). Bad calls on a
model (getters, new data, loading, mosaic names) are in test_bad_calls.py; unusual but valid inputs in
test_unusual_inputs.py. Both use the helpers here (``small_mosaic``, ``snapshot``, ``assert_same``, ``assert_names``).
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

from pengster.data import synthetic_mosaic
from pengster.model import JointVAE

torch.set_num_threads(1)

SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def small_mosaic(seed: int = 0) -> md.MuData:
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


def assert_names(error: BaseException, *patterns: str) -> None:
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


def _fractional_measured(mdata: md.MuData) -> md.MuData:
    measured = mdata.mod["prot"].varm["measured"].astype(float)
    measured.iloc[2, 0] = 0.5
    mdata.mod["prot"].varm["measured"] = measured
    return mdata


def _with_obs(mdata: md.MuData, key: str, values: np.ndarray) -> md.MuData:
    mdata.obs[key] = values
    return mdata


def _renamed_mods(mdata: md.MuData) -> md.MuData:
    return md.MuData({"gene_expression": mdata.mod["rna"], "chromatin": mdata.mod["atac"]})


# id, make the bad MuData, setup_mudata kwargs, exception type, patterns the message must hold
SETUP_CASES = [
    (
        "mod_key_not_in_mdata",
        None,
        {"modalities": {"rna_layer": "rna", "protein_layer": "adt"}},
        KeyError,
        [r"mdata\.mod has no 'adt'", r"'protein'", r"\['rna', 'atac', 'prot'\]", r"pass modalities=\{'protein_layer'"],
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
        {"modalities": {"rna_layer": "rna", "adt_layer": "prot"}},
        ValueError,
        [r"modalities has the unknown key 'adt_layer'", r"'protein_layer'", r"'batch_key'", r"'rna', 'atac', 'prot'"],
    ),
    (
        "removed_modalities_form",
        None,
        {"modalities": {"rna": "rna", "protein": "prot"}, "batch_key": "batch"},
        ValueError,
        [r"scvi-tools' arguments", r"form is gone", r"modalities=\{'rna_layer': 'rna', 'protein_layer': 'prot'\}"],
    ),
    (
        "removed_layers_argument",
        None,
        {"modalities": {"rna": "rna", "protein": "prot"}, "layers": {"rna": "counts", "protein": "counts"}},
        TypeError,
        [r"form is gone", r"rna_layer='counts', protein_layer='counts'", r"'protein_layer': 'prot'"],
    ),
    (
        "modalities_not_a_dict",
        None,
        {"modalities": ["rna", "prot"]},
        TypeError,
        [r"modalities=\['rna', 'prot'\]", r"dict from setup_mudata's argument names", r"'rna_layer': 'rna'"],
    ),
    (
        "modalities_without_a_layer_key",
        None,
        {"modalities": {"batch_key": "rna"}},
        ValueError,
        [r"names no modality", r"'rna_layer'", r"\['rna', 'atac', 'prot'\]"],
    ),
    (
        "obs_argument_mapped_to_unknown_mod",
        None,
        {"modalities": {**SETUP_MODALITIES, "batch_key": "gex"}, "batch_key": "batch"},
        KeyError,
        [r"mdata\.mod has no 'gex'", r"'batch_key': 'gex'", r"leave it out of modalities"],
    ),
    (
        "batch_key_from_a_modality_missing_cells",
        None,
        {"modalities": {**SETUP_MODALITIES, "batch_key": "atac"}, "batch_key": "batch"},
        ValueError,
        [r"mdata\.mod\['atac'\]\.obs\['batch'\]", r"60 of 120 cells", r"put the column in mdata\.obs"],
    ),
    (
        "batch_key_not_in_the_modality",
        None,
        {"modalities": {**SETUP_MODALITIES, "batch_key": "rna"}, "batch_key": "dataset"},
        KeyError,
        [r"mdata\.mod\['rna'\]\.obs has no column 'dataset'", r"leave 'batch_key' out of modalities"],
    ),
    (
        "two_modalities_one_key",
        None,
        {"modalities": {"rna_layer": "rna", "protein_layer": "rna"}},
        ValueError,
        [r"modalities", r"same mdata\.mod key", r"'protein_layer': 'rna'", r"give each modality its own key"],
    ),
    (
        "missing_layer",
        None,
        {"modalities": SETUP_MODALITIES, "protein_layer": "raw"},
        KeyError,
        [r"mdata\.mod\['prot'\]\.layers has no 'raw'", r"\['counts'\]", r"pass protein_layer="],
    ),
    (
        "layer_of_an_unmapped_modality",
        None,
        {"modalities": {"rna_layer": "rna"}, "protein_layer": "counts"},
        ValueError,
        [r"protein_layer='counts'", r"does not map 'protein_layer'", r"add 'protein_layer'", r"drop protein_layer"],
    ),
    (
        "negative_counts",
        lambda m: _with_matrix(m, "prot", _set_first(-3.0)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"negative", r"protein_layer='counts'"],
    ),
    (
        "negative_integer_counts",
        lambda m: _with_matrix(m, "prot", lambda x: _set_first(-3.0)(x).astype(np.int64)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"negative", r"protein_layer='counts'"],
    ),
    (
        "log_normalized",
        lambda m: _with_matrix(m, "rna", _log_normalized),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"non-integer", r"looks log-normalized; pass the raw counts layer", r"'counts'"],
    ),
    (
        "nan",
        lambda m: _with_matrix(m, "atac", _set_first(np.nan)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['atac'\]\.X", r"NaN", r"atac_layer='counts'"],
    ),
    (
        "inf",
        lambda m: _with_matrix(m, "atac", _set_first(np.inf)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['atac'\]\.X", r"infinite", r"atac_layer='counts'"],
    ),
    (
        "string_dtype",
        lambda m: _with_matrix(m, "prot", lambda x: x.astype(str)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"dtype <U", r"not numbers", r"protein_layer='counts'"],
    ),
    (
        "duplicate_obs_names",
        _duplicate_obs_names,
        {"modalities": {"rna_layer": "rna"}},
        ValueError,
        [r"mdata\.obs_names", r"duplicates", r"'cell_a'", r"obs_names_make_unique"],
    ),
    (
        "batch_key_missing",
        None,
        {"modalities": SETUP_MODALITIES, "batch_key": "sample"},
        KeyError,
        [r"mdata\.obs has no column 'sample'", r"batch_key='sample'", r"'batch'", r"pass batch_key="],
    ),
    (
        "nan_in_batch",
        _nan_batch,
        {"modalities": SETUP_MODALITIES, "batch_key": "batch"},
        ValueError,
        [r"mdata\.obs\['batch'\]", r"1 missing value", r"fill them", r"batch_key='batch'"],
    ),
    (
        "covariate_missing",
        None,
        {"modalities": SETUP_MODALITIES, "categorical_covariate_keys": ["donor"]},
        KeyError,
        [r"mdata\.obs has no column 'donor'", r"categorical_covariate_keys", r"pass categorical_covariate_keys="],
    ),
    (
        "dataset_key_missing",
        None,
        {"modalities": SETUP_MODALITIES, "dataset_key": "study"},
        KeyError,
        [r"mdata\.obs has no column 'study'", r"dataset_key='study'", r"pass dataset_key="],
    ),
    (
        "cell_without_registered_modality",
        None,
        {"modalities": {"atac_layer": "atac"}},
        ValueError,
        [r"60 cells of mdata", r"none of the modalities \['atac'\]", r"cite_cell0", r"drop them", r"register"],
    ),
    (
        "atac_tfidf",
        lambda m: _with_matrix(m, "atac", _tfidf),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [
            r"mdata\.mod\['atac'\]\.X",
            r"non-integer",
            r"looks TF-IDF",
            r"raw peak counts",
            r"atac_layer='counts'",
        ],
    ),
    (
        "protein_clr",
        lambda m: _with_matrix(m, "prot", _clr),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"non-integer", r"looks CLR-normalized", r"protein_layer='counts'"],
    ),
    (
        "object_dtype",
        lambda m: _with_matrix(m, "rna", lambda x: x.astype(object)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"dtype object", r"not numbers", r"layers are \['counts'\]"],
    ),
    (
        "int64_overflow_sized",
        lambda m: _with_matrix(m, "rna", lambda x: _set_first(2.0**40)(x).astype(np.int64)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['rna'\]\.X", r"counts up to 1\.1e\+12", r"above 2\*\*31 - 1", r"overflowed", r"'counts'"],
    ),
    (
        "uint64_wrapped_negative",
        lambda m: _with_matrix(m, "prot", lambda x: _set_first(-1.0)(x).astype(np.int64).astype(np.uint64)),
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]\.X", r"1\.84e\+19", r"overflowed or was cast", r"protein_layer="],
    ),
    (
        "modality_cells_not_in_obs",
        _prot_out_of_sync,
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\] has 60 cells that are not in mdata\.obs_names", r"out of sync", r"mdata\.update\(\)"],
    ),
    (
        "obs_cells_dropped_from_modalities",
        _multiome_subset_in_place,
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"10 cells of mdata have none of the modalities", r"multiome_cell0", r"call mdata\.update\(\)"],
    ),
    (
        "measured_not_true_false",
        _fractional_measured,
        {"modalities": SETUP_MODALITIES, "dataset_key": "dataset"},
        ValueError,
        [r"mdata\.mod\['prot'\]\.varm\['measured'\]\['cite'\]", r"'protein2': 0\.5", r"Set it to booleans"],
    ),
    (
        "modality_with_zero_features",
        _zero_proteins,
        {"modalities": SETUP_MODALITIES},
        ValueError,
        [r"mdata\.mod\['prot'\]", r"zero features", r"drop modality 'protein'"],
    ),
    (
        "continuous_covariate_not_numeric",
        None,
        {"modalities": SETUP_MODALITIES, "continuous_covariate_keys": ["batch"]},
        ValueError,
        [r"mdata\.obs\['batch'\]", r"continuous_covariate_keys", r"not numbers", r"categorical_covariate_keys"],
    ),
    (
        "continuous_covariate_with_nan",
        lambda m: _with_obs(m, "pct_mito", np.where(np.arange(m.n_obs) == 5, np.nan, 1.5)),
        {"modalities": SETUP_MODALITIES, "continuous_covariate_keys": ["pct_mito"]},
        ValueError,
        [r"mdata\.obs\['pct_mito'\]", r"1 missing or infinite", r"fill them", r"continuous_covariate_keys='pct_mito'"],
    ),
    (
        "continuous_covariate_missing",
        None,
        {"modalities": SETUP_MODALITIES, "continuous_covariate_keys": "pct_mito"},
        KeyError,
        [r"mdata\.obs has no column 'pct_mito'", r"pass continuous_covariate_keys="],
    ),
    (
        "size_factor_not_positive",
        lambda m: _with_obs(m, "size_factor", np.where(np.arange(m.n_obs) < 2, 0.0, 800.0)),
        {"modalities": SETUP_MODALITIES, "size_factor_key": "size_factor"},
        ValueError,
        [r"mdata\.obs\['size_factor'\]", r"2 values that are not positive", r"size_factor_key=None"],
    ),
    (
        "size_factor_without_rna",
        lambda m: _with_obs(m, "size_factor", np.full(m.n_obs, 800.0)),
        {"modalities": {"atac_layer": "atac", "protein_layer": "prot"}, "size_factor_key": "size_factor"},
        ValueError,
        [r"size_factor_key='size_factor'", r"no RNA modality", r"'rna_layer'"],
    ),
]


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
    mdata = small_mosaic()
    if make is not None:
        mdata = make(mdata)
    snap = snapshot(mdata)
    with pytest.raises(error) as excinfo:
        JointVAE.setup_mudata(mdata, **kwargs)
    assert type(excinfo.value) is error
    assert_names(excinfo.value, *patterns)
    assert_same(mdata, snap)
    _assert_not_set_up(mdata)


def test_anndata_is_rejected_with_the_wrapping_fix():
    adata = small_mosaic().mod["rna"]
    snap = snapshot(adata)
    with pytest.raises(TypeError) as excinfo:
        JointVAE.setup_mudata(adata, modalities={"rna_layer": "rna"})
    assert_names(excinfo.value, r"needs a MuData, got an AnnData", r"mudata\.MuData\(\{'rna': adata\}\)")
    with pytest.raises(TypeError, match=r"registers MuData.*mudata\.MuData\(\{'rna': adata\}\).*setup_mudata"):
        JointVAE.setup_anndata(adata)
    assert_same(adata, snap)
    assert not any(column.startswith("_scvi") for column in adata.obs.columns)
    assert not any(key.startswith("_scvi") for key in adata.uns)


def test_model_without_setup_says_to_call_setup_mudata():
    mdata = small_mosaic()
    snap = snapshot(mdata)
    with pytest.raises(ValueError, match=r"mdata is not set up; call pengster\.model\.JointVAE\.setup_mudata\(mdata"):
        JointVAE(mdata)
    assert_same(mdata, snap)
