"""Reference mapping in the scArches manner: a JointVAE for new (query) data, started from a trained reference.

The query model has the reference's networks with new embedding rows for the query's new batch and dataset (panel)
categories. By default only those rows (and the per-batch protein background) are trained; every weight the
reference learned stays fixed, so the reference cells keep their latent coordinates. This follows scvi-tools'
:class:`~scvi.model.base.ArchesMixin` :cite:p:`lotfollahi2022scarches`, with two differences that this model needs:
new category columns are inserted per covariate (scvi-tools appends them after the last covariate, which misplaces
them when a layer sees several covariates), and a layer that saw a single category (no one-hot column) gets a zero
column for it, so the reference's outputs are unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scvi.model._utils import parse_device_args
from scvi.model.base import BaseModelClass
from scvi.nn import FCLayers
from torch import nn

from pengster._constants import REGISTRY_KEYS
from pengster.data import _align
from pengster.data._prepare import Prepared, prepare_from_args
from pengster.data._query import is_prepared, prepare_query
from pengster.io import _load
from pengster.io._reference import ReferenceSummary, describe_reference
from pengster.module import JointVAEModule

from . import _setup

logger = logging.getLogger(__name__)


def reference_module(summary: ReferenceSummary) -> JointVAEModule:
    """The reference's :class:`~pengster.module.JointVAEModule`, rebuilt from its saved weights."""
    state = summary.state_dict
    covariates = summary.registry["field_registries"].get(REGISTRY_KEYS.CAT_COVS, {}).get("state_registry", {})
    module = JointVAEModule(
        n_features={m: len(summary.var_names[key]) for m, key in summary.modalities.items()},
        feature_masks={m: state[f"feature_mask_{m}"] for m in summary.modalities},
        n_batch=len(summary.categories(REGISTRY_KEYS.BATCH)),
        n_cats_per_cov=list(covariates.get("n_cats_per_key", [])),
        n_continuous_cov=summary.registry["field_registries"]
        .get(REGISTRY_KEYS.CONT_COVS, {})
        .get("summary_stats", {})
        .get(f"n_{REGISTRY_KEYS.CONT_COVS}", 0),
        batch_has_modality=state["batch_has_modality"],
        **summary.init_params,
    )
    if summary.weights_file is not None:
        _load.check_weights(summary.weights_file, state, module.state_dict())
    module.load_state_dict(state)
    return module


def extend_prepared(prepared: Prepared, summary: ReferenceSummary, registry: dict) -> Prepared:
    """Give the query's ``Prepared`` (``data/_prepare.py``) the rows of every category of the joint registry.

    Reference panels and batches keep the reference's feature masks and modality table; new ones get the query's.
    """
    state = summary.state_dict
    obs = prepared.aligned.obs
    panels = list(registry["field_registries"][REGISTRY_KEYS.PANEL]["state_registry"]["categorical_mapping"])
    batches = list(registry["field_registries"][REGISTRY_KEYS.BATCH]["state_registry"]["categorical_mapping"])
    n_reference_panels = len(summary.categories(REGISTRY_KEYS.PANEL))
    n_reference_batches = len(summary.categories(REGISTRY_KEYS.BATCH))
    query_panels = list(pd.Categorical(obs[_align.PANEL_COLUMN]).categories)
    masks = {}
    for modality in prepared.modalities:
        mask = state[f"feature_mask_{modality}"].numpy()
        # a modality the query lacks has no cells to mask: all ones, as for a reference panel without it
        query_masks = prepared.feature_masks.get(modality, np.ones((len(query_panels), mask.shape[1]), np.float32))
        rows = [query_masks[query_panels.index(p)] for p in panels[n_reference_panels:]]
        masks[modality] = np.concatenate([mask, np.asarray(rows, dtype=np.float32).reshape(-1, mask.shape[1])])
    table = _align.batch_has_modality(obs, batches, prepared.modalities)
    table[:n_reference_batches] = state["batch_has_modality"].numpy()
    return Prepared(
        aligned=prepared.aligned,
        modalities=prepared.modalities,
        feature_masks=masks,
        batch_has_modality=table,
    )


def _remap_columns(weight: torch.Tensor, new_weight: torch.Tensor, old_cats: list[int], new_cats: list[int]):
    """Place the reference's one-hot columns of each covariate; new categories start at their covariate's mean."""
    n_input = weight.shape[1] - sum(old_cats)
    out = new_weight.clone()
    out[:, :n_input] = weight[:, :n_input]
    old_start, new_start = n_input, n_input
    for n_old, n_new in zip(old_cats, new_cats, strict=True):
        block = weight[:, old_start : old_start + n_old]
        if n_new:
            # a covariate with one category has no column: it is the all-zero column of the wider layer
            mean = block.mean(1, keepdim=True) if n_old else torch.zeros_like(out[:, :1])
            out[:, new_start : new_start + n_new] = mean
            out[:, new_start : new_start + n_old] = block
        old_start, new_start = old_start + n_old, new_start + n_new
    return out


def transfer_weights(reference: JointVAEModule, query: JointVAEModule) -> None:
    """Copy the reference's weights into the (wider) query module, in place.

    Linear layers that take one-hot covariates get the reference's columns at their categories' positions; other
    tensors that grew (feature masks, modality table, per-batch head parameters) keep the reference's values in their
    leading rows/columns and the query module's own values in the new ones.
    """
    state = dict(query.state_dict())
    reference_state = reference.state_dict()
    reference_layers = dict(reference.named_modules())
    for name, layer in query.named_modules():
        if not isinstance(layer, FCLayers):
            continue
        old_layer = reference_layers[name]
        for index, (block_name, block) in enumerate(layer.fc_layers.named_children()):
            key = f"{name}.fc_layers.{block_name}.0.weight"
            if layer.inject_into_layer(index) and block[0].weight.shape != reference_state[key].shape:
                state[key] = _remap_columns(reference_state[key], state[key], old_layer.n_cat_list, layer.n_cat_list)
    for key, value in reference_state.items():
        target = state[key]
        if target.shape == value.shape:
            state[key] = value.clone()
        elif not key.endswith(".0.weight"):
            grown = target.clone()
            grown[tuple(slice(0, n) for n in value.shape)] = value
            state[key] = grown
    query.load_state_dict(state)


def freeze_reference(
    module: JointVAEModule,
    *,
    unfrozen: bool = False,
    freeze_dropout: bool = False,
    freeze_expression: bool = True,
    freeze_decoder_first_layer: bool = True,
    freeze_batchnorm_encoder: bool = True,
    freeze_batchnorm_decoder: bool = False,
) -> None:
    """Freeze the reference's weights as :func:`scvi.model.base._archesmixin._set_params_online_update` does.

    Every parameter stops learning except, in each layer that takes covariates, the one-hot columns (gradient hooks
    of :meth:`scvi.nn.FCLayers.set_online_update_hooks`), the per-batch protein background, and what the options
    release. Training a query model with weight decay would still move the hooked weights: the query model's
    :meth:`~pengster.model.JointVAE.train` therefore defaults to ``weight_decay=0``.
    """
    if unfrozen:
        return
    module.freeze_running_stats = True
    for parameter in module.parameters():
        parameter.requires_grad = False
    for name, layer in module.named_modules():
        is_encoder = module.is_encoder_part(name)
        if isinstance(layer, FCLayers):
            free_first = (is_encoder and not freeze_expression) or (not is_encoder and not freeze_decoder_first_layer)
            for block in layer.fc_layers:
                for parameter in block[0].parameters():
                    parameter.requires_grad = True
            # the hooks zero every gradient but those of the covariate columns (and of a released first layer)
            layer.set_online_update_hooks(hook_first_layer=not free_first)
        elif isinstance(layer, nn.BatchNorm1d):
            frozen = freeze_batchnorm_encoder if is_encoder else freeze_batchnorm_decoder
            if frozen:
                layer.momentum = 0.0
            else:
                for parameter in layer.parameters():
                    parameter.requires_grad = True
        elif isinstance(layer, nn.Dropout) and freeze_dropout:
            layer.p = 0.0
    for head in module.heads.values():
        for parameter_name in head.QUERY_FREE:
            getattr(head, parameter_name).requires_grad = True


def load_query_data(
    cls: type[BaseModelClass],
    adata: MuData,
    reference_model: BaseModelClass | str | Path,
    *,
    freeze_options: dict[str, bool],
    accelerator: str = "auto",
    device: int | str = "auto",
) -> BaseModelClass:
    """Build the query model; see :meth:`pengster.model.JointVAE.load_query_data`."""
    summary = describe_reference(reference_model, cls)
    query = adata if is_prepared(adata, summary) else prepare_query(adata, summary)
    prepared = prepare_from_args(
        query, summary.setup_args, modalities=summary.modalities, reference_var_names=summary.var_names
    )
    setup_method_args = {k: summary.registry[k] for k in ("model_name", "setup_method_name", "setup_args")}
    manager = _setup.register(prepared, setup_method_args, source_registry=summary.registry, extend_categories=True)
    cls.register_manager(manager)
    cls._remember(query, extend_prepared(prepared, summary, manager._registry))
    model = cls(query, **summary.init_params)
    transfer_weights(reference_module(summary), model.module)
    freeze_reference(model.module, **freeze_options)
    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    model.to_device(torch_device)
    model.is_query_ = True
    model.is_trained_ = False
    n_new = {
        key: len(manager.get_state_registry(key).categorical_mapping) - len(summary.categories(key))
        for key in (REGISTRY_KEYS.BATCH, REGISTRY_KEYS.PANEL)
    }
    logger.info(
        "query model: %d new batch and %d new dataset categories; reference weights %s",
        n_new[REGISTRY_KEYS.BATCH],
        n_new[REGISTRY_KEYS.PANEL],
        "trainable (unfrozen)" if freeze_options.get("unfrozen") else "frozen",
    )
    return model
