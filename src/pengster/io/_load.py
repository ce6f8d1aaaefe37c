"""Reading a saved JointVAE: only JSON and safetensors are read, so loading a folder never runs code from it.

The model is rebuilt with public API, as scvi-tools' ``load`` does but without unpickling: the data is set up with
the saved setup arguments and registry, ``JointVAE(adata, **init_params)`` builds the module, and
``load_state_dict`` fills in the saved weights.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mudata import MuData

from pengster._version import __version__
from pengster.data._checks import feature_mismatch_message
from pengster.module import JointVAEModule

from ._save import (
    DATA_FILE,
    FORMAT_VERSION,
    LEGACY_FILE,
    MANIFEST_NAME,
    SAVED_ATTRIBUTES,
    WEIGHTS_FILE,
    InvalidSave,
    from_json,
    registry_modalities,
    sha256,
)


@dataclass
class SavedModel:
    """The content of a saved model's folder, read and checked."""

    folder: Path
    manifest: dict
    """The manifest as written (versions, files)."""
    registry: dict
    """The scvi-tools registry, with its numpy arrays rebuilt."""
    init_params: dict
    """``init_params_``: ``{"non_kwargs": {...}, "kwargs": {...}}``, the arguments of ``JointVAE(...)``."""
    attributes: dict
    """Training attributes (``is_trained_``, ``history_``, the split indices)."""
    var_names: dict[str, pd.Index]
    """``mdata.mod`` key -> the model's features, in order."""
    state_dict: dict
    """The module's tensors, on the CPU."""

    @property
    def setup_args(self) -> dict:
        """The arguments the model's data was set up with (``setup_mudata(mdata, **setup_args)``)."""
        return dict(self.registry["setup_args"])


def legacy_message(folder: Path) -> str:
    """Why a model saved by pengster 0.1 is refused, and how to convert it."""
    return (
        f"{str(folder)!r} holds a model saved by pengster 0.1 (or by scvi-tools directly): its {LEGACY_FILE} is a "
        "Python pickle, and reading a pickle runs whatever code it contains, so pengster does not load it. If you "
        "trust where the folder came from (you saved it, or its author is someone you trust), convert it once with "
        f"pengster.model.convert_legacy({str(folder)!r}, trust=True) and load the converted folder; otherwise ask "
        "its author to save the model again with this pengster."
    )


def _invalid(path: Path, problem: str) -> InvalidSave:
    return InvalidSave(
        f"{str(path)!r} is not a valid pengster save: {problem}. Nothing in it was run. If it was shared with you, "
        "ask its author to save the model again; if it is your own, save it again or restore the folder from a copy."
    )


def read_saved(dir_path: str | os.PathLike, *, model_class: str) -> SavedModel:
    """Read and check a saved model; raises with the file and the fix when it is not one pengster wrote."""
    folder = Path(dir_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; pass the dir_path given to {model_class}.save.")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        if (folder / LEGACY_FILE).exists():
            raise ValueError(legacy_message(folder))
        raise FileNotFoundError(
            f"{str(folder)!r} has no {MANIFEST_NAME}: it is not a folder written by {model_class}.save (or the save "
            f"did not finish). Pass the dir_path given to {model_class}.save."
        )
    try:
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(
            f"{str(manifest_path)!r} is not valid JSON ({error}); the saved model is damaged: save the model again."
        ) from None
    if not isinstance(manifest, dict):
        raise _invalid(manifest_path, "it is not a JSON object")
    saved_format, saved_version = manifest.get("format_version"), manifest.get("pengster_version", "unknown")
    if saved_format == 1:
        raise ValueError(legacy_message(folder))
    if not isinstance(saved_format, int) or not 2 <= saved_format <= FORMAT_VERSION:
        raise ValueError(
            f"{str(folder)!r} was saved by pengster {saved_version} in format {saved_format}; this pengster "
            f"{__version__} reads format {FORMAT_VERSION}. Load it with pengster {saved_version} "
            "(pip install pengster==<that version>), or upgrade pengster."
        )
    if manifest.get("model_class") != model_class:
        raise ValueError(
            f"{str(folder)!r} holds a {manifest.get('model_class')}, not a {model_class}; load it with "
            f"pengster.model.{manifest.get('model_class')}.load."
        )
    _check_files(folder, manifest)
    try:
        body = {
            key: from_json(manifest.get(key), key) for key in ("registry", "init_params", "attributes", "var_names")
        }
    except InvalidSave as error:
        raise _invalid(manifest_path, str(error).rstrip(".")) from None
    var_names = _check_structure(manifest_path, body, model_class)
    # a model saved by pengster 0.2 held the decoders and the ATAC cell factor outside the modality heads
    state_dict = JointVAEModule.upgrade_state_dict(_read_weights(folder / WEIGHTS_FILE))
    # the tensors that size the module before its weights are loaded (see JointVAE.__init__ and reference mapping)
    needed = ["batch_has_modality", *(f"feature_mask_{m}" for m in registry_modalities(body["registry"]))]
    if any(key not in state_dict for key in needed):
        missing = [key for key in needed if key not in state_dict]
        raise _invalid(folder / WEIGHTS_FILE, f"it does not hold this model's weights (no {missing})")
    return SavedModel(
        folder=folder,
        manifest=manifest,
        registry=body["registry"],
        init_params=body["init_params"],
        attributes=body["attributes"],
        var_names=var_names,
        state_dict=state_dict,
    )


def _check_files(folder: Path, manifest: dict) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files or not set(files) <= {WEIGHTS_FILE, DATA_FILE}:
        raise _invalid(folder / MANIFEST_NAME, f"its 'files' must list {WEIGHTS_FILE} (and {DATA_FILE} at most)")
    for name, expected in files.items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(
                f"{str(folder)!r} has no {name}; the save did not finish or the file was removed. Save the model "
                "again, or restore the folder from a copy."
            )
        if (
            not isinstance(expected, dict)
            or path.stat().st_size != expected.get("bytes")
            or sha256(path) != expected.get("sha256")
        ):
            raise ValueError(
                f"{str(path)!r} does not match the checksum written when it was saved: it is damaged, truncated or "
                "was changed afterwards. Save the model again, or restore the folder from a copy."
            )


def _check_structure(path: Path, body: dict, model_class: str) -> dict[str, pd.Index]:
    """Check the manifest's shapes that loading relies on; returns the feature names."""
    registry, init_params, attributes = body["registry"], body["init_params"], body["attributes"]
    if not isinstance(registry, dict) or registry.get("model_name") != model_class:
        raise _invalid(path, f"its registry is not the registry of a {model_class}")
    if not isinstance(registry.get("setup_args"), dict) or not isinstance(registry.get("field_registries"), dict):
        raise _invalid(path, "its registry has no setup arguments or fields")
    if "layers" in registry["setup_args"]:
        raise _invalid(
            path,
            "its setup arguments are in pengster 0.1's form (layers=...), which pengster.model.convert_legacy "
            "translates when it writes a save",
        )
    try:
        modalities = registry_modalities(registry)
    except (KeyError, TypeError, AttributeError):
        modalities = {}
    if not modalities or not all(isinstance(mod_key, str) for mod_key in modalities.values()):
        raise _invalid(path, "its registry names no modality (no count field with a mod_key)")
    if not isinstance(init_params, dict) or set(init_params) != {"kwargs", "non_kwargs"}:
        raise _invalid(path, "its init_params are not the arguments of a model")
    named, variadic = init_params["non_kwargs"], init_params["kwargs"]  # variadic: {"kwargs": {name: value}}
    if (
        not isinstance(named, dict)
        or not isinstance(variadic, dict)
        or not all(isinstance(v, dict) for v in variadic.values())
    ):
        raise _invalid(path, "its init_params are not the arguments of a model")
    if not isinstance(attributes, dict) or not set(attributes) <= set(SAVED_ATTRIBUTES):
        raise _invalid(path, f"its attributes must be among {list(SAVED_ATTRIBUTES)}")
    var_names = body["var_names"]
    if not isinstance(var_names, dict) or not var_names:
        raise _invalid(path, "its var_names are not a dict of feature names per modality")
    for mod_key, names in var_names.items():
        values = names.tolist() if hasattr(names, "tolist") else names
        if not isinstance(values, list) or not all(isinstance(name, str) for name in values):
            raise _invalid(path, f"its var_names[{mod_key!r}] are not a list of feature names")
    return {key: pd.Index(names) for key, names in var_names.items()}


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _invalid(path, f"it is not a safetensors file of tensors ({type(error).__name__}: {error})") from None


def init_kwargs(saved: SavedModel, model_cls: type) -> dict:
    """The keyword arguments of ``model_cls(adata, ...)`` saved with the model; raises for ones it does not take."""
    kwargs = dict(saved.init_params["non_kwargs"])
    for extra in saved.init_params["kwargs"].values():
        kwargs.update(extra)
    accepted = inspect.signature(model_cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted) - {"self"})
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        raise _invalid(
            saved.folder / MANIFEST_NAME,
            f"its init_params name arguments that {model_cls.__name__} does not take: {unknown}",
        )
    return kwargs


def check_weights(path: Path, saved: Mapping, expected: Mapping) -> None:
    """Raise unless ``saved`` has exactly the tensors (names and shapes) of the freshly built module ``expected``."""
    missing, unknown = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    reshaped = sorted(key for key in expected.keys() & saved.keys() if saved[key].shape != expected[key].shape)
    if missing or unknown or reshaped:
        raise _invalid(
            path,
            f"it does not hold this model's weights ({len(missing)} missing, e.g. {missing[:3]}; {len(unknown)} "
            f"unknown, e.g. {unknown[:3]}; {len(reshaped)} of another shape, e.g. {reshaped[:3]})",
        )


def check_features(var_names: Mapping[str, pd.Index], adata: MuData, folder: Path) -> None:
    """Raise when a modality of ``adata`` has other features than the saved model, naming them and the fix."""
    for mod_key, names in var_names.items():
        if mod_key in adata.mod and not adata.mod[mod_key].var_names.equals(pd.Index(names)):
            raise ValueError(
                feature_mismatch_message(f"adata.mod[{mod_key!r}]", adata.mod[mod_key].var_names, names)
                + f" The model in {str(folder)!r} was trained on {len(names)} features of {mod_key!r}."
            )


def load_model(cls, dir_path: str | os.PathLike, adata: MuData | None, *, accelerator: str, device: int | str):
    """Rebuild a saved model (see :meth:`pengster.model.JointVAE.load`)."""
    import mudata
    from scvi.model._utils import parse_device_args

    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    saved = read_saved(dir_path, model_class=cls.__name__)
    folder = saved.folder
    if adata is None:
        if DATA_FILE not in saved.manifest["files"]:
            raise ValueError(
                f"{str(folder)!r} holds no data (it was saved without save_anndata=True); pass adata=<the MuData the "
                f"model was trained on, or new data with the same features>: {cls.__name__}.load(dir_path, adata=...)."
            )
        with mudata.set_options(pull_on_update=False):  # obs/var as they were saved
            adata = mudata.read_h5mu(folder / DATA_FILE)
    if not isinstance(adata, MuData):
        raise TypeError(f"adata must be a MuData, got {type(adata).__name__}; wrap an AnnData in mudata.MuData(...).")
    check_features(saved.var_names, adata, folder)
    kwargs = init_kwargs(saved, cls)
    cls.setup_mudata(adata, source_registry=saved.registry, **saved.setup_args)
    # the module is sized by the data's batches and datasets; ``adata`` may hold fewer than the registry (a query
    # model's data without the reference cells, a subset of the training data): size it by the saved tensors, which
    # load_state_dict puts in place anyway
    prepared = cls._prepared(adata)
    cls._remember(
        adata,
        dataclasses.replace(
            prepared,
            feature_masks={m: saved.state_dict[f"feature_mask_{m}"].numpy() for m in prepared.modalities},
            batch_has_modality=saved.state_dict["batch_has_modality"].numpy(),
        ),
    )
    model = cls(adata, **kwargs)
    check_weights(folder / WEIGHTS_FILE, saved.state_dict, model.module.state_dict())
    model.module.load_state_dict(saved.state_dict)
    for name, value in saved.attributes.items():
        setattr(model, name, value)
    model.to_device(torch_device)
    model.module.eval()
    return model
