"""Atomic saves of a JointVAE with a manifest (versions, registry, checksums), and the checks made on loading.

A save is written into a hidden temporary folder next to ``dir_path``, the manifest last, and renamed into place,
so a crash mid-save leaves the previous model (or nothing) at ``dir_path``, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from mudata import MuData

from pengster.data import _checks

logger = logging.getLogger(__name__)

MANIFEST_NAME = "pengster.json"
"""File of a saved model's folder naming its versions, registry and checksums; written last."""

FORMAT_VERSION = 1
"""Layout of a saved model; bumped when a newer pengster saves what an older one cannot read."""

_MODEL_FILE = "model.pt"
_HASHED_FILES = (_MODEL_FILE,)


def _jsonable(value):
    """``value`` with numpy arrays, scalars and pandas indexes turned into lists and numbers."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray | pd.Index):
        return [_jsonable(item) for item in np.asarray(value).tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(model, folder: Path) -> dict:
    """The manifest of ``model`` whose files were just written to ``folder``."""
    import scvi
    import torch

    import pengster

    return {
        "format_version": FORMAT_VERSION,
        "pengster_version": pengster.__version__,
        "scvi_tools_version": scvi.__version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "modalities": dict(model.modalities),
        "var_names": {key: model.adata.mod[key].var_names.tolist() for key in model.modalities.values()},
        "registry": _jsonable(model.adata_manager._registry),
        "files": {
            name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in _HASHED_FILES
            if (folder / name).exists()
        },
    }


def save_atomically(model, dir_path: str | os.PathLike, *, overwrite: bool, write: Callable[[str], None]) -> None:
    """Write a model with ``write(folder)`` into a temporary folder, add the manifest, and rename it to ``dir_path``.

    Parameters
    ----------
    model
        The JointVAE being saved.
    dir_path
        Final folder of the model.
    overwrite
        Replace an existing ``dir_path``; it stays intact until the new save is complete.
    write
        Writes the model's files into the folder it is given (scvi-tools' save).
    """
    target = Path(dir_path)
    if target.exists() and not overwrite:
        raise ValueError(f"{str(target)!r} already exists; pass overwrite=True to replace it, or another dir_path.")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file, not a folder; pass another dir_path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        write(str(staging))
        content = json.dumps(manifest(model, staging), indent=1)
        with open(staging / MANIFEST_NAME, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
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


def read_manifest(dir_path: str | os.PathLike) -> dict | None:
    """The manifest of a saved model, or None for a folder saved before manifests existed."""
    folder = Path(dir_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; pass the dir_path given to JointVAE.save.")
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        with open(path) as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{str(path)!r} is not valid JSON ({error}); the saved model is damaged: save the model again."
        ) from None


def check_saved(dir_path: str | os.PathLike, *, model_class: str, mdata: MuData | None) -> dict | None:
    """Raise unless ``dir_path`` holds a complete model this pengster can read, fitting ``mdata``'s features.

    Returns the manifest (None for a model saved before manifests, loaded with a warning).
    """
    import pengster

    folder = Path(dir_path)
    info = read_manifest(folder)
    if not (folder / _MODEL_FILE).exists():
        raise FileNotFoundError(
            f"{str(folder)!r} has no {_MODEL_FILE}; it is not a saved JointVAE (or its save did not finish). "
            "Pass the dir_path given to JointVAE.save."
        )
    if info is None:
        warnings.warn(
            f"{str(folder)!r} has no {MANIFEST_NAME}: it was saved by pengster 0.1.0 or by scvi-tools directly, so "
            "its versions and checksum cannot be checked. Save it again to add them.",
            UserWarning,
            stacklevel=3,
        )
        try:
            from scvi.model.base._save_load import _load_saved_files

            _, var_names, _, _ = _load_saved_files(str(folder), load_adata=False, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure to read it means a damaged file
            raise ValueError(
                f"{str(folder / _MODEL_FILE)!r} cannot be read ({type(error).__name__}: {error}); it is damaged or "
                "truncated. Save the model again, or restore the folder from a copy."
            ) from None
        info = {"var_names": var_names if isinstance(var_names, Mapping) else {}}
        _check_features(info, mdata, folder)
        return None
    saved_format = info.get("format_version")
    saved_version = info.get("pengster_version", "unknown")
    if not isinstance(saved_format, int) or saved_format > FORMAT_VERSION or saved_format < 1:
        raise ValueError(
            f"{str(folder)!r} was saved by pengster {saved_version} in format {saved_format}; this pengster "
            f"{pengster.__version__} reads formats 1 to {FORMAT_VERSION}. Load it with pengster {saved_version} "
            "(pip install pengster==<that version>), or upgrade pengster."
        )
    if info.get("model_class") != model_class:
        raise ValueError(
            f"{str(folder)!r} holds a {info.get('model_class')}, not a {model_class}; load it with "
            f"pengster.model.{info.get('model_class')}.load."
        )
    for name, expected in info.get("files", {}).items():
        path = folder / name
        if not path.exists() or path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ValueError(
                f"{str(path)!r} does not match the checksum written when it was saved: it is damaged, truncated or "
                "was changed afterwards. Save the model again, or restore the folder from a copy."
            )
    _check_features(info, mdata, folder)
    return info


def _check_features(info: dict, mdata: MuData | None, folder: Path) -> None:
    if mdata is None or not isinstance(mdata, MuData):
        return
    for mod_key, names in info.get("var_names", {}).items():
        if mod_key in mdata.mod and not mdata.mod[mod_key].var_names.equals(pd.Index(names)):
            raise ValueError(
                _checks.feature_mismatch_message(f"mdata.mod[{mod_key!r}]", mdata.mod[mod_key].var_names, names)
                + f" The model in {str(folder)!r} was trained on {len(names)} features of {mod_key!r}."
            )
