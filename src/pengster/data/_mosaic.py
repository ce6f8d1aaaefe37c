"""Combine datasets measured with different modalities into one mosaic MuData."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from pengster._constants import DATASET_KEY, MEASURED_VARM_KEY

from ._frames import concat_frames, padded_csr

logger = logging.getLogger(__name__)


def _check_inputs(datasets: Mapping[str, md.MuData]) -> None:
    if len(datasets) == 0:
        raise ValueError("mosaic() got an empty mapping; pass {'dataset name': MuData, ...} with at least one dataset.")
    for name, mdata in datasets.items():
        if isinstance(mdata, ad.AnnData):
            raise TypeError(
                f"datasets[{name!r}] is an AnnData, not a MuData; wrap it first, e.g. mudata.MuData({{'rna': adata}})."
            )
        if not isinstance(mdata, md.MuData):
            raise TypeError(f"datasets[{name!r}] is a {type(mdata).__name__}; mosaic() needs a mudata.MuData.")
        if not mdata.obs_names.is_unique:
            duplicated = mdata.obs_names[mdata.obs_names.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"datasets[{name!r}].obs_names has duplicates (e.g. {duplicated}); "
                "make them unique first, e.g. mdata.obs_names_make_unique()."
            )
        for key, adata in mdata.mod.items():
            if not adata.var_names.is_unique:
                duplicated = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
                raise ValueError(
                    f"datasets[{name!r}].mod[{key!r}].var_names has duplicates (e.g. {duplicated}); "
                    f"make them unique first, e.g. mdata.mod[{key!r}].var_names_make_unique()."
                )


def _obs_renamers(datasets: Mapping[str, md.MuData]) -> dict[str, dict[str, str] | None]:
    """Per dataset, the renaming of obs names, or None when the names are already unique across datasets."""
    all_names = pd.Index(np.concatenate([np.asarray(mdata.obs_names) for mdata in datasets.values()]))
    if all_names.is_unique:
        return dict.fromkeys(datasets)
    logger.info("obs_names collide across datasets %s; appending '-<dataset name>' to every obs name.", list(datasets))
    renamers = {name: {obs: f"{obs}-{name}" for obs in mdata.obs_names} for name, mdata in datasets.items()}
    renamed = pd.Index([new for renamer in renamers.values() for new in renamer.values()])
    if not renamed.is_unique:
        raise ValueError(
            "obs_names still collide after appending '-<dataset name>'; rename the cells of the datasets so that "
            "they are unique across datasets."
        )
    return renamers


def _rename(frame: pd.DataFrame, renamer: dict[str, str] | None) -> pd.DataFrame:
    frame = frame.copy()
    if renamer is not None:
        frame.index = pd.Index([renamer[obs] for obs in frame.index])
    return frame


def _global_obs(mdata: md.MuData) -> pd.DataFrame:
    """The dataset-level obs columns: those not pulled in from a modality (``'<mod>:<column>'``)."""
    prefixes = tuple(f"{key}:" for key in mdata.mod)
    columns = [column for column in mdata.obs.columns if not str(column).startswith(prefixes)]
    return mdata.obs.loc[:, columns]


def _merge_modality(key: str, parts: dict[str, ad.AnnData], renamers: dict[str, dict[str, str] | None]) -> ad.AnnData:
    """Stack the cells of one modality over the datasets that measured it, on the union of features."""
    var = concat_frames([adata.var for adata in parts.values()], drop_duplicates=True)
    measured = pd.DataFrame(
        {name: var.index.isin(adata.var_names) for name, adata in parts.items()}, index=var.index.copy()
    )
    layer_sets = [set(adata.layers.keys()) for adata in parts.values()]
    layers = [layer for layer in next(iter(parts.values())).layers.keys() if all(layer in s for s in layer_sets)]
    dropped = sorted(set().union(*layer_sets) - set(layers))
    if dropped:
        warnings.warn(
            f"mosaic(): layers {dropped} of modality {key!r} are not in every dataset that has {key!r} "
            f"({list(parts)}); they are dropped. Add them to every dataset to keep them.",
            UserWarning,
            stacklevel=3,
        )

    def stack(getter: str | None) -> sparse.csr_matrix:
        matrices = [adata.X if getter is None else adata.layers[getter] for adata in parts.values()]
        dtype = np.result_type(*[matrix.dtype for matrix in matrices])
        blocks = []
        for adata, matrix in zip(parts.values(), matrices, strict=True):
            columns = var.index.get_indexer(adata.var_names)
            blocks.append(padded_csr(matrix, columns, len(var), dtype=dtype))
        return sparse.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]

    obs = concat_frames([_rename(adata.obs, renamers[name]) for name, adata in parts.items()])
    merged = ad.AnnData(X=stack(None), obs=obs, var=var)
    for layer in layers:
        merged.layers[layer] = stack(layer)
    merged.varm[MEASURED_VARM_KEY] = measured
    return merged


def mosaic(datasets: Mapping[str, md.MuData], *, dataset_key: str = DATASET_KEY) -> md.MuData:
    """Combine datasets with different modalities into one mosaic :class:`~mudata.MuData`.

    Every modality key found in any dataset (e.g. ``'rna'``, ``'atac'``, ``'prot'``) becomes one
    modality holding only the cells that measured it, on the union of the datasets' features.

    Parameters
    ----------
    datasets
        Dataset name to MuData, e.g. ``{'multiome': multiome, 'cite': cite}``. The inputs are not modified.
    dataset_key
        Column of ``mdata.obs`` that records the dataset of each cell.

    Returns
    -------
    A new MuData with

    - ``mdata.obs``: the union of cells (datasets in the mapping's order), the dataset-level obs
      columns of the inputs (outer join) and ``obs[dataset_key]``, categorical with the mapping's order.
    - ``mdata.mod[key]``: the cells that measured ``key``; ``var`` is the union of features (the first
      dataset's order, then new features appended); ``X`` and every layer present in all these datasets
      as CSR, zero where a dataset did not measure a feature; ``obs`` the modality-level obs.
    - ``mdata.mod[key].varm['measured']``: bool DataFrame (features x datasets having ``key``), True where
      that dataset measured the feature.

    Obs names are kept when unique across datasets; otherwise ``'-<dataset name>'`` is appended to
    every obs name of every dataset. Layers missing from some datasets are dropped with a warning.

    Examples
    --------
    >>> mdata = pengster.data.mosaic({"multiome": multiome, "cite": cite})
    >>> mdata.mod["rna"].varm["measured"].sum()
    """
    _check_inputs(datasets)
    renamers = _obs_renamers(datasets)
    mod_keys = list(dict.fromkeys(key for mdata in datasets.values() for key in mdata.mod))
    modalities = {}
    for key in mod_keys:
        parts = {name: mdata.mod[key] for name, mdata in datasets.items() if key in mdata.mod}
        modalities[key] = _merge_modality(key, parts, renamers)

    obs_frames = []
    for name, mdata in datasets.items():
        frame = _rename(_global_obs(mdata), renamers[name])
        if dataset_key in frame.columns:
            logger.info("datasets[%r].obs already has %r; it is overwritten with the dataset name.", name, dataset_key)
        frame[dataset_key] = name
        obs_frames.append(frame)
    obs = concat_frames(obs_frames)
    obs[dataset_key] = pd.Categorical(obs[dataset_key], categories=list(datasets))

    with md.set_options(pull_on_update=False):
        combined = md.MuData(modalities)
        # MuData orders cells by modality; put them back in the datasets' order.
        combined.obs = obs.loc[combined.obs_names]
        if not combined.obs_names.equals(obs.index):
            combined = combined[obs.index].copy()
    return combined
