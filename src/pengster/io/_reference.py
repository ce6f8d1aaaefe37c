"""What query mapping needs from a trained reference, read from the model or from the folder it was saved to.

Its modalities, features, setup arguments and weights; ``pengster.data.prepare_query`` aligns a query's features
with them, and ``JointVAE.load_query_data`` builds the query model from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from scvi.model.base import BaseModelClass

from . import _load, _save


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
    weights_file: Path | None = None
    """The file the weights were read from (a saved reference)."""

    def categories(self, key: str) -> list[str]:
        """The reference's categories of a registry field (``batch`` or ``panel``)."""
        return list(self.registry["field_registries"][key]["state_registry"]["categorical_mapping"])


def describe_reference(reference: BaseModelClass | str | Path, model_cls: type | None = None) -> ReferenceSummary:
    """Read a trained :class:`~pengster.model.JointVAE`, or the folder it was saved to (read as a ``model_cls``)."""
    if isinstance(reference, str | Path):
        # read as data (JSON and safetensors): a shared reference folder cannot run code here
        saved = _load.read_saved(reference, model_class="JointVAE")
        if not saved.attributes.get("is_trained_", False):
            raise ValueError(f"the reference saved in {str(reference)!r} was never trained; train it, then save it.")
        if model_cls is not None:
            _load.init_kwargs(saved, model_cls)
        registry, init_params = saved.registry, saved.init_params
        var_names, state_dict, weights_file = saved.var_names, saved.state_dict, saved.folder / _save.WEIGHTS_FILE
    else:
        if not hasattr(reference, "module") or not hasattr(reference, "registry_"):
            raise TypeError(
                f"reference must be a trained pengster.model.JointVAE or the folder it was saved to, got "
                f"{type(reference).__name__}."
            )
        if not reference.is_trained_:
            raise ValueError("the reference JointVAE is not trained; call reference.train() first.")
        registry, init_params = reference.registry_, reference.init_params_
        if registry.get("model_name") != "JointVAE":  # a saved folder's was checked as it was read
            raise ValueError(f"reference is a {registry.get('model_name')} model; load_query_data needs a JointVAE.")
        var_names = _save.model_var_names(reference)
        state_dict = {k: v.detach().cpu().clone() for k, v in reference.module.state_dict().items()}
        weights_file = None
    return ReferenceSummary(
        modalities=_save.registry_modalities(registry),
        var_names={key: pd.Index(names) for key, names in var_names.items()},
        setup_args=dict(registry["setup_args"]),
        registry=registry,
        init_params=dict(init_params["non_kwargs"]),
        state_dict=state_dict,
        weights_file=weights_file,
    )
