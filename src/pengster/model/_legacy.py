"""Converting a model saved by pengster 0.1 (a pickle, scvi-tools' format) into the current format.

This is the one place where pengster unpickles, and only when the user says they trust the file.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from pengster.io._save import (
    DATA_FILE,
    LEGACY_FILE,
    MANIFEST_NAME,
    SAVED_ATTRIBUTES,
    WEIGHTS_FILE,
    registry_modalities,
    write_folder,
)

logger = logging.getLogger(__name__)

_LEGACY_KEYS = ("model_state_dict", "var_names", "attr_dict")


def convert_legacy(dir_path: str | os.PathLike, *, trust: bool = False, out: str | os.PathLike | None = None) -> Path:
    """Convert a model saved by pengster 0.1 into the current format, which :meth:`~pengster.model.JointVAE.load` reads.

    pengster 0.1 saved models as scvi-tools does, with a Python pickle (``model.pt``). Reading a pickle runs whatever
    code it contains, so a pickle from someone else can do anything your account can, and
    :meth:`~pengster.model.JointVAE.load` therefore refuses such folders. This function reads one, once, when you say
    you trust it, and writes the weights as safetensors and everything else as JSON, which loading reads without
    running anything.

    Parameters
    ----------
    dir_path
        Folder of the model saved by pengster 0.1.
    trust
        Must be True: you saved this model yourself, or you trust its author and how it reached you.
    out
        Folder to write the converted model to (it must not exist). Default: convert in place; ``model.pt`` is
        removed once the converted files are complete.

    Returns
    -------
    The folder of the converted model.

    Notes
    -----
    A MuData saved by pengster 0.1 with ``save_anndata=True`` was the model's internal view, not your MuData: it is
    not carried over. Load the converted model with ``JointVAE.load(folder, adata=mdata)``.

    Examples
    --------
    >>> pengster.model.convert_legacy("old_model", trust=True)
    >>> model = pengster.model.JointVAE.load("old_model", adata=mdata)
    """
    folder = Path(dir_path)
    pickled = folder / LEGACY_FILE
    if not pickled.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no {LEGACY_FILE}; it is not a model saved by pengster 0.1. A folder saved by this "
            "pengster needs no conversion: load it with pengster.model.JointVAE.load."
        )
    if trust is not True:
        raise ValueError(
            f"convert_legacy reads {str(pickled)!r} with pickle, which runs any code the file contains: a file from "
            "someone else can do anything your account can. Pass trust=True only if you saved this model yourself or "
            "trust its author and how it reached you; otherwise ask its author to save the model again with this "
            "pengster."
        )
    target = folder if out is None else Path(out)
    if out is not None and target.exists():
        raise ValueError(f"out={str(target)!r} already exists; pass a new folder, or out=None to convert in place.")
    description, state_dict = _read_pickled(pickled)
    from . import JointVAE

    description["registry"]["setup_args"] = setup_args_for(JointVAE.setup_mudata, description["registry"])
    if out is not None:
        write_folder(target, overwrite=False, state_dict=state_dict, description=description)
        return target
    # in place: the new files are moved in with the manifest last, so an interrupted conversion leaves a folder
    # that still reads as 0.1 (and can be converted again), never a half-converted one
    staging = folder.with_name(f".{folder.name}.converting-{uuid.uuid4().hex[:8]}")
    write_folder(staging, overwrite=False, state_dict=state_dict, description=description)
    try:
        os.replace(staging / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        os.replace(staging / MANIFEST_NAME, folder / MANIFEST_NAME)
        pickled.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if (folder / DATA_FILE).exists():
        logger.info("%s: the MuData saved by pengster 0.1 is its internal view; load with adata=<your MuData>", folder)
    return folder


def _read_pickled(path: Path) -> tuple[dict, dict]:
    """The description and weights of a pickled save; the caller has established that the user trusts the file."""
    import torch

    content = torch.load(path, map_location="cpu", weights_only=False)  # the user passed trust=True
    if not isinstance(content, Mapping) or not all(key in content for key in _LEGACY_KEYS):
        raise ValueError(
            f"{str(path)!r} is not a model saved by pengster 0.1 (scvi-tools' format holds {list(_LEGACY_KEYS)})."
        )
    attributes = dict(content["attr_dict"])
    if "init_params_" not in attributes:
        raise ValueError(f"{str(path)!r} holds no init_params_; it is not a model saved by pengster 0.1.")
    registry = attributes.get("registry_")
    if not isinstance(registry, Mapping) or registry.get("model_name") != "JointVAE":
        name = registry.get("model_name") if isinstance(registry, Mapping) else None
        raise ValueError(
            f"{str(path)!r} holds a {name} model, not a JointVAE; convert_legacy converts JointVAE models."
        )
    var_names = content["var_names"]
    if not isinstance(var_names, Mapping):
        raise ValueError(f"{str(path)!r} holds its feature names in scvi-tools' flat legacy format; save it again.")
    state_dict = {key: value for key, value in content["model_state_dict"].items() if key != "pyro_param_store"}
    description = {
        "model_class": "JointVAE",
        "registry": dict(registry),
        "init_params": attributes["init_params_"],
        "attributes": {name: attributes[name] for name in SAVED_ATTRIBUTES if name in attributes},
        "var_names": dict(var_names),
    }
    return description, state_dict


MODALITIES_0_1 = ("rna", "atac", "protein")
"""The modalities of pengster 0.1, whose ``setup_mudata`` keyed ``modalities`` and ``layers`` by them."""


def is_0_1_form(modalities) -> bool:
    """Whether ``setup_mudata``'s ``modalities`` is keyed by modality names, as pengster 0.1 took it."""
    return isinstance(modalities, Mapping) and any(key in MODALITIES_0_1 for key in modalities)


def _layer_argument(key: str) -> str:
    return f"{key}_layer" if key in MODALITIES_0_1 else key


def setup_args_from_0_1(args: Mapping, modalities: Mapping[str, str] | None = None) -> dict:
    """Setup arguments in pengster 0.1's form, in the current (scvi-tools') form; the one translator of that form.

    0.1 took ``modalities={"rna": "rna", ...}, layers={"rna": "counts", ...}``; the current form is
    ``rna_layer="counts", ..., modalities={"rna_layer": "rna", ...}``. ``modalities`` (modality -> ``mdata.mod``
    key, as a registry records them) replaces the ``modalities`` of ``args``, whose None meant the usual keys (as it
    does now). Every other argument is kept as it is, arguments already in the current form too.
    """
    args = dict(args)
    layers = dict(args.pop("layers", None) or {})
    given = args.pop("modalities", None)
    mapping = (given or None) if modalities is None else modalities
    by_argument = None if mapping is None else {_layer_argument(key): mod_key for key, mod_key in mapping.items()}
    for modality in MODALITIES_0_1:
        argument = _layer_argument(modality)
        mapped = by_argument is None or argument in by_argument
        if mapped and layers.get(modality) is not None:
            args[argument] = layers[modality]
        elif by_argument is not None and argument in by_argument:
            args.setdefault(argument, None)
    args["modalities"] = by_argument
    return args


def setup_args_for(setup_mudata: Callable, registry: Mapping) -> dict:
    """The setup arguments of a 0.1 registry, in the form that ``setup_mudata`` takes.

    The registry's count fields say which modalities were registered (0.1's ``modalities=None`` meant the usual
    keys). Arguments already in the form that ``setup_mudata`` takes are returned as they are.
    """
    args = dict(registry["setup_args"])
    parameters = inspect.signature(setup_mudata).parameters
    if "layers" not in args or "layers" in parameters or "rna_layer" not in parameters:
        return args
    return setup_args_from_0_1(args, registry_modalities(registry))


def old_form_message(args: Mapping) -> str:
    """Why ``setup_mudata`` refuses ``args`` in pengster 0.1's form, with the call that sets up the same model now."""
    current = setup_args_from_0_1(args)
    mapping = current.pop("modalities")
    arguments = [f"{name}={value!r}" for name, value in current.items() if value is not None]
    call = ", ".join(["mdata", *arguments, *([] if mapping is None else [f"modalities={mapping}"])])
    return (
        "setup_mudata takes scvi-tools' arguments since pengster 0.2 (as MULTIVI and TOTALVI): the counts layer of "
        "each modality is rna_layer=, atac_layer=, protein_layer= (None: .X), and modalities maps those argument "
        "names to keys of mdata.mod. The modalities={'rna': ...}, layers={...} form is gone; call "
        f"JointVAE.setup_mudata({call})."
    )
