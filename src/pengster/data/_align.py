"""The internal, fully paired view of a user's mosaic MuData that scvi-tools registers.

scvi-tools fields index every modality with the rows of ``mdata.obs``, so a mosaic (modalities holding different
cells) cannot be registered as it is, and registering writes ``_scvi_*`` columns and ``uns`` keys into the object.
Instead we build an aligned MuData: every modality has all cells in ``mdata.obs`` order (cells that did not measure
it are empty sparse rows, flagged by ``has_<modality>``). A modality that already covers all cells in order is passed
by reference, never copied (an in-memory CSC matrix is converted to CSR once). The user's object is never written to.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import mudata
import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from pengster._constants import MEASURED_VARM_KEY

BATCH_COLUMN = "_pengster_batch"
PANEL_COLUMN = "_pengster_panel"


SIZE_FACTOR_COLUMN = "_pengster_size_factor"


def continuous_column(key: str) -> str:
    """Obs column of the aligned MuData holding a continuous covariate."""
    return f"_pengster_cont_{key}"


def has_column(modality: str) -> str:
    """Obs column of the aligned MuData flagging the cells that measured ``modality``."""
    return f"_pengster_has_{modality}"


def covariate_column(key: str) -> str:
    """Obs column of the aligned MuData holding a categorical covariate."""
    return f"_pengster_cov_{key}"


def _aligned_matrix(matrix, positions: np.ndarray, n_obs: int):
    if len(positions) == n_obs and np.array_equal(positions, np.arange(n_obs)):
        # rows are read by cell; the training loader would convert CSC to CSR anyway, so do it once here
        return matrix.tocsr() if sparse.issparse(matrix) and matrix.format == "csc" else matrix
    if hasattr(matrix, "to_memory"):  # a backed sparse dataset: only the aligned in-memory copy can be re-indexed
        matrix = matrix.to_memory()
    elif not sparse.issparse(matrix) and not isinstance(matrix, np.ndarray):  # a backed dense h5py dataset
        matrix = matrix[()]
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    placement = sparse.csr_matrix(
        (np.ones(len(positions), dtype=np.float32), (positions, np.arange(len(positions)))),
        shape=(n_obs, len(positions)),
    )
    return (placement @ matrix).tocsr()


def build_aligned(
    mdata: MuData,
    modalities: Mapping[str, str],
    layers: Mapping[str, str | None],
    obs: pd.DataFrame,
    *,
    empty: Mapping[str, pd.Index] | None = None,
) -> MuData:
    """Return the aligned MuData (same modality keys as ``mdata``) with ``obs`` as its obs columns.

    ``empty`` (mod key -> features) adds modalities that no cell of ``mdata`` measured.
    """
    mods = {}
    for mod_key, var_names in (empty or {}).items():
        mods[mod_key] = AnnData(
            X=sparse.csr_matrix((mdata.n_obs, len(var_names)), dtype=np.float32),
            obs=pd.DataFrame(index=mdata.obs_names.copy()),
            var=pd.DataFrame(index=pd.Index(var_names).copy()),
        )
    for modality, mod_key in modalities.items():
        adata = mdata.mod[mod_key]
        matrix = adata.X if layers[modality] is None else adata.layers[layers[modality]]
        positions = mdata.obs_names.get_indexer(adata.obs_names)
        mods[mod_key] = AnnData(
            X=_aligned_matrix(matrix, positions, mdata.n_obs),
            obs=pd.DataFrame(index=mdata.obs_names.copy()),
            var=pd.DataFrame(index=adata.var_names.copy()),
        )
        obs[has_column(modality)] = np.isin(np.arange(mdata.n_obs), positions).astype(np.float32)
    with warnings.catch_warnings():
        # a protein named like a gene (CD4) is a duplicated var name across modalities; this internal view never uses
        # the joint var, and the user's own MuData, which has the same names, already told them
        warnings.filterwarnings("ignore", message="var_names are not unique", category=UserWarning)
        with mudata.set_options(pull_on_update=False):  # the aligned modalities carry no obs columns to pull
            aligned = MuData(mods)
    for column in obs.columns:
        aligned.obs[column] = obs[column].to_numpy()
    return aligned


def feature_masks(mdata: MuData, modalities: Mapping[str, str], panels: list[str]) -> dict[str, np.ndarray]:
    """Modality -> float array (n_panels, n_features): which features each panel (dataset) measured.

    Read from ``mdata.mod[key].varm['measured']`` (written by :func:`pengster.data.mosaic`); all ones when absent.
    A panel that measured none of a modality's features (it has no such cells) gets all ones, which only matters
    for the normalisation of predictions.
    """
    masks = {}
    for modality, mod_key in modalities.items():
        adata = mdata.mod[mod_key]
        mask = np.ones((len(panels), adata.n_vars), dtype=np.float32)
        measured = adata.varm[MEASURED_VARM_KEY] if MEASURED_VARM_KEY in adata.varm else None
        if measured is not None:
            measured = (
                pd.DataFrame(measured, index=adata.var_names) if not isinstance(measured, pd.DataFrame) else measured
            )
            for index, panel in enumerate(panels):
                if panel in measured.columns:
                    row = _measured_row(measured[panel], mod_key=mod_key, panel=panel)
                    mask[index] = row if row.any() else 1.0
        masks[modality] = mask
    return masks


def _measured_row(column: pd.Series, *, mod_key: str, panel: str) -> np.ndarray:
    """One panel's column of ``varm['measured']`` as 0/1 float32.

    Any other value is an error: it would weight the feature's likelihood, not say whether it was measured.
    """
    row = column.to_numpy()
    other = ~np.isin(row, (0, 1))
    if other.any():
        examples = dict(zip(column.index[other][:3], row[other][:3].tolist(), strict=True))
        raise ValueError(
            f"mdata.mod[{mod_key!r}].varm['measured'][{panel!r}] holds values other than True/False "
            f"(e.g. {examples}); it says which features dataset {panel!r} measured. "
            f"Set it to booleans, e.g. mdata.mod[{mod_key!r}].varm['measured'] = <that table> > 0."
        )
    return row.astype(np.float32)


def batch_has_modality(obs: pd.DataFrame, batches: list[str], modalities: Mapping[str, str]) -> np.ndarray:
    """Float array (n_batch, n_modalities): 1 where the batch has cells that measured the modality."""
    table = np.zeros((len(batches), len(modalities)), dtype=np.float32)
    codes = pd.Categorical(obs[BATCH_COLUMN], categories=batches).codes
    for column, modality in enumerate(modalities):
        present = obs[has_column(modality)].to_numpy() > 0
        table[np.unique(codes[present & (codes >= 0)]), column] = 1.0
    return table
