"""Checks of a user's MuData before anything is registered or trained.

Every error names the object, the key and the fix. Nothing here writes to the user's object.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from pengster._constants import LAYER_ARGUMENTS, MODALITIES, REGISTRY_KEYS

from . import _align

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
            "modalities must map at least one of 'rna_layer', 'atac_layer', 'protein_layer' to a key of mdata.mod, "
            f"e.g. modalities={{'rna_layer': 'rna'}}; mdata.mod has {list(mdata.mod)}."
        )
    for modality, mod_key in modalities.items():
        if mod_key not in mdata.mod:
            raise KeyError(
                f"mdata.mod has no {mod_key!r} (asked for modality {modality!r}); mdata.mod has {list(mdata.mod)}; "
                f"pass modalities={{{LAYER_ARGUMENTS[modality]!r}: <one of those keys>}}."
            )
        adata = mdata.mod[mod_key]
        if adata.n_vars == 0:
            raise ValueError(
                f"mdata.mod[{mod_key!r}] has zero features; drop modality {modality!r} "
                f"({LAYER_ARGUMENTS[modality]!r}) from modalities or give it its features."
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
            f"modalities maps two modalities to the same mdata.mod key: "
            f"{ {LAYER_ARGUMENTS[m]: k for m, k in modalities.items()} }; give each modality its own key of mdata.mod, "
            f"which has {list(mdata.mod)}."
        )
    return {m: modalities[m] for m in MODALITIES if m in modalities}


def check_layers(mdata: MuData, modalities: Mapping[str, str], layers: Mapping[str, str | None] | None) -> dict:
    """Validate ``layers`` (modality -> layer name or None for X) and return one entry per modality."""
    layers = dict(layers or {})
    for modality, mod_key in modalities.items():
        layer = layers.setdefault(modality, None)
        adata = mdata.mod[mod_key]
        argument = LAYER_ARGUMENTS[modality]
        if layer is not None and not isinstance(layer, str):
            raise TypeError(
                f"{argument}={layer!r}: pass the name of a layer of mdata.mod[{mod_key!r}], or None for .X."
            )
        if layer is not None and layer not in adata.layers:
            raise KeyError(
                f"mdata.mod[{mod_key!r}].layers has no {layer!r} ({argument}={layer!r}); layers are "
                f"{list(adata.layers)}; pass {argument}=<one of those>, or None to use .X."
            )
        if layer is None and adata.X is None:
            raise KeyError(f"mdata.mod[{mod_key!r}].X is None; pass {argument}=<a counts layer>.")
    return layers


def count_matrix(mdata: MuData, mod_key: str, layer: str | None):
    """The registered matrix of one modality (a reference, never a copy)."""
    adata = mdata.mod[mod_key]
    return adata.X if layer is None else adata.layers[layer]


def _where(mod_key: str, layer: str | None) -> str:
    return f"mdata.mod[{mod_key!r}]." + ("X" if layer is None else f"layers[{layer!r}]")


# a count above int32's range is an overflow or a bad cast, not a molecule count of one cell and one feature
MAX_COUNT = 2**31 - 1


def is_backed(matrix) -> bool:
    """Whether ``matrix`` lives on disk (a backed AnnData's h5py dataset or sparse dataset)."""
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(matrix, CSRDataset | CSCDataset) or type(matrix).__module__.startswith("h5py")


def check_counts(
    matrix, *, mod_key: str, layer: str | None, modality: str, layers: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Raise unless ``matrix`` holds finite, non-negative integers (checked in chunks of rows).

    Parameters
    ----------
    matrix
        The registered matrix, shape ``(n_cells, n_features)``: numpy, scipy sparse or backed.
    mod_key, layer, modality
        Where it lives, for the messages.
    layers
        The layers of that modality, suggested in the fix.

    Returns
    -------
    ``{'cell_totals': (n_cells,), 'feature_totals': (n_features,)}`` of the counts, as float64.
    """
    where = _where(mod_key, layer)
    example = repr(next((name for name in layers if name != layer), "counts"))
    fix = f"pass the raw counts layer, e.g. {LAYER_ARGUMENTS[modality]}={example}"
    if layers:
        fix += f" (mdata.mod[{mod_key!r}].layers are {list(layers)})"
    dtype = getattr(matrix, "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"{where} has dtype {dtype}, not numbers; {fix}.")
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{where} has complex dtype {dtype}; counts are real integers: {fix}.")
    cell_totals = np.zeros(matrix.shape[0], dtype=np.float64)
    feature_totals = np.zeros(matrix.shape[1], dtype=np.float64)
    for start in range(0, matrix.shape[0], _CHUNK_ROWS):
        block = matrix[start : start + _CHUNK_ROWS]
        values = block.data if sparse.issparse(block) else np.asarray(block)
        if not (np.issubdtype(values.dtype, np.bool_) or np.issubdtype(values.dtype, np.integer)):
            if not np.all(np.isfinite(values)):
                kind = "NaN" if np.isnan(values).any() else "infinite"
                raise ValueError(f"{where} has {kind} values; counts must be finite: {fix}.")
        if values.size and not np.issubdtype(values.dtype, np.bool_):
            low, high = values.min(), values.max()
            if low < 0:
                raise ValueError(
                    f"{where} has negative values (min {low:.3g}); it looks scaled or centred, or overflowed: {fix}."
                )
            if high > MAX_COUNT:
                raise ValueError(
                    f"{where} has counts up to {float(high):.3g}, above 2**31 - 1; no assay counts that many molecules "
                    f"of one feature in one cell, so the matrix overflowed or was cast from another type: {fix}."
                )
            if not np.issubdtype(values.dtype, np.integer):
                fractional = values != np.round(values)
                if fractional.any():
                    hint = MODALITIES[modality].normalized_hint if high < 20 else ("it looks normalized or scaled")
                    raise ValueError(
                        f"{where} has non-integer values (e.g. {values[fractional][0]:.4g}); {hint}; {fix}."
                    )
        block = block if sparse.issparse(block) else np.asarray(block, dtype=np.float64)
        cell_totals[start : start + block.shape[0]] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        feature_totals += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
    return {"cell_totals": cell_totals, "feature_totals": feature_totals}


def warn_empty(totals: Mapping[str, np.ndarray], *, mod_key: str, adata: AnnData, layer: str | None) -> None:
    """Warn about cells and features of one modality without a single count; they are kept and train fine."""
    where = _where(mod_key, layer)
    empty_cells = np.flatnonzero(totals["cell_totals"] == 0)
    if len(empty_cells):
        warnings.warn(
            f"{where} has {len(empty_cells)} of {adata.n_obs} cells with no counts (e.g. "
            f"{adata.obs_names[empty_cells[:3]].tolist()}); they are kept, and their latent comes from their other "
            f"modalities and the prior. Drop them (e.g. sc.pp.filter_cells) if they are empty droplets.",
            UserWarning,
            stacklevel=5,
        )
    empty_features = np.flatnonzero(totals["feature_totals"] == 0)
    if len(empty_features):
        warnings.warn(
            f"{where} has {len(empty_features)} of {adata.n_vars} features with no counts in any cell (e.g. "
            f"{adata.var_names[empty_features[:3]].tolist()}); they are kept and learn to be zero. Drop them "
            "(e.g. sc.pp.filter_genes(min_cells=1)) to save time.",
            UserWarning,
            stacklevel=5,
        )


def check_obs_key(mdata: MuData, key: str, *, argument: str, mod_key: str | None = None) -> pd.Series:
    """Return ``mdata.obs[key]`` (or ``mdata.mod[mod_key].obs[key]``) as strings, one per cell of ``mdata``.

    Raises when the column is absent, has missing values, or (from a modality) does not cover every cell.
    """
    values = obs_column(mdata, key, argument=argument, mod_key=mod_key)
    where = "mdata.obs" if mod_key is None else f"mdata.mod[{mod_key!r}].obs"
    if values.isna().any():
        raise ValueError(
            f"{where}[{key!r}] has {int(values.isna().sum())} missing values; fill them (e.g. with 'unknown') "
            f"before passing {argument}={key!r}."
        )
    return values.astype(str)


def obs_column(mdata: MuData, key: str, *, argument: str, mod_key: str | None = None) -> pd.Series:
    """``mdata.obs[key]``, or ``mdata.mod[mod_key].obs[key]`` in ``mdata.obs_names`` order (it must cover all cells)."""
    obs = mdata.obs if mod_key is None else mdata.mod[mod_key].obs
    where = "mdata.obs" if mod_key is None else f"mdata.mod[{mod_key!r}].obs"
    if key not in obs.columns:
        hint = (
            " If the column lives in a modality, pull it with mdata.pull_obs() or mdata.update()."
            if mod_key is None
            else f" Or read it from mdata.obs: leave {argument!r} out of modalities."
        )
        raise KeyError(
            f"{where} has no column {key!r} ({argument}={key!r}); columns are {list(obs.columns)[:20]}; "
            f"pass {argument}=<one of those> or None.{hint}"
        )
    if mod_key is None:
        return obs[key]
    positions = obs.index.get_indexer(mdata.obs_names)
    if (positions < 0).any():
        raise ValueError(
            f"{where}[{key!r}] ({argument}, read from modality {mod_key!r} as modalities asks) has no value for the "
            f"{int((positions < 0).sum())} of {mdata.n_obs} cells of mdata that did not measure {mod_key!r}; put the "
            f"column in mdata.obs (e.g. mdata.pull_obs({key!r}, mods={mod_key!r}) and fill the gaps) and leave "
            f"{argument!r} out of modalities."
        )
    return pd.Series(obs[key].to_numpy()[positions], index=mdata.obs_names, name=key)


def check_continuous(mdata: MuData, keys: Sequence[str], *, argument: str, mod_key: str | None = None) -> dict:
    """Column -> float32 values (one per cell of ``mdata``) of numeric, finite obs columns."""
    columns = {}
    for key in keys:
        values = obs_column(mdata, key, argument=argument, mod_key=mod_key)
        where = ("mdata.obs" if mod_key is None else f"mdata.mod[{mod_key!r}].obs") + f"[{key!r}]"
        if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
            raise ValueError(
                f"{where} ({argument}) has dtype {values.dtype}, not numbers; pass a numeric column, or give a "
                "categorical one as categorical_covariate_keys."
            )
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(array).all():
            raise ValueError(
                f"{where} ({argument}) has {int((~np.isfinite(array)).sum())} missing or infinite values; fill them "
                f"(e.g. with the column's median) before passing {argument}={key!r}."
            )
        columns[key] = array.astype(np.float32)
    return columns


def check_backed_mosaic(mdata: MuData, modalities: Mapping[str, str], layers: Mapping[str, str | None]) -> None:
    """Raise when a backed modality does not hold every cell of ``mdata`` in order.

    Such a modality would have to be loaded into memory to place its rows among all cells (the aligned view), which
    is what reading it backed was meant to avoid; say so instead of doing it silently.
    """
    for modality, mod_key in modalities.items():
        adata = mdata.mod[mod_key]
        if not is_backed(count_matrix(mdata, mod_key, layers.get(modality))):
            continue
        if adata.n_obs == mdata.n_obs and adata.obs_names.equals(mdata.obs_names):
            continue
        filename = getattr(mdata, "filename", None) or getattr(adata, "filename", None) or "data.h5mu"
        raise ValueError(
            f"mdata is backed (read with backed=True from {str(filename)!r}) and is a mosaic: mdata.mod[{mod_key!r}] "
            f"holds {adata.n_obs} of its {mdata.n_obs} cells, so pengster would have to load it into memory to place "
            "its rows among all cells. Training from disk needs every modality to hold every cell, in mdata.obs "
            f"order. Load the mosaic into memory instead: mdata = mudata.read_h5mu({str(filename)!r}) (without backed)."
        )


def check_every_cell_measured(mdata: MuData, modalities: Mapping[str, str]) -> None:
    """Raise when a cell of ``mdata`` is in none of the registered modalities."""
    measured = np.zeros(mdata.n_obs, dtype=bool)
    for mod_key in modalities.values():
        measured[mdata.obs_names.get_indexer(mdata.mod[mod_key].obs_names)] = True
    if not measured.all():
        names = mdata.obs_names[~measured]
        raise ValueError(
            f"{len(names)} cells of mdata have none of the modalities {list(modalities.values())} "
            f"(e.g. {names[:3].tolist()}); if a modality was subset in place, call mdata.update(); otherwise drop "
            "them, e.g. mdata = mdata[mdata.obs_names.isin(<measured>)], or register the modality they have."
        )


def check_covariates(keys: Sequence[str] | str | None, *, argument: str) -> list[str]:
    """Validate a list of covariate keys (a bare string is one key, as in scvi-tools)."""
    keys = [keys] if isinstance(keys, str) else list(keys or [])
    if len(set(keys)) != len(keys):
        raise ValueError(f"{argument}={keys} names a column twice; name each column once.")
    return keys


def check_size_factors(values: np.ndarray, measured: np.ndarray, *, key: str, where: str) -> np.ndarray:
    """Size factors of the cells that measured RNA must be positive; the others are not used (set to 1)."""
    bad = measured & ~(values > 0)
    if bad.any():
        raise ValueError(
            f"{where}[{key!r}] (size_factor_key) has {int(bad.sum())} values that are not positive among the cells "
            "that measured RNA; size factors are each cell's RNA library size on a linear scale (e.g. its total "
            "counts): fix them or pass size_factor_key=None to use the observed totals."
        )
    return np.where(measured, values, 1.0).astype(np.float32)


def check_features(mdata: MuData, mod_key: str, reference: pd.Index) -> None:
    """Raise unless ``mdata.mod[mod_key]`` has exactly the model's features, in order."""
    var_names = mdata.mod[mod_key].var_names
    if var_names.equals(reference):
        return
    raise ValueError(feature_mismatch_message(f"mdata.mod[{mod_key!r}]", var_names, reference))


def feature_mismatch_message(where: str, var_names: pd.Index, reference: pd.Index) -> str:
    """The message for data whose features differ from a model's: which are missing, which unknown, the fix."""
    var_names, reference = pd.Index(var_names), pd.Index(reference)
    missing = reference.difference(var_names, sort=False)
    extra = var_names.difference(reference, sort=False)
    if len(missing) == 0 and len(extra) == 0:
        problem = "the model's features in another order"
    else:
        problem = (
            f"features that differ from the model's: {len(missing)} missing (e.g. {missing[:5].tolist()}), "
            f"{len(extra)} unknown (e.g. {extra[:5].tolist()})"
        )
    fix = f"reorder and pad with {where}[:, model_features] or pengster.data.prepare_query(query, reference)"
    return f"{where} has {problem}; {fix}."


def check_known_categories(values: pd.Series, known: Sequence[str], *, key: str | None, argument: str) -> None:
    """Raise when ``values`` (a column of new data) holds categories the model did not see in training."""
    unseen = sorted(set(values.astype(str)) - {str(category) for category in known})
    if not unseen:
        return
    if key is None:
        raise ValueError(
            f"the model was trained with {argument} categories {list(known)[:10]}, but this mdata has no such column; "
            f"add one, e.g. mdata.obs[{argument.removesuffix('_key')!r}] = {str(known[0])!r}, and pass the same "
            f"{argument} as in training."
        )
    raise ValueError(
        f"mdata.obs[{key!r}] ({argument}) has categories the model never saw in training: {unseen[:5]}"
        f"{' ...' if len(unseen) > 5 else ''}; it knows {list(known)[:10]}. Replace them by a training category "
        f"(e.g. mdata.obs[{key!r}] = {str(known[0])!r}) in a copy of the data, or map the new data as a query."
    )


def check_registered_categories(obs: pd.DataFrame, manager, setup_args: Mapping) -> None:
    """Raise when new data's batch, dataset or covariate categories were not seen in training.

    ``obs`` is the aligned obs of the new data; ``manager`` the model's :class:`~scvi.data.AnnDataManager`.
    """
    checks = [
        (REGISTRY_KEYS.BATCH, _align.BATCH_COLUMN, setup_args.get("batch_key"), "batch_key"),
        (REGISTRY_KEYS.PANEL, _align.PANEL_COLUMN, setup_args.get("dataset_key"), "dataset_key"),
    ]
    for registry_key, column, key, argument in checks:
        known = manager.get_state_registry(registry_key).get("categorical_mapping")
        if known is not None:
            check_known_categories(obs[column], list(known), key=key, argument=argument)
    mappings = manager.get_state_registry(REGISTRY_KEYS.CAT_COVS).get("mappings", {})
    argument = "categorical_covariate_keys"
    for key in check_covariates(setup_args.get(argument), argument=argument):
        column = _align.covariate_column(key)
        if column in mappings:
            check_known_categories(obs[column], list(mappings[column]), key=key, argument="categorical_covariate_keys")


def panel_masks_from_zeros(
    matrix, mask: np.ndarray, panel_codes: np.ndarray, panels: Sequence[str], *, mod_key: str, var_names: pd.Index
) -> np.ndarray:
    """Mask (as totalVI does for proteins) the features with no count in any cell of a panel: it did not measure them.

    For modalities whose table entry says ``zero_is_unmeasured`` (antibody panels).

    Parameters
    ----------
    matrix
        The counts of the cells that measured the modality, ``(n_cells, n_features)``.
    mask
        The panels' feature masks so far, ``(n_panels, n_features)``.
    panel_codes
        Panel (dataset) code of each of those cells, ``(n_cells,)``.
    panels
        The panel names, for the warning.

    Returns
    -------
    The updated mask (a copy).
    """
    mask = mask.copy()
    for code, panel in enumerate(panels):
        rows = np.flatnonzero(panel_codes == code)
        if len(rows) == 0:
            continue
        totals = np.asarray(matrix[rows].sum(axis=0)).ravel()
        absent = (totals == 0) & (mask[code] > 0)
        if absent.any() and not absent.all():
            mask[code, absent] = 0.0
            warnings.warn(
                f"mdata.mod[{mod_key!r}]: {int(absent.sum())} proteins have no count in any cell of dataset "
                f"{panel!r} (e.g. {var_names[absent][:5].tolist()}); they are treated as not in its panel and left out "
                "of its likelihood, as totalVI does. Record the panels in "
                f"mdata.mod[{mod_key!r}].varm['measured'] (pengster.data.mosaic does) to silence this.",
                UserWarning,
                stacklevel=5,
            )
    return mask
