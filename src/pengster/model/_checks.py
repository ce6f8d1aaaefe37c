"""Checks of a user's MuData before anything is registered or trained.

Every error names the object, the key and the fix. Nothing here writes to the user's object.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from pengster._constants import MODALITIES

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 65_536


def check_mudata(mdata: object) -> MuData:
    """Raise unless ``mdata`` is a MuData with unique obs names, in sync with its modalities."""
    if isinstance(mdata, AnnData):
        raise TypeError("JointVAE.setup_mudata needs a MuData, got an AnnData; wrap it: mudata.MuData({'rna': adata}).")
    if not isinstance(mdata, MuData):
        raise TypeError(f"JointVAE.setup_mudata needs a mudata.MuData, got {type(mdata).__name__}.")
    if not mdata.obs_names.is_unique:
        duplicated = mdata.obs_names[mdata.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"mdata.obs_names has duplicates, e.g. {duplicated}; make them unique with mdata.obs_names_make_unique() "
            "or build the MuData with pengster.data.mosaic()."
        )
    return mdata


def check_modalities(mdata: MuData, modalities: Mapping[str, str]) -> dict[str, str]:
    """Validate ``modalities`` (modality -> mdata.mod key) and return it in pengster's modality order."""
    if not isinstance(modalities, Mapping) or len(modalities) == 0:
        raise ValueError(
            "modalities must map at least one of 'rna', 'atac', 'protein' to a key of mdata.mod, "
            f"e.g. modalities={{'rna': 'rna'}}; mdata.mod has {list(mdata.mod)}."
        )
    for modality, mod_key in modalities.items():
        if modality not in MODALITIES:
            raise ValueError(
                f"modalities has the unknown modality {modality!r}; use one of {list(MODALITIES)} "
                f"(e.g. modalities={{'protein': {mod_key!r}}})."
            )
        if mod_key not in mdata.mod:
            raise KeyError(
                f"mdata.mod has no {mod_key!r} (asked for modality {modality!r}); mdata.mod has {list(mdata.mod)}; "
                f"pass modalities={{{modality!r}: <one of those keys>}}."
            )
        adata = mdata.mod[mod_key]
        if adata.n_vars == 0:
            raise ValueError(
                f"mdata.mod[{mod_key!r}] has zero features; drop modality {modality!r} from modalities "
                "or give it its features."
            )
        if not adata.obs_names.is_unique:
            raise ValueError(
                f"mdata.mod[{mod_key!r}].obs_names has duplicates; make them unique (obs_names_make_unique) "
                "and call mdata.update()."
            )
        missing = ~adata.obs_names.isin(mdata.obs_names)
        if missing.any():
            raise ValueError(
                f"mdata.mod[{mod_key!r}] has {int(missing.sum())} cells that are not in mdata.obs_names "
                f"(e.g. {adata.obs_names[missing][:3].tolist()}); mdata is out of sync with its modalities: "
                "call mdata.update()."
            )
    if len(set(modalities.values())) != len(modalities):
        raise ValueError(
            f"modalities maps two modalities to the same mdata.mod key: {dict(modalities)}; give each modality its "
            f"own key of mdata.mod, which has {list(mdata.mod)}."
        )
    return {m: modalities[m] for m in MODALITIES if m in modalities}


def check_layers(mdata: MuData, modalities: Mapping[str, str], layers: Mapping[str, str | None] | None) -> dict:
    """Validate ``layers`` (modality -> layer name or None for X) and return one entry per modality."""
    layers = dict(layers or {})
    unknown = set(layers) - set(modalities)
    if unknown:
        raise ValueError(
            f"layers names modalities {sorted(unknown)} that are not in modalities={dict(modalities)}; "
            "use the same modality names in both."
        )
    for modality, mod_key in modalities.items():
        layer = layers.setdefault(modality, None)
        adata = mdata.mod[mod_key]
        if layer is not None and layer not in adata.layers:
            raise KeyError(
                f"mdata.mod[{mod_key!r}].layers has no {layer!r}; layers are {list(adata.layers)}; "
                f"pass layers={{{modality!r}: <one of those>}}, or None to use .X."
            )
        if layer is None and adata.X is None:
            raise KeyError(f"mdata.mod[{mod_key!r}].X is None; pass layers={{{modality!r}: <a counts layer>}}.")
    return layers


def count_matrix(mdata: MuData, mod_key: str, layer: str | None):
    """The registered matrix of one modality (a reference, never a copy)."""
    adata = mdata.mod[mod_key]
    return adata.X if layer is None else adata.layers[layer]


def _where(mod_key: str, layer: str | None) -> str:
    return f"mdata.mod[{mod_key!r}]." + ("X" if layer is None else f"layers[{layer!r}]")


def check_counts(matrix, *, mod_key: str, layer: str | None, modality: str) -> None:
    """Raise unless ``matrix`` holds finite, non-negative integers (checked in chunks of rows)."""
    where = _where(mod_key, layer)
    fix = f"pass the raw counts layer, e.g. layers={{{modality!r}: 'counts'}}"
    dtype = getattr(matrix, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"{where} has dtype {dtype}, not numbers; {fix}.")
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        block = matrix[start : start + _CHUNK_ROWS]
        values = block.data if sparse.issparse(block) else np.asarray(block)
        if np.issubdtype(values.dtype, np.bool_) or np.issubdtype(values.dtype, np.integer):
            if np.issubdtype(values.dtype, np.signedinteger) and values.size and values.min() < 0:
                raise ValueError(f"{where} has negative values; counts are non-negative: {fix}.")
            continue
        if not np.all(np.isfinite(values)):
            kind = "NaN" if np.isnan(values).any() else "infinite"
            raise ValueError(f"{where} has {kind} values; counts must be finite: {fix}.")
        if values.size and values.min() < 0:
            raise ValueError(
                f"{where} has negative values (min {values.min():.3g}); it looks scaled or centred: {fix}."
            )
        fractional = values != np.round(values)
        if fractional.any():
            hint = " it looks log-normalized;" if values.max() < 20 else ""
            raise ValueError(f"{where} has non-integer values (e.g. {values[fractional][0]:.4g});{hint} {fix}.")


def check_obs_key(mdata: MuData, key: str, *, argument: str) -> pd.Series:
    """Return ``mdata.obs[key]`` as strings, raising when absent or with missing values."""
    if key not in mdata.obs.columns:
        raise KeyError(
            f"mdata.obs has no column {key!r} ({argument}={key!r}); columns are {list(mdata.obs.columns)[:20]}; "
            f"pass {argument}=<one of those> or None. If the column lives in a modality, pull it with "
            "mdata.pull_obs() or mdata.update()."
        )
    values = mdata.obs[key]
    if values.isna().any():
        raise ValueError(
            f"mdata.obs[{key!r}] has {int(values.isna().sum())} missing values; fill them (e.g. with 'unknown') "
            f"before passing {argument}={key!r}."
        )
    return values.astype(str)


def check_every_cell_measured(mdata: MuData, modalities: Mapping[str, str]) -> None:
    """Raise when a cell of ``mdata`` is in none of the registered modalities."""
    measured = np.zeros(mdata.n_obs, dtype=bool)
    for mod_key in modalities.values():
        measured[mdata.obs_names.get_indexer(mdata.mod[mod_key].obs_names)] = True
    if not measured.all():
        names = mdata.obs_names[~measured]
        raise ValueError(
            f"{len(names)} cells of mdata have none of the modalities {list(modalities.values())} "
            f"(e.g. {names[:3].tolist()}); drop them first, e.g. mdata = mdata[mdata.obs_names.isin(<measured>)]"
            ", or register the modality they have."
        )


def check_covariates(mdata: MuData, keys: Sequence[str] | None) -> list[str]:
    """Validate categorical covariate keys."""
    keys = list(keys or [])
    for key in keys:
        check_obs_key(mdata, key, argument="categorical_covariate_keys")
    return keys


def check_features(mdata: MuData, mod_key: str, reference: pd.Index) -> None:
    """Raise unless ``mdata.mod[mod_key]`` has exactly the model's features, in order."""
    var_names = mdata.mod[mod_key].var_names
    if var_names.equals(reference):
        return
    missing = reference.difference(var_names)
    extra = var_names.difference(reference)
    raise ValueError(
        f"mdata.mod[{mod_key!r}] has features that differ from the model's: {len(missing)} missing "
        f"(e.g. {missing[:5].tolist()}), {len(extra)} unknown (e.g. {extra[:5].tolist()}); reorder and pad with "
        f"mdata.mod[{mod_key!r}][:, model_features] or pengster.data.prepare_query(query, reference)."
    )
