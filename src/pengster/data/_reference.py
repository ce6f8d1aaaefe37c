"""What query mapping needs from a trained reference: its modalities, features, setup arguments and weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from scvi.model.base import BaseModelClass
from scvi.model.base._save_load import _load_saved_files

from pengster._constants import MODALITIES, REGISTRY_KEYS


@dataclass
class ReferenceSummary:
    """What a query needs from a trained reference, read from a model or a saved model folder."""

    modalities: dict[str, str]
    """Modality -> ``mdata.mod`` key."""
    var_names: dict[str, pd.Index]
    """``mdata.mod`` key -> the reference's features, in order."""
    setup_args: dict
    """Arguments of the reference's :meth:`~pengster.model.JointVAE.setup_mudata`."""
    registry: dict
    """The reference's scvi-tools registry."""
    init_params: dict
    """Arguments of the reference's ``JointVAE(...)``."""
    state_dict: dict[str, torch.Tensor]
    """The reference's trained weights (on the CPU)."""

    def categories(self, key: str) -> list[str]:
        """The reference's categories of a registry field (``batch`` or ``panel``)."""
        return list(self.registry["field_registries"][key]["state_registry"]["categorical_mapping"])


def describe_reference(reference: BaseModelClass | str | Path) -> ReferenceSummary:
    """Read a trained :class:`~pengster.model.JointVAE`, or the folder it was saved to."""
    if isinstance(reference, str | Path):
        if not Path(reference, "model.pt").is_file():
            raise FileNotFoundError(
                f"reference={str(reference)!r} is not a folder written by JointVAE.save (no model.pt in it); pass the "
                "trained reference model or the folder you saved it to."
            )
        attr_dict, var_names, state_dict, _ = _load_saved_files(str(reference), load_adata=False, map_location="cpu")
        state_dict.pop("pyro_param_store", None)  # scvi-tools saves it with every model
        registry, init_params = attr_dict["registry_"], attr_dict["init_params_"]
        if not attr_dict.get("is_trained_", False):
            raise ValueError(f"the reference saved in {str(reference)!r} was never trained; train it, then save it.")
    else:
        if not hasattr(reference, "module") or not hasattr(reference, "registry_"):
            raise TypeError(
                f"reference must be a trained pengster.model.JointVAE or the folder it was saved to, got "
                f"{type(reference).__name__}."
            )
        if not reference.is_trained_:
            raise ValueError("the reference JointVAE is not trained; call reference.train() first.")
        registry, init_params = reference.registry_, reference.init_params_
        var_names = reference.get_var_names()
        state_dict = {k: v.detach().cpu().clone() for k, v in reference.module.state_dict().items()}
    if registry.get("model_name") != "JointVAE":
        raise ValueError(f"reference is a {registry.get('model_name')} model; load_query_data needs a JointVAE.")
    modalities = {
        modality: registry["field_registries"][REGISTRY_KEYS.counts(modality)]["data_registry"]["mod_key"]
        for modality in MODALITIES
        if REGISTRY_KEYS.counts(modality) in registry["field_registries"]
    }
    return ReferenceSummary(
        modalities=modalities,
        var_names={key: pd.Index(names) for key, names in var_names.items()},
        setup_args=dict(registry["setup_args"]),
        registry=registry,
        init_params=dict(init_params["non_kwargs"]),
        state_dict=state_dict,
    )
