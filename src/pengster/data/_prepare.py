"""From a user's MuData and the ``setup_mudata`` arguments to the aligned MuData the model registers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mudata import MuData

from pengster._constants import DATASET_KEY

from . import _align, _checks

_DEFAULT_MOD_KEYS = {
    "rna": ("rna", "gex", "RNA"),
    "atac": ("atac", "ATAC", "peaks"),
    "protein": ("prot", "protein", "adt", "ADT"),
}


@dataclass
class Prepared:
    """The aligned MuData of one user MuData, and what the module needs from the data."""

    aligned: MuData
    modalities: dict[str, str]
    feature_masks: dict[str, np.ndarray]
    batch_has_modality: np.ndarray
    protein_background: np.ndarray | None


def default_modalities(mdata: MuData) -> dict[str, str]:
    """Guess modality -> mod key from the usual names (rna/gex, atac/peaks, prot/protein/adt)."""
    found = {}
    for modality, candidates in _DEFAULT_MOD_KEYS.items():
        for key in candidates:
            if key in mdata.mod:
                found[modality] = key
                break
    if not found:
        raise KeyError(
            f"mdata.mod has none of the usual keys {sorted(sum(_DEFAULT_MOD_KEYS.values(), ()))}; "
            f"it has {list(mdata.mod)}; pass modalities={{'rna': ..., 'atac': ..., 'protein': ...}}."
        )
    return found


def prepare(
    mdata: MuData,
    *,
    modalities: Mapping[str, str] | None,
    layers: Mapping[str, str | None] | None,
    batch_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
    dataset_key: str | None,
    reference_var_names: Mapping[str, pd.Index] | None = None,
) -> Prepared:
    """Validate the user's MuData and build its aligned view. Raises before anything is registered.

    With ``reference_var_names`` (mod key -> features of a trained model), the MuData is new data for that model:
    a modality it lacks becomes empty (no cell measured it), and the features of those it has must match.
    """
    mdata = _checks.check_mudata(mdata)
    modalities = dict(default_modalities(mdata) if modalities is None else modalities)
    absent = {}
    if reference_var_names is not None:
        absent = {m: k for m, k in modalities.items() if k not in mdata.mod}
        if len(absent) == len(modalities):
            raise KeyError(
                f"mdata.mod has {list(mdata.mod)}, none of the model's modalities {modalities}; "
                "rename the modality keys to match."
            )
        for modality, mod_key in modalities.items():
            if modality not in absent:
                _checks.check_features(mdata, mod_key, reference_var_names[mod_key])
    present = _checks.check_modalities(mdata, {m: k for m, k in modalities.items() if m not in absent})
    layers = _checks.check_layers(mdata, present, {m: v for m, v in (layers or {}).items() if m not in absent})
    modalities = {m: modalities[m] for m in ("rna", "atac", "protein") if m in modalities}
    for modality, mod_key in present.items():
        matrix = _checks.count_matrix(mdata, mod_key, layers[modality])
        adata = mdata.mod[mod_key]
        totals = _checks.check_counts(
            matrix, mod_key=mod_key, layer=layers[modality], modality=modality, layers=list(adata.layers)
        )
        if reference_var_names is None:  # setting up training data, not new data for a trained model
            _checks.warn_empty(totals, mod_key=mod_key, adata=adata, layer=layers[modality])
    _checks.check_every_cell_measured(mdata, present)
    obs = pd.DataFrame(index=mdata.obs_names.copy())
    if batch_key is not None:
        obs[_align.BATCH_COLUMN] = _checks.check_obs_key(mdata, batch_key, argument="batch_key").to_numpy()
    else:
        obs[_align.BATCH_COLUMN] = "0"
    if dataset_key is not None:
        obs[_align.PANEL_COLUMN] = _checks.check_obs_key(mdata, dataset_key, argument="dataset_key").to_numpy()
    else:
        obs[_align.PANEL_COLUMN] = "0"
    for key in _checks.check_covariates(mdata, categorical_covariate_keys):
        obs[_align.covariate_column(key)] = mdata.obs[key].astype(str).to_numpy()
    empty = {absent[m]: reference_var_names[absent[m]] for m in absent}
    aligned = _align.build_aligned(mdata, present, layers, obs, empty=empty)
    for modality in absent:
        obs[_align.has_column(modality)] = np.float32(0.0)
        aligned.obs[_align.has_column(modality)] = obs[_align.has_column(modality)].to_numpy()

    panels = list(pd.Categorical(obs[_align.PANEL_COLUMN]).categories)
    batches = list(pd.Categorical(obs[_align.BATCH_COLUMN]).categories)
    background = None
    if "protein" in modalities:
        rows = np.flatnonzero(obs[_align.has_column("protein")].to_numpy() > 0)
        if len(rows):
            background = _align.protein_background(aligned.mod[modalities["protein"]].X, rows)
    masks = _align.feature_masks(mdata, present, panels)
    if "protein" in present and reference_var_names is None:
        rows = np.flatnonzero(obs[_align.has_column("protein")].to_numpy() > 0)
        masks["protein"] = _checks.protein_panel_masks(
            aligned.mod[present["protein"]].X[rows],
            masks["protein"],
            pd.Categorical(obs[_align.PANEL_COLUMN], categories=panels).codes[rows],
            panels,
            mod_key=present["protein"],
            var_names=aligned.mod[present["protein"]].var_names,
        )
    return Prepared(
        aligned=aligned,
        modalities=modalities,
        feature_masks=masks,
        batch_has_modality=_align.batch_has_modality(obs, batches, modalities),
        protein_background=background,
    )


def resolve_dataset_key(mdata: MuData, dataset_key: str | None) -> str | None:
    """``dataset_key=None`` means ``'dataset'`` when :func:`pengster.data.mosaic` wrote it, else no datasets."""
    if dataset_key is None and DATASET_KEY in mdata.obs.columns:
        return DATASET_KEY
    return dataset_key
