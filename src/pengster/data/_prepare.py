"""From a user's MuData and the ``setup_mudata`` arguments to the aligned MuData the model registers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mudata import MuData

from pengster._constants import DATASET_KEY, LAYER_ARGUMENTS, MODALITIES

from . import _align, _checks


@dataclass
class Prepared:
    """The aligned MuData of one user MuData, and what the module needs from the data."""

    aligned: MuData
    modalities: dict[str, str]
    feature_masks: dict[str, np.ndarray]
    batch_has_modality: np.ndarray


OBS_ARGUMENTS = (
    "batch_key",
    "size_factor_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
    "dataset_key",
)
"""The ``setup_mudata`` arguments naming obs columns: ``modalities`` may say which modality's obs holds them."""


def default_modalities(mdata: MuData) -> dict[str, str]:
    """Guess modality -> mod key from the usual names (rna/gex, atac/peaks, prot/protein/adt)."""
    found = {}
    for modality, spec in MODALITIES.items():
        candidates = spec.default_keys
        for key in candidates:
            if key in mdata.mod:
                found[modality] = key
                break
    if not found:
        raise KeyError(
            f"mdata.mod has none of the usual keys {sorted(k for m in MODALITIES.values() for k in m.default_keys)}; "
            f"it has {list(mdata.mod)}; pass modalities={{'rna_layer': ..., 'atac_layer': ..., 'protein_layer': ...}}."
        )
    return found


@dataclass(frozen=True)
class Resolved:
    """What ``setup_mudata``'s arguments say about one MuData."""

    modalities: dict[str, str]
    """Modality -> ``mdata.mod`` key, from the ``*_layer`` keys of ``modalities``."""
    layers: dict[str, str | None]
    """Modality -> its counts layer (None: ``.X``)."""
    obs_mod_keys: dict[str, str | None]
    """Obs argument (``batch_key``, ...) -> the ``mdata.mod`` key whose obs holds it (None: ``mdata.obs``)."""


def resolve(mdata: MuData, setup_args: Mapping, *, modalities: Mapping[str, str] | None = None) -> Resolved:
    """Read ``setup_mudata``'s arguments (scvi-tools' form) into modality -> mod key, layers and obs sources.

    ``modalities`` (modality -> mod key) overrides the one derived from ``setup_args`` (a trained model's own).
    """
    mdata = _checks.check_mudata(mdata)
    by_argument = setup_args.get("modalities")
    if by_argument is None:
        by_argument = {LAYER_ARGUMENTS[m]: key for m, key in default_modalities(mdata).items()}
    if not isinstance(by_argument, Mapping):
        raise TypeError(
            f"modalities={by_argument!r}: pass a dict from setup_mudata's argument names to keys of mdata.mod, e.g. "
            "modalities={'rna_layer': 'rna', 'protein_layer': 'prot', 'batch_key': 'rna'}."
        )
    known = [*LAYER_ARGUMENTS.values(), *OBS_ARGUMENTS]
    unknown = [name for name in by_argument if name not in known]
    if unknown:
        raise ValueError(
            f"modalities has the unknown key {unknown[0]!r}; its keys are setup_mudata's argument names {known}, "
            f"each mapped to a key of mdata.mod (which has {list(mdata.mod)}), e.g. "
            "modalities={'rna_layer': 'rna', 'protein_layer': 'prot'}."
        )
    mod_keys = {m: by_argument[arg] for m, arg in LAYER_ARGUMENTS.items() if by_argument.get(arg) is not None}
    if modalities is None and not mod_keys:
        raise ValueError(
            f"modalities={dict(by_argument)} names no modality; map at least one of "
            f"{list(LAYER_ARGUMENTS.values())} to a key of mdata.mod (which has {list(mdata.mod)}), "
            "e.g. modalities={'rna_layer': 'rna'}."
        )
    for modality, argument in LAYER_ARGUMENTS.items():
        layer = setup_args.get(argument)
        if modalities is None and layer is not None and modality not in mod_keys:
            raise ValueError(
                f"{argument}={layer!r} is given, but modalities={dict(by_argument)} does not map {argument!r} to a key "
                f"of mdata.mod (which has {list(mdata.mod)}); add {argument!r}: <that key> to modalities, or drop "
                f"{argument}."
            )
    obs_mod_keys = {name: by_argument.get(name) for name in OBS_ARGUMENTS}
    for name, mod_key in obs_mod_keys.items():
        if mod_key is not None and mod_key not in mdata.mod:
            raise KeyError(
                f"mdata.mod has no {mod_key!r} (modalities={{{name!r}: {mod_key!r}}}); "
                f"mdata.mod has {list(mdata.mod)}; map {name!r} to one of those, "
                "or leave it out of modalities to read it from mdata.obs."
            )
    return Resolved(
        modalities=dict(modalities if modalities is not None else mod_keys),
        layers={m: setup_args.get(LAYER_ARGUMENTS[m]) for m in MODALITIES},
        obs_mod_keys=obs_mod_keys,
    )


def prepare_from_args(
    mdata: MuData,
    setup_args: Mapping,
    *,
    modalities: Mapping[str, str] | None = None,
    reference_var_names: Mapping[str, pd.Index] | None = None,
) -> Prepared:
    """:func:`prepare` with ``setup_mudata``'s (saved) arguments; see :func:`resolve` for ``modalities``."""
    resolved = resolve(mdata, setup_args, modalities=modalities)
    return prepare(
        mdata,
        modalities=resolved.modalities,
        layers=resolved.layers,
        batch_key=setup_args.get("batch_key"),
        categorical_covariate_keys=setup_args.get("categorical_covariate_keys"),
        dataset_key=resolve_dataset_key(mdata, setup_args.get("dataset_key")),
        size_factor_key=setup_args.get("size_factor_key"),
        continuous_covariate_keys=setup_args.get("continuous_covariate_keys"),
        obs_mod_keys=resolved.obs_mod_keys,
        reference_var_names=reference_var_names,
    )


def prepare(
    mdata: MuData,
    *,
    modalities: Mapping[str, str] | None,
    layers: Mapping[str, str | None] | None,
    batch_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
    dataset_key: str | None,
    size_factor_key: str | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    obs_mod_keys: Mapping[str, str | None] | None = None,
    reference_var_names: Mapping[str, pd.Index] | None = None,
) -> Prepared:
    """Validate the user's MuData and build its aligned view. Raises before anything is registered.

    ``modalities`` maps modality -> ``mdata.mod`` key, ``layers`` modality -> counts layer; ``obs_mod_keys`` says which
    modality's obs holds each obs argument (missing or None: ``mdata.obs``).

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
    layers = _checks.check_layers(mdata, present, {m: v for m, v in (layers or {}).items() if m in present})
    _checks.check_backed_mosaic(mdata, present, layers)
    modalities = {m: modalities[m] for m in MODALITIES if m in modalities}
    for modality, mod_key in present.items():
        if not MODALITIES[modality].counts:
            continue
        matrix = _checks.count_matrix(mdata, mod_key, layers[modality])
        adata = mdata.mod[mod_key]
        totals = _checks.check_counts(
            matrix, mod_key=mod_key, layer=layers[modality], modality=modality, layers=list(adata.layers)
        )
        if reference_var_names is None:  # setting up training data, not new data for a trained model
            _checks.warn_empty(totals, mod_key=mod_key, adata=adata, layer=layers[modality])
    _checks.check_every_cell_measured(mdata, present)
    obs = pd.DataFrame(index=mdata.obs_names.copy())
    source = dict(obs_mod_keys or {})
    for argument, key, column in (
        ("batch_key", batch_key, _align.BATCH_COLUMN),
        ("dataset_key", dataset_key, _align.PANEL_COLUMN),
    ):
        values = "0"
        if key is not None:
            values = _checks.check_obs_key(mdata, key, argument=argument, mod_key=source.get(argument)).to_numpy()
        obs[column] = values
    argument = "categorical_covariate_keys"
    for key in _checks.check_covariates(categorical_covariate_keys, argument=argument):
        values = _checks.check_obs_key(mdata, key, argument=argument, mod_key=source.get(argument))
        obs[_align.covariate_column(key)] = values.to_numpy()
    argument = "continuous_covariate_keys"
    keys = _checks.check_covariates(continuous_covariate_keys, argument=argument)
    for key, values in _checks.check_continuous(mdata, keys, argument=argument, mod_key=source.get(argument)).items():
        obs[_align.continuous_column(key)] = values
    if size_factor_key is not None:
        obs[_align.SIZE_FACTOR_COLUMN] = _size_factors(mdata, present, size_factor_key, source.get("size_factor_key"))
    empty = {absent[m]: reference_var_names[absent[m]] for m in absent}
    aligned = _align.build_aligned(mdata, present, layers, obs, empty=empty)
    for modality in absent:
        obs[_align.has_column(modality)] = np.float32(0.0)
        aligned.obs[_align.has_column(modality)] = obs[_align.has_column(modality)].to_numpy()

    panels = list(pd.Categorical(obs[_align.PANEL_COLUMN]).categories)
    batches = list(pd.Categorical(obs[_align.BATCH_COLUMN]).categories)
    masks = _align.feature_masks(mdata, present, panels)
    for modality, mod_key in present.items():
        if MODALITIES[modality].zero_is_unmeasured and reference_var_names is None:
            rows = np.flatnonzero(obs[_align.has_column(modality)].to_numpy() > 0)
            masks[modality] = _checks.panel_masks_from_zeros(
                aligned.mod[mod_key].X[rows],
                masks[modality],
                pd.Categorical(obs[_align.PANEL_COLUMN], categories=panels).codes[rows],
                panels,
                mod_key=mod_key,
                var_names=aligned.mod[mod_key].var_names,
            )
    return Prepared(
        aligned=aligned,
        modalities=modalities,
        feature_masks=masks,
        batch_has_modality=_align.batch_has_modality(obs, batches, modalities),
    )


def _size_factors(mdata: MuData, present: Mapping[str, str], key: str, mod_key: str | None) -> np.ndarray:
    """The RNA size factor of each cell of ``mdata`` (1 for cells without RNA, whose value is never used)."""
    if "rna" not in present:
        raise ValueError(
            f"size_factor_key={key!r} gives the RNA library size, but no RNA modality is registered; map "
            "'rna_layer' in modalities, or pass size_factor_key=None."
        )
    values = _checks.check_continuous(mdata, [key], argument="size_factor_key", mod_key=mod_key)[key]
    measured = mdata.obs_names.isin(mdata.mod[present["rna"]].obs_names)
    where = "mdata.obs" if mod_key is None else f"mdata.mod[{mod_key!r}].obs"
    return _checks.check_size_factors(values, measured, key=key, where=where)


def resolve_dataset_key(mdata: MuData, dataset_key: str | None) -> str | None:
    """``dataset_key=None`` means ``'dataset'`` when :func:`pengster.data.mosaic` wrote it, else no datasets."""
    if dataset_key is None and DATASET_KEY in mdata.obs.columns:
        return DATASET_KEY
    return dataset_key
