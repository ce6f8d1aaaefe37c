"""Align a query MuData's modalities and features to a trained reference JointVAE."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scvi.model.base import BaseModelClass

from pengster._constants import DATASET_KEY, MEASURED_VARM_KEY, REGISTRY_KEYS
from pengster.io._reference import ReferenceSummary, describe_reference

from ._checks import check_mudata
from ._frames import padded_csr
from ._prepare import default_modalities

logger = logging.getLogger(__name__)

REPORT_UNS_KEY = "pengster_prepare_query"
"""``mdata.uns`` key of the prepared query where :func:`prepare_query` records what it did."""
QUERY_SUFFIX = "-query"
"""Appended to a query dataset name that is also a reference dataset name."""
_LOW_OVERLAP = 0.8


def _summary(reference) -> ReferenceSummary:
    return reference if isinstance(reference, ReferenceSummary) else describe_reference(reference)


def _dataset_key(summary: ReferenceSummary) -> str:
    return summary.setup_args.get("dataset_key") or DATASET_KEY


def _query_datasets(query: md.MuData, key: str, reference_panels: list[str]) -> tuple[pd.Series, dict[str, str]]:
    """Each query cell's dataset name, renamed where it is a reference dataset too (a new panel needs a new name)."""
    values = query.obs[key].astype(str) if key in query.obs.columns else pd.Series("query", index=query.obs_names)
    renamed = {name: f"{name}{QUERY_SUFFIX}" for name in values.unique() if name in reference_panels}
    return values.replace(renamed), renamed


def _query_keys(query: md.MuData, summary: ReferenceSummary, modalities: Mapping[str, str] | None) -> dict[str, str]:
    if modalities is not None:
        unknown = set(modalities) - set(summary.modalities)
        if unknown:
            raise ValueError(
                f"modalities names {sorted(unknown)}, which the reference was not trained on; the reference has "
                f"{list(summary.modalities)}: map only those, e.g. modalities={{'rna': 'rna'}}."
            )
        for modality, key in modalities.items():
            if key not in query.mod:
                raise KeyError(f"query.mod has no {key!r} (modalities[{modality!r}]); query.mod has {list(query.mod)}.")
        return dict(modalities)
    keys = {m: key for m, key in summary.modalities.items() if key in query.mod}
    if not keys:
        guessed = default_modalities(query) if any(k in query.mod for k in ("rna", "gex", "RNA")) else {}
        keys = {m: key for m, key in guessed.items() if m in summary.modalities}
    if not keys:
        raise KeyError(
            f"query.mod has {list(query.mod)}, none of the reference's modalities {summary.modalities}; rename the "
            f"query's modalities or pass modalities={{'rna': <query key>, ...}}."
        )
    return keys


def _measured(adata: ad.AnnData, reference_names: pd.Index, datasets: pd.Series, renamed: dict) -> pd.DataFrame:
    """Bool frame (reference features x query datasets): the features each query dataset measured."""
    present = reference_names.isin(adata.var_names)
    own = adata.varm[MEASURED_VARM_KEY] if MEASURED_VARM_KEY in adata.varm else None
    columns = {}
    for name in pd.unique(datasets.loc[datasets.index.intersection(adata.obs_names)]):
        original = next((old for old, new in renamed.items() if new == name), name)
        column = present.copy()
        if isinstance(own, pd.DataFrame) and original in own.columns:
            column &= own[original].reindex(reference_names, fill_value=False).to_numpy().astype(bool)
        columns[name] = column
    return pd.DataFrame(columns, index=reference_names.copy())


def _align_modality(adata: ad.AnnData, reference_names: pd.Index, measured: pd.DataFrame) -> ad.AnnData:
    columns = reference_names.get_indexer(adata.var_names)
    keep = np.flatnonzero(columns >= 0)
    source = adata[:, keep] if len(keep) < adata.n_vars else adata

    def aligned(matrix) -> object:
        dtype = np.result_type(matrix.dtype, np.float32) if matrix.dtype.kind == "f" else matrix.dtype
        return padded_csr(matrix, columns[keep], len(reference_names), dtype=dtype)

    out = ad.AnnData(
        X=aligned(source.X) if source.X is not None else None,
        obs=adata.obs.copy(),
        var=pd.DataFrame(index=reference_names.copy()),
        layers={name: aligned(source.layers[name]) for name in adata.layers},
    )
    out.varm[MEASURED_VARM_KEY] = measured
    return out


def prepare_query(
    query: md.MuData,
    reference: BaseModelClass | str | Path,
    *,
    modalities: Mapping[str, str] | None = None,
) -> md.MuData:
    """Align a query's modalities and features to a trained reference :class:`~pengster.model.JointVAE`.

    For every reference modality that the query has, the query's features are reordered to the reference's,
    features the reference has but the query lacks are added as zero columns and marked unmeasured in
    ``varm['measured']`` (the model masks them out, as in a mosaic), and features the reference does not know are
    dropped. A reference modality missing from the query is left out (the query model predicts it). The query's
    datasets become new datasets (gene panels) of the model: they keep their names from the reference's
    ``dataset_key`` column, or are called ``'query'``, and a name the reference uses gets ``'-query'`` appended.

    Parameters
    ----------
    query
        The new data: raw counts in the layers the reference was set up with, and the reference's ``batch_key``
        and ``categorical_covariate_keys`` columns in ``query.obs``. It is not modified.
    reference
        The trained reference model, or the folder it was saved to.
    modalities
        Modality -> key of ``query.mod``, when the query names its modalities differently from the reference.

    Returns
    -------
    A new MuData with the reference's modality keys and features, ``varm['measured']`` (features x query
    datasets) in every modality, the dataset column in ``obs``, and a report of what was done in
    ``uns['pengster_prepare_query']``: per modality the number of reference features (``n_reference``), the query
    features found (``n_found``), the ``missing`` reference features (zero-padded and masked) and the ``dropped``
    query features; the reference modalities the query lacks (``absent``), the query modalities the reference
    lacks (``ignored``), ``renamed_datasets`` and ``n_cells_dropped`` (cells with none of the kept modalities).
    The same is logged at INFO level, and a modality with under 80% of the reference's features warns.

    Examples
    --------
    >>> query = pengster.data.prepare_query(query, reference_model)
    >>> query.uns["pengster_prepare_query"]["rna"]["missing"][:5]
    """
    query = check_mudata(query)
    summary = _summary(reference)
    keys = _query_keys(query, summary, modalities)
    args = summary.setup_args
    for key in [args.get("batch_key"), *(args.get("categorical_covariate_keys") or [])]:
        if key is not None and key not in query.obs.columns:
            raise KeyError(
                f"query.obs has no column {key!r}, which the reference was set up with; add it, e.g. "
                f"query.obs[{key!r}] = 'my_run' (a new value is a new batch), or pull it from a modality with "
                "query.pull_obs()."
            )
    dataset_key = _dataset_key(summary)
    datasets, renamed = _query_datasets(query, dataset_key, summary.categories(REGISTRY_KEYS.PANEL))
    ignored = [key for key in query.mod if key not in keys.values()]
    report: dict = {"dataset_key": dataset_key, "renamed_datasets": renamed, "absent": [], "ignored": ignored}
    if ignored:
        logger.info("prepare_query: query.mod %s are not modalities of the reference and are left out", ignored)
    mods = {}
    for modality, reference_key in summary.modalities.items():
        if modality not in keys:
            report["absent"].append(modality)
            continue
        adata = query.mod[keys[modality]]
        names = summary.var_names[reference_key]
        if not adata.var_names.is_unique:
            raise ValueError(
                f"query.mod[{keys[modality]!r}].var_names has duplicates; make them unique first "
                f"(query.mod[{keys[modality]!r}].var_names_make_unique())."
            )
        shared = names.isin(adata.var_names)
        if not shared.any():
            raise ValueError(
                f"query.mod[{keys[modality]!r}] shares no features with the reference's {reference_key!r} (e.g. "
                f"{names[:3].tolist()} vs {adata.var_names[:3].tolist()}); use the same feature names (e.g. gene "
                "symbols in both), or leave this modality out of the query."
            )
        if shared.mean() < _LOW_OVERLAP:
            warnings.warn(
                f"query.mod[{keys[modality]!r}] has only {int(shared.sum())} of the reference's {len(names)} "
                f"{modality} features; the other {int((~shared).sum())} are masked, and mapping may be poor.",
                UserWarning,
                stacklevel=2,
            )
        mods[reference_key] = _align_modality(adata, names, _measured(adata, names, datasets, renamed))
        report[modality] = {
            "query_key": keys[modality],
            "n_reference": len(names),
            "n_found": int(shared.sum()),
            "missing": names[~shared].tolist(),
            "dropped": adata.var_names[~adata.var_names.isin(names)].tolist(),
        }
        logger.info(
            "prepare_query: %s: %d of %d reference features found, %d missing (zero-padded and masked), "
            "%d unknown query features dropped",
            modality,
            report[modality]["n_found"],
            len(names),
            len(report[modality]["missing"]),
            len(report[modality]["dropped"]),
        )
    if report["absent"]:
        logger.info("prepare_query: the query has no %s; the query model predicts it", report["absent"])
    if renamed:
        logger.info("prepare_query: query datasets renamed to stay apart from the reference's: %s", renamed)
    with md.set_options(pull_on_update=False):
        prepared = md.MuData(mods)
        obs = query.obs.copy()
        obs[dataset_key] = pd.Categorical(datasets.to_numpy())
        prepared.obs = obs.loc[prepared.obs_names]
        order = query.obs_names[query.obs_names.isin(prepared.obs_names)]
        if not prepared.obs_names.equals(order):
            prepared = prepared[order].copy()
    report["n_cells_dropped"] = int(query.n_obs - prepared.n_obs)
    if report["n_cells_dropped"]:
        logger.info(
            "prepare_query: %d query cells have none of the reference's modalities and are left out",
            report["n_cells_dropped"],
        )
    prepared.uns[REPORT_UNS_KEY] = report
    return prepared


def is_prepared(query: md.MuData, reference: BaseModelClass | str | Path | ReferenceSummary) -> bool:
    """True when ``query`` has the reference's features and datasets of its own, as :func:`prepare_query` makes."""
    summary = _summary(reference)
    present = {key: names for key, names in summary.var_names.items() if key in query.mod}
    if not present or any(not query.mod[key].var_names.equals(names) for key, names in present.items()):
        return False
    key = _dataset_key(summary)
    if key not in query.obs.columns:
        return False
    return not query.obs[key].astype(str).isin(summary.categories(REGISTRY_KEYS.PANEL)).any()
