"""Saving and loading: a saved model is data (safetensors and JSON), round-trips exactly, and a folder whose files
carry code (a pickle payload anywhere) is refused without running it. Models saved by pengster 0.1 (pickles) are
refused with the way to convert them, and ``convert_legacy`` converts one the user trusts."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from safetensors.torch import load_file, save_file

import pengster
from pengster.io._save import (
    DATA_FILE,
    FORMAT_VERSION,
    MANIFEST_NAME,
    WEIGHTS_FILE,
    InvalidSave,
    from_json,
    sha256,
    to_json,
)
from pengster.model import JointVAE, convert_legacy
from pengster.model._legacy import setup_args_for

torch.set_num_threads(1)
# the synthetic mosaic has ATAC cells and peaks without counts; setup_mudata (and load, which sets up again) says so
pytestmark = pytest.mark.filterwarnings("ignore:mdata.mod.*with no counts:UserWarning")

MODALITIES = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}


def _mosaic():
    mdata = pengster.data.synthetic_mosaic(
        n_cells={"multiome": 70, "cite": 60}, n_genes=30, n_peaks=40, n_proteins=8, seed=2
    )
    mdata.mod["rna"].obs["label"] = np.where(np.arange(mdata.mod["rna"].n_obs) % 2, "even", "odd").astype(object)
    return mdata


def _setup(mdata):
    JointVAE.setup_mudata(mdata, modalities=MODALITIES, batch_key="batch")


@pytest.fixture(scope="module")
def trained():
    mdata = _mosaic()
    _setup(mdata)
    scvi.settings.seed = 0
    model = JointVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
    return mdata, model


class Payload:
    """What an attacker puts in a pickle: unpickling it runs a shell command (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_checksums(folder: Path) -> None:
    """What anyone who can write the folder can do: make the manifest's checksums match the files."""
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    for name in list(manifest.get("files", {})):
        path = folder / name
        manifest["files"][name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("save_anndata", [False, True])
def test_save_load_round_trips_exactly(trained, tmp_path, save_anndata):
    mdata, model = trained

    def tables():
        frames = {"obs": mdata.obs, "var": mdata.var} | {f"{k}.obs": a.obs for k, a in mdata.mod.items()}
        return {name: frame.dtypes.to_dict() for name, frame in frames.items()}

    before = tables()
    assert before["rna.obs"]["label"].kind == "O"
    model.save(tmp_path / "model", save_anndata=save_anndata)
    assert tables() == before  # mudata's writer would turn the string column into a categorical
    files = {"model.safetensors", MANIFEST_NAME} | ({"adata.h5mu"} if save_anndata else set())
    assert set(os.listdir(tmp_path / "model")) == files
    # the weights are a plain safetensors file holding exactly the module's tensors
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert weights.keys() == model.module.state_dict().keys()

    loaded = JointVAE.load(str(tmp_path / "model")) if save_anndata else None
    with_data = JointVAE.load(str(tmp_path / "model"), adata=mdata)
    for other in [with_data] + ([loaded] if loaded is not None else []):
        np.testing.assert_array_equal(model.get_latent_representation(), other.get_latent_representation())
        for key, value in model.module.state_dict().items():
            assert torch.equal(other.module.state_dict()[key], value), key
        assert other.is_trained_ and not other.module.training
        np.testing.assert_array_equal(other.train_indices_, model.train_indices_)
        np.testing.assert_array_equal(other.validation_indices_, model.validation_indices_)
        for key, frame in model.history.items():
            pd.testing.assert_frame_equal(other.history[key], frame)
    if loaded is not None:
        # the saved MuData is the user's object (its own layers and obs), set up again from the saved arguments
        assert list(loaded.mdata.mod) == list(mdata.mod) and list(loaded.mdata.obs.columns) == list(mdata.obs.columns)
        assert loaded.mdata.mod["rna"].obs["label"].tolist() == mdata.mod["rna"].obs["label"].tolist()
        np.testing.assert_array_equal(
            model.predict(target="protein").to_numpy(), loaded.predict(target="protein").to_numpy()
        )


@pytest.mark.parametrize(("umask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_a_save_has_the_modes_the_umask_gives(trained, tmp_path, umask, folder_mode, file_mode):
    """The folder and its files are as readable as anything else the user writes: no more, no less."""
    _, model = trained
    previous = os.umask(umask)  # the user's umask, for this save only
    try:
        model.save(tmp_path / "model", save_anndata=True)
        model.save(tmp_path / "model", overwrite=True, save_anndata=True)  # a replacing save too
        model.save(tmp_path / "deeper" / "model")  # and the parent folders it creates
    finally:
        os.umask(previous)
    for folder in (tmp_path / "model", tmp_path / "deeper", tmp_path / "deeper" / "model"):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder
    for folder, files in (
        (tmp_path / "model", [WEIGHTS_FILE, DATA_FILE]),
        (tmp_path / "deeper" / "model", [WEIGHTS_FILE]),
    ):
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
        assert modes == dict.fromkeys([*files, MANIFEST_NAME], file_mode), folder
    assert sorted(os.listdir(tmp_path)) == ["deeper", "model"]  # no staging folder left behind


def test_load_with_part_of_the_data(trained, tmp_path):
    """Data holding fewer batches and datasets than the model was trained on (e.g. one lab's share of an atlas)."""
    mdata, model = trained
    model.save(tmp_path / "model")
    part = mdata[(mdata.obs["batch"] == "b0").to_numpy() & (mdata.obs["dataset"] == "cite").to_numpy()].copy()
    loaded = JointVAE.load(str(tmp_path / "model"), adata=part)
    for key, value in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(part), rtol=1e-5, atol=1e-6
    )


def test_load_without_data_of_a_model_saved_without_it_says_what_to_pass(trained, tmp_path):
    _, model = trained
    model.save(tmp_path / "model")
    with pytest.raises(ValueError, match=r"holds no data \(it was saved without save_anndata=True\); pass adata="):
        JointVAE.load(str(tmp_path / "model"))
    with pytest.raises(TypeError, match=r"adata must be a MuData, got AnnData"):
        JointVAE.load(str(tmp_path / "model"), adata=model.mdata.mod["rna"])


def test_json_encoding_round_trips_the_registry_types_and_refuses_others():
    value = {
        "names": np.array(["a", "b"], dtype=object),
        "codes": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "flag": np.bool_(True),
        "table": pd.DataFrame({"loss": [1.5, np.nan]}, index=pd.Index([0, 1], name="epoch")),
        "nested": [("x", 1), None],
    }
    back = from_json(json.loads(json.dumps(to_json(value, "value"))), "value")
    for key in ("names", "codes", "empty"):
        np.testing.assert_array_equal(back[key], value[key])
        assert back[key].dtype == value[key].dtype and back[key].shape == value[key].shape
    assert back["flag"] is True and back["nested"] == [["x", 1], None]
    pd.testing.assert_frame_equal(back["table"], value["table"])
    with pytest.raises(TypeError, match=r"value\['f'\] is a builtin_function_or_method; a saved model holds only"):
        to_json({"f": len}, "value")
    with pytest.raises(InvalidSave, match=r"registry\[0\] is an array of .* nested values"):
        from_json([{"__ndarray__": [{"a": 1}], "dtype": "|O", "shape": [1]}], "registry")
    with pytest.raises(InvalidSave, match=r"x is an array of datetime64"):
        from_json({"__ndarray__": [1], "dtype": "<M8[ns]", "shape": [1]}, "x")


# --------------------------------------------------------------------------------------------- hostile files
def test_the_payload_runs_when_unpickled(tmp_path):
    """The payload used below is live: unpickling it creates the marker (so its absence later means something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def _legacy_content(model, payload, where: str) -> dict:
    content = {
        "model_state_dict": {k: v.clone() for k, v in model.module.state_dict().items()},
        "var_names": {key: model.adata.mod[key].var_names.to_numpy() for key in model.modalities.values()},
        "attr_dict": {"registry_": model.registry_, "init_params_": model.init_params_, "is_trained_": True},
    }
    if where == "state_dict":
        content["model_state_dict"]["decoders.rna.px_scale"] = payload
    elif where == "registry":
        content["attr_dict"]["registry_"] = payload
    elif where == "var_names":
        content["var_names"] = payload
    else:
        content = payload
    return content


def _hostile(folder: Path, model, marker: Path, variant: str) -> str:
    """Turn a saved model into a hostile one; returns a pattern the error must match."""
    payload = Payload(marker)
    weights = folder / "model.safetensors"
    not_pengster = r"is not a valid pengster save: .* Nothing in it was run"
    if variant == "weights_are_a_torch_pickle":  # the attack of the report, on the weights file
        torch.save(payload, weights)
        _rewrite_checksums(folder)
        return rf"model\.safetensors' {not_pengster}"
    if variant == "weights_are_a_raw_pickle":
        weights.write_bytes(pickle.dumps({"weight": payload}))
        _rewrite_checksums(folder)
        return rf"model\.safetensors' {not_pengster}"
    if variant == "weights_are_other_tensors":
        save_file({"weight": torch.zeros(2)}, str(weights))
        _rewrite_checksums(folder)
        return rf"model\.safetensors' {not_pengster}"
    if variant.startswith("pickle_in_"):  # a 0.1-style model.pt, announced by a format-1 manifest or none
        weights.unlink()
        torch.save(_legacy_content(model, payload, variant.removeprefix("pickle_in_")), folder / "model.pt")
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        if variant.endswith("registry"):
            (folder / MANIFEST_NAME).unlink()
        else:
            manifest |= {"format_version": 1, "files": {"model.pt": {}}}
            (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
            _rewrite_checksums(folder)
        return r"saved by pengster 0\.1 .* model\.pt is a Python pickle, .* runs whatever code .*convert_legacy\("
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if variant == "object_array_in_registry":
        fake = {"__ndarray__": [{"py/reduce": ["os.system", f"touch {marker}"]}], "dtype": "|O", "shape": [1]}
        manifest["registry"]["field_registries"]["batch"]["state_registry"]["categorical_mapping"] = fake
    elif variant == "object_in_var_names":
        manifest["var_names"]["rna"] = [{"py/object": "os.system"}] * len(manifest["var_names"]["rna"])
    elif variant == "unknown_init_argument":
        manifest["init_params"]["non_kwargs"]["__class__"] = "os.system"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return rf"pengster\.json' {not_pengster}"


HOSTILE = [
    "weights_are_a_torch_pickle",
    "weights_are_a_raw_pickle",
    "weights_are_other_tensors",
    "pickle_in_state_dict",
    "pickle_in_registry",
    "pickle_in_var_names",
    "pickle_in_everything",
    "object_array_in_registry",
    "object_in_var_names",
    "unknown_init_argument",
]


@pytest.mark.parametrize("variant", HOSTILE)
@pytest.mark.parametrize("reader", ["load", "load_query_data"])
def test_hostile_folder_is_refused_and_its_payload_never_runs(trained, tmp_path, variant, reader):
    mdata, model = trained
    folder, marker = tmp_path / "shared_model", tmp_path / "payload_ran"
    model.save(folder)
    pattern = _hostile(folder, model, marker, variant)
    with pytest.raises(ValueError, match=pattern) as excinfo:
        if reader == "load":
            JointVAE.load(str(folder), adata=mdata)
        else:
            JointVAE.load_query_data(mdata, str(folder))
    assert str(folder) in str(excinfo.value)
    assert not marker.exists()
    if (folder / "model.pt").exists():  # nor does the converter read it unless told to
        with pytest.raises(ValueError, match=r"Pass trust=True only if"):
            convert_legacy(folder)
        assert not marker.exists()


def test_a_pickle_next_to_a_valid_save_is_never_read(trained, tmp_path):
    mdata, model = trained
    folder, marker = tmp_path / "model", tmp_path / "payload_ran"
    model.save(folder)
    torch.save({"model_state_dict": Payload(marker)}, folder / "model.pt")
    loaded = JointVAE.load(str(folder), adata=mdata)
    JointVAE.load_query_data(mdata, str(folder))
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- pengster 0.1 saves
def _save_as_0_1(model, folder: Path, *, manifest: bool) -> None:
    """Write the format of pengster 0.1: scvi-tools' pickled model.pt (and, from 0.1.x on, a format-1 manifest)."""
    scvi.model.base.BaseModelClass.save(model, str(folder))
    if manifest:
        (folder / MANIFEST_NAME).write_text(
            json.dumps({"format_version": 1, "pengster_version": "0.1.0", "model_class": "JointVAE", "files": {}})
        )


@pytest.mark.parametrize("manifest", [False, True])
def test_0_1_model_is_refused_with_the_conversion_and_converts_when_trusted(trained, tmp_path, manifest):
    mdata, model = trained
    folder = tmp_path / "old"
    _save_as_0_1(model, folder, manifest=manifest)
    with pytest.raises(
        ValueError, match=r"saved by pengster 0\.1 .* pengster\.model\.convert_legacy\('.*old', trust=True\)"
    ):
        JointVAE.load(str(folder), adata=mdata)
    with pytest.raises(ValueError, match=r"saved by pengster 0\.1"):
        JointVAE.load_query_data(mdata, str(folder))
    with pytest.raises(ValueError, match=r"reads .*model\.pt' with pickle, which runs any code the file contains"):
        convert_legacy(folder)
    assert (folder / "model.pt").exists()  # refused: nothing changed

    converted = convert_legacy(folder, trust=True, out=tmp_path / "new")
    assert converted == tmp_path / "new" and (folder / "model.pt").exists()
    assert set(os.listdir(converted)) == {"model.safetensors", MANIFEST_NAME}
    assert json.loads((converted / MANIFEST_NAME).read_text())["format_version"] == FORMAT_VERSION
    loaded = JointVAE.load(str(converted), adata=mdata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    pd.testing.assert_frame_equal(loaded.history["train_loss"], model.history["train_loss"])

    assert convert_legacy(folder, trust=True) == folder  # in place: the pickle is gone afterwards
    assert not (folder / "model.pt").exists()
    in_place = JointVAE.load(str(folder), adata=mdata)
    np.testing.assert_array_equal(in_place.get_latent_representation(), model.get_latent_representation())
    with pytest.raises(FileNotFoundError, match=r"has no model\.pt; it is not a model saved by pengster 0\.1"):
        convert_legacy(folder, trust=True)


def test_0_1_setup_arguments_take_the_form_of_the_current_setup_mudata(trained):
    _, model = trained
    registry = {**model.registry_, "setup_args": {"modalities": None, "layers": {"rna": "counts"}, "batch_key": "b"}}

    def scvi_form(mdata, rna_layer=None, atac_layer=None, protein_layer=None, batch_key=None, modalities=None):
        """setup_mudata in scvi-tools' form (as MULTIVI and TOTALVI have it)."""

    assert setup_args_for(scvi_form, registry) == {
        "batch_key": "b",
        "rna_layer": "counts",
        "atac_layer": None,
        "protein_layer": None,
        "modalities": {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"},
    }
    # JointVAE.setup_mudata has that form; arguments that already fit it are kept as they are
    assert setup_args_for(JointVAE.setup_mudata, registry) == setup_args_for(scvi_form, registry)
    assert setup_args_for(JointVAE.setup_mudata, model.registry_) == model.registry_["setup_args"]


def test_a_save_missing_weights_is_refused_not_filled_in(trained, tmp_path):
    """A save without some of the module's tensors (here the ATAC cell factor predictor's) is not loaded with
    fresh values in their place: the weights of a model are all of its state_dict."""
    mdata, model = trained
    folder = tmp_path / "model"
    model.save(folder)
    weights = load_file(folder / WEIGHTS_FILE)
    dropped = sorted(key for key in weights if "cell_factor_predictor" in key)
    assert dropped
    save_file({key: value for key, value in weights.items() if key not in dropped}, folder / WEIGHTS_FILE)
    _rewrite_checksums(folder)
    with pytest.raises(InvalidSave, match=rf"{len(dropped)} missing, e\.g\. \[{dropped[0]!r}"):
        JointVAE.load(str(folder), adata=mdata)


def test_a_save_holding_setup_arguments_in_the_0_1_form_is_refused(trained, tmp_path):
    """convert_legacy translates 0.1's setup arguments when it writes a save; a save still holding them is invalid."""
    mdata, model = trained
    model.save(tmp_path / "model")
    manifest_path = tmp_path / "model" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["registry"]["setup_args"] = {"modalities": None, "layers": {"rna": "counts"}, "batch_key": "batch"}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(InvalidSave, match=r"setup arguments are in pengster 0\.1's form .*convert_legacy"):
        JointVAE.load(str(tmp_path / "model"), adata=mdata)


def test_query_model_from_a_saved_reference_saves_and_loads_as_a_query_model(trained, tmp_path):
    mdata, model = trained
    model.save(tmp_path / "reference")
    query = _mosaic()
    query.obs["batch"] = "new_lab"  # a batch the reference never saw
    with pytest.raises(ValueError, match=r"inplace_subset_query_vars=True is not supported: .* leave it False"):
        JointVAE.load_query_data(query, str(tmp_path / "reference"), inplace_subset_query_vars=True)
    query_model = JointVAE.load_query_data(query, str(tmp_path / "reference"))
    query_model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    query_model.save(tmp_path / "query", save_anndata=True)
    loaded = JointVAE.load(str(tmp_path / "query"))
    assert loaded.is_query_ and loaded.is_trained_
    np.testing.assert_array_equal(loaded.get_latent_representation(), query_model.get_latent_representation())
    batches = loaded.adata_manager.get_state_registry("batch").categorical_mapping
    assert list(batches) == [*model.adata_manager.get_state_registry("batch").categorical_mapping, "new_lab"]
