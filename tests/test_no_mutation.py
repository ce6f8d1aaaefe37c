"""Setup, training and the getters never write to the user's MuData; write_results writes exactly its keys."""

from __future__ import annotations

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from pengster.data import synthetic_mosaic
from pengster.model import JointVAE
from pengster.tl import write_results

torch.set_num_threads(1)

MODALITIES = {"rna": "rna", "atac": "atac", "protein": "prot"}
SETUP_MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
LAYERS = {"rna_layer": "counts", "atac_layer": "counts", "protein_layer": "counts"}


def _mosaic(seed: int = 0) -> md.MuData:
    mdata = synthetic_mosaic(n_cells={"multiome": 60, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=seed)
    # a covariate column and an extra obsm/uns entry, so that obs, obsm and uns are not trivially empty
    mdata.obs["donor"] = pd.Categorical(np.where(np.arange(mdata.n_obs) % 3 == 0, "d0", "d1"))
    mdata.uns["user_note"] = "kept"
    return mdata


def _copy(value):
    if isinstance(value, pd.DataFrame | pd.Index):
        return value.copy()
    if sparse.issparse(value):
        return value.copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def snapshot(mdata: md.MuData) -> dict[str, object]:
    """Flat copy of a MuData: ``'<where>' -> value`` for every matrix and frame; uns, obsp and varp by key."""
    snap: dict[str, object] = {
        "obs": mdata.obs.copy(),
        "var": mdata.var.copy(),
        "obs_names": mdata.obs_names.copy(),
        **{f"obsm/{key}": _copy(value) for key, value in mdata.obsm.items()},
        **{f"varm/{key}": _copy(value) for key, value in mdata.varm.items()},
        **{f"obsmap/{key}": _copy(value) for key, value in mdata.obsmap.items()},
        **{f"uns/{key}": None for key in mdata.uns},
    }
    for mod_key, adata in mdata.mod.items():
        where = f"mod/{mod_key}"
        snap |= {
            f"{where}/X": _copy(adata.X),
            f"{where}/obs": adata.obs.copy(),
            f"{where}/var": adata.var.copy(),
            **{f"{where}/layers/{key}": _copy(value) for key, value in adata.layers.items()},
            **{f"{where}/obsm/{key}": _copy(value) for key, value in adata.obsm.items()},
            **{f"{where}/varm/{key}": _copy(value) for key, value in adata.varm.items()},
            **{f"{where}/obsp/{key}": None for key in adata.obsp},
            **{f"{where}/varp/{key}": None for key in adata.varp},
            **{f"{where}/uns/{key}": None for key in adata.uns},
        }
    return snap


def _assert_value_equal(actual, expected, where: str) -> None:
    if isinstance(expected, pd.DataFrame):
        assert isinstance(actual, pd.DataFrame), where
        pd.testing.assert_frame_equal(actual, expected, obj=where)
    elif isinstance(expected, pd.Index):
        pd.testing.assert_index_equal(actual, expected, obj=where)
    elif expected is None:
        assert actual is None, where
    else:
        assert sparse.issparse(actual) == sparse.issparse(expected), where
        assert actual.dtype == expected.dtype, where
        if sparse.issparse(expected):
            actual, expected = actual.toarray(), expected.toarray()
        np.testing.assert_array_equal(actual, expected, err_msg=where)


def assert_same(before: dict, after: dict, *, added: set[str] = frozenset()) -> None:
    """Raise unless ``after`` has exactly the entries of ``before`` plus ``added``, with the same values."""
    new, gone = set(after) - set(before), set(before) - set(after)
    assert new == set(added), f"added {sorted(new - set(added))}, missing {sorted(set(added) - new)}"
    assert not gone, f"removed {sorted(gone)}"
    for where, expected in before.items():
        _assert_value_equal(after[where], expected, where)


def _assert_no_scvi_keys(mdata: md.MuData) -> None:
    names = [*mdata.obs.columns, *mdata.var.columns, *mdata.obsm, *mdata.uns]
    for adata in mdata.mod.values():
        names += [*adata.obs.columns, *adata.var.columns, *adata.obsm, *adata.uns, *adata.layers]
    assert not [name for name in names if str(name).startswith("_scvi")]


def _call_every_getter(model: JointVAE, mdata: md.MuData | None) -> None:
    for modality in model.modalities:
        model.get_latent_representation(mdata, modality=modality)
        model.predict(mdata, target=modality, n_samples=2, return_std=True)
        model.get_normalized_expression(mdata, modality=modality)
    model.get_latent_representation(mdata)
    model.predict(mdata, target="rna", source="protein")


def test_setup_train_and_getters_leave_the_mudata_unchanged():
    mdata = _mosaic()
    before = snapshot(mdata)

    def check(step: str) -> None:
        try:
            assert_same(before, snapshot(mdata))
            _assert_no_scvi_keys(mdata)
        except AssertionError as error:
            raise AssertionError(f"{step} changed the user's MuData: {error}") from error

    JointVAE.setup_mudata(
        mdata, modalities=SETUP_MODALITIES, **LAYERS, batch_key="batch", categorical_covariate_keys=["donor"]
    )
    check("setup_mudata")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    check("JointVAE(mdata)")
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    check("train")
    assert model.is_trained
    _call_every_getter(model, None)
    check("getters(None)")
    _call_every_getter(model, mdata)
    check("getters(mdata)")

    # new data for the trained model, set up on first use with the saved arguments, is not written to either
    query = _mosaic(seed=1)
    query_before = snapshot(query)
    _call_every_getter(model, query)
    assert_same(query_before, snapshot(query))
    _assert_no_scvi_keys(query)


# --------------------------------------------------------------------------------------------- write_results
@pytest.fixture(scope="module")
def trained():
    mdata = _mosaic()
    JointVAE.setup_mudata(mdata, modalities=SETUP_MODALITIES, **LAYERS, batch_key="batch")
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    return model


def _documented_keys(model: JointVAE) -> set[str]:
    keys = {"obsm/X_pengster", "uns/pengster"}
    for modality, mod_key in model.modalities.items():
        keys |= {
            f"obsm/X_pengster_{modality}",
            f"obsm/pengster_pred_{modality}",
            f"obsm/pengster_pred_{modality}_std",
            f"mod/{mod_key}/layers/pengster_denoised",
        }
    return keys


def test_write_results_adds_exactly_the_documented_keys(trained):
    mdata = _mosaic()
    before = snapshot(mdata)
    write_results(trained, mdata, n_samples=3)
    after = snapshot(mdata)
    expected = _documented_keys(trained)
    assert_same(before, after, added=expected)
    _assert_no_scvi_keys(mdata)

    latent = mdata.obsm["X_pengster"]
    assert latent.shape == (mdata.n_obs, 4) and np.isfinite(latent).all()
    # write_results calls get_latent_representation on the same cells, in the same order and minibatches (default
    # batch size), in this process: the same float32 computation, so equal up to nothing; 1e-6 is a margin only
    np.testing.assert_allclose(latent, trained.get_latent_representation(mdata), rtol=1e-6)
    for modality, mod_key in MODALITIES.items():
        measured = mdata.obs_names.isin(mdata.mod[mod_key].obs_names)
        own = mdata.obsm[f"X_pengster_{modality}"]
        np.testing.assert_array_equal(np.isnan(own).all(1), ~measured)
        assert np.isfinite(own[measured]).all()
        for key in (f"pengster_pred_{modality}", f"pengster_pred_{modality}_std"):
            frame = mdata.obsm[key]
            assert list(frame.index) == list(mdata.obs_names)
            assert list(frame.columns) == list(mdata.mod[mod_key].var_names)
        assert mdata.mod[mod_key].layers["pengster_denoised"].shape == mdata.mod[mod_key].shape
    written = set(np.asarray(mdata.uns["pengster"]["written"]).tolist())
    assert {f"obsm/{key}" for key in written if "/" not in key} | {
        f"mod/{key.split('/')[0]}/layers/{key.split('/')[1]}" for key in written if "/" in key
    } == expected - {"uns/pengster"}

    # a second call replaces its own keys, and nothing else
    mdata.obsm["X_pengster"] = np.zeros_like(latent)
    write_results(trained, mdata, n_samples=2)
    assert_same(before, snapshot(mdata), added=expected)
    # the same call on the same data in this process: the identical computation (see above)
    np.testing.assert_allclose(mdata.obsm["X_pengster"], latent, rtol=1e-6)


def test_write_results_writes_only_the_chosen_targets_and_features(trained):
    mdata = _mosaic()
    before = snapshot(mdata)
    proteins = list(mdata.mod["prot"].var_names[[5, 1, 2]])
    write_results(trained, mdata, targets=["protein", "rna"], features={"protein": proteins}, dtype=np.float16)
    # protein's features are chosen: a layer would need all of them, so it gets no denoised layer
    expected = {"obsm/X_pengster", "uns/pengster"}
    expected |= {f"obsm/X_pengster_{modality}" for modality in MODALITIES}
    expected |= {"obsm/pengster_pred_protein", "obsm/pengster_pred_protein_std", "mod/rna/layers/pengster_denoised"}
    expected |= {"obsm/pengster_pred_rna", "obsm/pengster_pred_rna_std"}
    assert_same(before, snapshot(mdata), added=expected)
    predicted = mdata.obsm["pengster_pred_protein"]
    assert list(predicted.columns) == proteins and predicted.to_numpy().dtype == np.float16
    full = trained.predict(mdata, target="protein")[proteins].to_numpy()
    # float16 keeps 11 significant bits: relative error at most 2**-11
    np.testing.assert_allclose(predicted.to_numpy(np.float32), full, rtol=2**-11, atol=1e-6)
    with pytest.raises(ValueError, match=r"features names \['atac'\], which are not in targets"):
        write_results(trained, _mosaic(), targets=["rna"], features={"atac": ["peak0"]})
    with pytest.raises(ValueError, match=r"features\['protein'\] has 1 names that are not features"):
        write_results(trained, _mosaic(), targets=["protein"], features={"protein": ["CD999"]})


def test_write_results_leaves_wide_atac_out_by_default(trained, monkeypatch):
    from pengster.tl import _write

    assert _write.default_targets(trained) == list(MODALITIES)
    monkeypatch.setattr(_write, "MAX_DEFAULT_PEAKS", 39)  # the mosaic has 40 peaks
    assert _write.default_targets(trained) == ["rna", "protein"]
    mdata = _mosaic()
    write_results(trained, mdata)
    assert "pengster_pred_atac" not in mdata.obsm and "pengster_denoised" not in mdata.mod["atac"].layers
    assert "pengster_pred_rna" in mdata.obsm and "X_pengster_atac" in mdata.obsm


@pytest.mark.parametrize("place", ["obsm", "layer", "uns"])
def test_write_results_refuses_keys_it_did_not_write(trained, place):
    mdata = _mosaic()
    if place == "obsm":
        mdata.obsm["X_pengster"] = np.ones((mdata.n_obs, 2))
        named = r"obsm\['X_pengster'\]"
    elif place == "layer":
        mdata.mod["prot"].layers["pengster_denoised"] = mdata.mod["prot"].layers["counts"].copy()
        named = r"mod\['prot'\]\.layers\['pengster_denoised'\]"
    else:
        mdata.uns["pengster"] = {"from": "someone else"}
        named = r"uns\['pengster'\]"
    before = snapshot(mdata)
    with pytest.raises(ValueError, match=rf"{named}.*not written by pengster.*overwrite=True.*key_added="):
        write_results(trained, mdata, n_samples=2)
    assert_same(before, snapshot(mdata))

    write_results(trained, mdata, n_samples=2, overwrite=True)
    after = snapshot(mdata)
    replaced = {"obsm": "obsm/X_pengster", "layer": "mod/prot/layers/pengster_denoised", "uns": "uns/pengster"}[place]
    assert_same(
        {k: v for k, v in before.items() if k != replaced},
        {k: v for k, v in after.items() if k != replaced},
        added=_documented_keys(trained) - {replaced},
    )
    if place == "obsm":
        assert mdata.obsm["X_pengster"].shape == (mdata.n_obs, 4)
    elif place == "uns":
        assert "written" in mdata.uns["pengster"]


def test_written_results_survive_h5mu_round_trip(trained, tmp_path):
    mdata = _mosaic()
    write_results(trained, mdata, n_samples=2)
    path = tmp_path / "x.h5mu"
    mdata.write(path)
    loaded = md.read_h5mu(path)

    for key in _documented_keys(trained) - {"uns/pengster"}:
        parts = key.split("/")
        if parts[0] == "obsm":
            expected, actual = mdata.obsm[parts[1]], loaded.obsm[parts[1]]
        else:
            expected, actual = mdata.mod[parts[1]].layers[parts[3]], loaded.mod[parts[1]].layers[parts[3]]
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(actual, expected, obj=key)
        else:
            assert actual.dtype == expected.dtype, key
            np.testing.assert_array_equal(actual, expected, err_msg=key)  # NaN == NaN here
    assert np.isnan(loaded.obsm["X_pengster_atac"]).any()
    for field in ("version", "model", "modalities", "scales"):
        assert loaded.uns["pengster"][field] == mdata.uns["pengster"][field]
    np.testing.assert_array_equal(
        np.asarray(loaded.uns["pengster"]["written"]).astype(str), np.asarray(mdata.uns["pengster"]["written"])
    )
