"""Saving a JointVAE as data: the weights as safetensors, everything else as JSON, written atomically.

A saved model is a folder holding

- ``model.safetensors``: the module's tensors (safetensors holds tensors and nothing else, so reading it runs no code);
- ``adata.h5mu``: with ``save_anndata=True``, the MuData the model was built on;
- ``pengster.json``, the manifest, written last: versions, model class, setup arguments and registry, the arguments of
  ``JointVAE(...)``, feature names, training attributes, and the size and SHA-256 of each file. The checksums catch
  a damaged or truncated file; they are no protection against someone who can write the folder (who can write the
  manifest too): that protection is that loading reads only data.

A save is written into a hidden temporary folder next to ``dir_path`` and renamed into place, so a crash mid-save
leaves the previous model (or nothing) at ``dir_path``, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pengster._version import __version__

MANIFEST_NAME = "pengster.json"
"""File of a saved model's folder naming its versions, registry and checksums; written last."""

FORMAT_VERSION = 2
"""Layout of a saved model; bumped when a newer pengster saves what an older one cannot read. 1: pickled (0.1)."""

WEIGHTS_FILE = "model.safetensors"
DATA_FILE = "adata.h5mu"
LEGACY_FILE = "model.pt"
"""The pickled file of a model saved by pengster 0.1 (scvi-tools' format)."""

SAVED_ATTRIBUTES = ("is_trained_", "is_query_", "train_indices_", "validation_indices_", "test_indices_", "history_")
"""Attributes of a model that a save keeps besides its weights, registry and ``init_params_``."""

_ARRAY, _FRAME = "__ndarray__", "__dataframe__"
_ARRAY_KINDS = "biufUO"  # bool, integers, floats, unicode, and object arrays of plain values (category names)


def to_json(value, where: str):
    """``value`` as JSON values; numpy arrays and DataFrames become tagged objects that :func:`from_json` reads back.

    Raises a TypeError naming ``where`` for anything else, so a save never writes what a load could not rebuild.
    """
    if isinstance(value, Mapping):
        return {str(key): to_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, pd.DataFrame):
        return {
            _FRAME: {
                "columns": to_json(value.columns.to_numpy(), f"{where}.columns"),
                "index": to_json(value.index.to_numpy(), f"{where}.index"),
                "index_name": to_json(value.index.name, f"{where}.index.name"),
                "data": [to_json(value[column].to_numpy(), f"{where}[{column!r}]") for column in value.columns],
            }
        }
    if isinstance(value, pd.Index):
        value = value.to_numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"{where} is an array of dtype {value.dtype}, which a saved model cannot hold.")
        items = value.ravel().tolist()
        if value.dtype.kind == "O":
            items = [to_json(item, f"{where}[{index}]") for index, item in enumerate(items)]
        return {_ARRAY: items, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(
        f"{where} is a {type(value).__name__}; a saved model holds only numbers, strings, lists, dicts, numpy arrays "
        "and DataFrames."
    )


class InvalidSave(ValueError):
    """A saved model's manifest holds something that pengster does not write."""


def from_json(value, where: str):
    """The inverse of :func:`to_json`; raises :class:`InvalidSave` naming ``where`` for anything it did not write."""
    if isinstance(value, list):
        return [from_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, dict):
        return value  # json.load gives only str, int, float, bool and None besides lists and dicts
    if _ARRAY in value:
        if set(value) != {_ARRAY, "dtype", "shape"} or not isinstance(value[_ARRAY], list):
            raise InvalidSave(f"{where} is not an array written by pengster.")
        try:
            dtype = np.dtype(value["dtype"])
            shape = tuple(int(n) for n in value["shape"])
        except (TypeError, ValueError):
            raise InvalidSave(f"{where} has an invalid dtype or shape.") from None
        items = value[_ARRAY]
        if dtype.kind not in _ARRAY_KINDS or any(isinstance(item, list | dict) for item in items):
            raise InvalidSave(f"{where} is an array of {dtype} or of nested values, which pengster does not write.")
        try:
            return np.array(items, dtype=dtype).reshape(shape)
        except (TypeError, ValueError, OverflowError):
            raise InvalidSave(f"{where} does not hold {int(np.prod(shape))} values of {dtype}.") from None
    if _FRAME in value:
        frame = value[_FRAME]
        if (
            set(value) != {_FRAME}
            or not isinstance(frame, dict)
            or set(frame) != {"columns", "index", "index_name", "data"}
        ):
            raise InvalidSave(f"{where} is not a table written by pengster.")
        columns, index = from_json(frame["columns"], f"{where}.columns"), from_json(frame["index"], f"{where}.index")
        data = [from_json(column, f"{where}.data") for column in frame["data"]]
        if not isinstance(columns, np.ndarray) or not isinstance(index, np.ndarray) or len(data) != len(columns):
            raise InvalidSave(f"{where} is not a table written by pengster.")
        try:
            table = pd.DataFrame(dict(zip(range(len(columns)), data, strict=True)), index=index)
        except (TypeError, ValueError):
            raise InvalidSave(f"{where} is not a table written by pengster.") from None
        table.columns = columns
        table.index.name = frame["index_name"] if isinstance(frame["index_name"], str) else None
        return table
    return {key: from_json(item, f"{where}[{key!r}]") for key, item in value.items()}


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def registry_modalities(registry: Mapping) -> dict[str, str]:
    """Modality -> ``mdata.mod`` key, read from the count fields of a registry."""
    from pengster._constants import MODALITIES, REGISTRY_KEYS

    fields = registry.get("field_registries", {})
    return {
        m: fields[REGISTRY_KEYS.counts(m)]["data_registry"]["mod_key"]
        for m in MODALITIES
        if REGISTRY_KEYS.counts(m) in fields
    }


def model_var_names(model) -> dict[str, pd.Index]:
    """``mdata.mod`` key -> the features of a JointVAE, in order: what a save records and a query is aligned to."""
    return {key: model.adata.mod[key].var_names for key in model.modalities.values()}


def write_folder(
    dir_path: str | os.PathLike,
    *,
    overwrite: bool,
    state_dict: Mapping,
    description: dict,
    write_data: Callable[[Path], None] | None = None,
    save_kwargs: dict | None = None,
) -> Path:
    """Write a saved model: weights, optional data, then the manifest, into a staging folder renamed to ``dir_path``.

    Parameters
    ----------
    dir_path
        Final folder of the model.
    overwrite
        Replace an existing ``dir_path``; it stays intact until the new save is complete.
    state_dict
        The module's tensors.
    description
        Manifest entries besides the versions and files: ``model_class``, ``registry``, ``init_params``,
        ``attributes``, ``var_names`` (plain or numpy values; encoded here).
    write_data
        Writes the MuData to the path it is given (``save_anndata=True``).
    save_kwargs
        Passed to ``safetensors.torch.save_file`` (e.g. ``metadata``).
    """
    import scvi
    import torch
    from safetensors.torch import save_file

    target = Path(dir_path)
    if target.exists() and not overwrite:
        raise ValueError(f"{str(target)!r} already exists; pass overwrite=True to replace it, or another dir_path.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file, not a folder; pass another dir_path.")
    manifest = {
        "format_version": FORMAT_VERSION,
        "pengster_version": __version__,
        "scvi_tools_version": scvi.__version__,
        "torch_version": torch.__version__,
        "model_class": description["model_class"],
        "modalities": registry_modalities(description["registry"]),
        # feature names as plain lists of strings, readable in the file
        "var_names": {str(key): [str(name) for name in names] for key, names in description["var_names"].items()},
        **{key: to_json(description[key], key) for key in ("registry", "init_params", "attributes")},
    }
    # safetensors refuses tensors that share memory or are not contiguous: each is written as its own copy
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state_dict.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(target.parent, f".{target.name}.saving-")
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE), **(save_kwargs or {}))
        if write_data is not None:
            write_data(staging / DATA_FILE)
        written = [path for path in (staging / WEIGHTS_FILE, staging / DATA_FILE) if path.exists()]
        manifest["files"] = {path.name: {"sha256": sha256(path), "bytes": path.stat().st_size} for path in written}
        with open(staging / MANIFEST_NAME, "w") as handle:
            handle.write(json.dumps(manifest, indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        # safetensors writes its file private (0o600) whatever the umask; the manifest, opened plainly, has the mode
        # that the user's umask gives a new file: so should every file of the save
        file_mode = stat.S_IMODE((staging / MANIFEST_NAME).stat().st_mode)
        for path in written:
            os.chmod(path, file_mode)
        if target.exists():
            # POSIX cannot swap two folders in one step: move the old one aside, then the new one in
            retired = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _new_folder(parent: Path, prefix: str) -> Path:
    """Create an empty folder ``<parent>/<prefix><random>`` with the mode the user's umask gives new folders.

    ``tempfile.mkdtemp`` makes its folder private (0o700), and a rename keeps that mode: a save would not be readable
    by the people the user's umask lets read their files.
    """
    while True:
        path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def detached_copy(mdata):
    """A MuData sharing ``mdata``'s arrays but not its tables, so that writing it cannot change ``mdata``.

    mudata's writer turns string columns of each modality's ``obs``/``var`` into categoricals in place and calls
    ``update()``; on this copy that touches only copied tables.
    """
    from anndata import AnnData
    from mudata import MuData

    def detached(adata: AnnData) -> AnnData:
        raw = adata.raw
        return AnnData(
            X=adata.X,
            obs=adata.obs.copy(),
            var=adata.var.copy(),
            uns=adata.uns,
            obsm=dict(adata.obsm),
            varm=dict(adata.varm),
            obsp=dict(adata.obsp),
            varp=dict(adata.varp),
            layers=dict(adata.layers),
            raw=None if raw is None else {"X": raw.X, "var": raw.var.copy(), "varm": dict(raw.varm)},
        )

    return MuData(
        {key: detached(adata) for key, adata in mdata.mod.items()},
        obs=mdata.obs.copy(),
        var=mdata.var.copy(),
        obsm=dict(mdata.obsm),
        varm=dict(mdata.varm),
        obsp=dict(mdata.obsp),
        varp=dict(mdata.varp),
        obsmap=dict(mdata.obsmap),
        varmap=dict(mdata.varmap),
        uns=mdata.uns,
        axis=mdata.axis,
    )


def save_model(
    model,
    dir_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    save_anndata: bool = False,
    save_kwargs: dict | None = None,
    **anndata_write_kwargs,
) -> None:
    """Save ``model`` (see :meth:`pengster.model.JointVAE.save`)."""
    attributes = {name: getattr(model, name) for name in SAVED_ATTRIBUTES if hasattr(model, name)}
    description = {
        "model_class": type(model).__name__,
        "registry": model.adata_manager.registry,
        "init_params": model.init_params_,
        "attributes": attributes,
        "var_names": model_var_names(model),
    }
    write_data = None
    if save_anndata:
        if model.mdata.isbacked:
            raise ValueError(
                f"save_anndata=True with a backed MuData: its data already lives in {model.mdata.filename!r}. Save "
                "without save_anndata and load with JointVAE.load(dir_path, adata=mudata.read_h5mu(that file))."
            )

        # the user's MuData, not the internal aligned view: load(dir_path) sets it up again from the setup arguments
        def write_data(path: Path) -> None:
            import mudata

            # the MuData as the user holds it: no columns pulled from the modalities into its obs/var
            with mudata.set_options(pull_on_update=False):
                detached_copy(model.mdata).write(str(path), **anndata_write_kwargs)

    write_folder(
        dir_path,
        overwrite=overwrite,
        state_dict=model.module.state_dict(),
        description=description,
        write_data=write_data,
        save_kwargs=save_kwargs,
    )
