"""Readers of public multimodal file formats."""

from __future__ import annotations

import logging
from os import PathLike

import anndata as ad
import mudata as md
import pandas as pd

logger = logging.getLogger(__name__)

_FEATURE_TYPES_TO_KEY = {"GEX": "rna", "ATAC": "atac", "ADT": "prot"}


def _modality_key(adata: ad.AnnData, path: str | PathLike) -> str:
    if "feature_types" not in adata.var.columns:
        raise ValueError(
            f"{path!s}: var has no 'feature_types' column (columns are {adata.var.columns.tolist()}); "
            "read_openproblems() needs the NeurIPS 2021 h5ad files, whose var['feature_types'] is GEX, ATAC or ADT."
        )
    types = pd.unique(adata.var["feature_types"].astype(str))
    if len(types) != 1 or types[0] not in _FEATURE_TYPES_TO_KEY:
        raise ValueError(
            f"{path!s}: var['feature_types'] is {list(types)}; expected exactly one of "
            f"{list(_FEATURE_TYPES_TO_KEY)} (GEX -> 'rna', ATAC -> 'atac', ADT -> 'prot')."
        )
    return _FEATURE_TYPES_TO_KEY[types[0]]


def _shared_obs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Columns present in every frame with identical values (NaN equal to NaN)."""
    first, *others = frames
    columns = [
        column
        for column in first.columns
        if all(column in other.columns and first[column].equals(other[column]) for other in others)
    ]
    return first.loc[:, columns].copy()


def read_openproblems(rna_h5ad: str | PathLike, mod2_h5ad: str | PathLike) -> md.MuData:
    """Read a NeurIPS 2021 (Open Problems) h5ad pair into a :class:`~mudata.MuData`.

    Parameters
    ----------
    rna_h5ad
        The ``*.output_rna.h5ad`` file (GEX features).
    mod2_h5ad
        The ``*.output_mod2.h5ad`` file: ATAC peaks (multiome) or ADT antibodies (CITE-seq).

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'atac'`` or ``'prot'``, chosen from ``var['feature_types']``.
    Each modality keeps its obs, var, X (normalized) and layers (``'counts'``: raw counts) as stored.
    ``mdata.obs`` holds the obs columns that both files share with identical values
    (``cell_type``, ``batch``, ``is_train``, ...), without modality prefix.

    Raises
    ------
    ValueError
        When feature types are not recognised, both files hold the same modality, or the files do
        not have the same cells in the same order.
    """
    adatas = {}
    for path in (rna_h5ad, mod2_h5ad):
        adata = ad.read_h5ad(path)
        key = _modality_key(adata, path)
        if key in adatas:
            raise ValueError(
                f"{rna_h5ad!s} and {mod2_h5ad!s} both hold {key!r} features; pass one GEX file and one ATAC/ADT file."
            )
        adatas[key] = adata
    if "rna" not in adatas:
        raise ValueError(f"neither {rna_h5ad!s} nor {mod2_h5ad!s} holds GEX features; pass the output_rna.h5ad file.")
    rna, mod2 = (adatas[key] for key in adatas)
    if not rna.obs_names.equals(mod2.obs_names):
        raise ValueError(
            f"{rna_h5ad!s} ({rna.n_obs} cells) and {mod2_h5ad!s} ({mod2.n_obs} cells) do not have the same obs_names "
            "in the same order; pass the two files of one dataset."
        )
    ordered = {"rna": adatas["rna"], **{key: adata for key, adata in adatas.items() if key != "rna"}}
    with md.set_options(pull_on_update=False):
        mdata = md.MuData(ordered)
        mdata.obs = _shared_obs([adata.obs for adata in ordered.values()])
    logger.info("read %s with modalities %s", rna_h5ad, list(ordered))
    return mdata
