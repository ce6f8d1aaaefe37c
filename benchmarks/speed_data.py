"""Synthetic multiome and CITE-seq data at atlas scale for the speed benchmark (never evidence of accuracy).

Sparsity as asked in issue #5: 4,000 genes at about 8% nonzero, 20k or 100k peaks at about 4% nonzero, 134 proteins.
Cells belong to 10 types; each type opens (expresses) its own block of features three times more often than the
rest, so the data has structure to learn. Nonzero positions are drawn as Bernoulli processes through geometric gaps:
one random number per nonzero, no dense (cells x features) array, unique column indices per row.

Large sets are written chunk by chunk to an h5mu (CSR on disk), so generating 1M cells x 100k peaks needs a few GB of
host memory, and are read back with ``backed=True``.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

N_TYPES = 10
N_BATCHES = 2
GENE_DENSITY = 0.08
PEAK_DENSITY = 0.04
_HIGH = 3.0


def _positions(rng: np.random.Generator, n_rows: int, length: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Bernoulli(density) positions in ``[0, length)`` for each row: (per-row padded positions, valid mask)."""
    expected = length * density
    width = int(np.ceil(expected + 6 * np.sqrt(expected) + 8))
    gaps = rng.geometric(density, size=(n_rows, width)).astype(np.int32)
    positions = np.cumsum(gaps, axis=1, dtype=np.int32) - 1
    return positions, positions < length


def structured_csr(
    rng: np.random.Generator, cell_type: np.ndarray, n_features: int, density: float, *, counts: bool
) -> sparse.csr_matrix:
    """CSR (cells x features): each type's block at ``3 * density``, the rest at a density keeping the mean."""
    block = n_features // N_TYPES
    low = (density * n_features - _HIGH * density * block) / (n_features - block)
    n_rows = len(cell_type)
    high_pos, high_ok = _positions(rng, n_rows, block, _HIGH * density)
    low_pos, low_ok = _positions(rng, n_rows, n_features - block, low)
    start = (cell_type.astype(np.int32) * block)[:, None]
    high_pos = high_pos + start
    low_pos = low_pos + block * (low_pos >= start)
    columns = np.concatenate([high_pos, low_pos], axis=1)
    valid = np.concatenate([high_ok, low_ok], axis=1)
    indices = columns[valid]
    indptr = np.concatenate([[0], np.cumsum(valid.sum(1), dtype=np.int64)])
    if counts:
        values = rng.geometric(0.55, size=len(indices)).astype(np.float32)
    else:
        values = np.ones(len(indices), dtype=np.float32)
    return sparse.csr_matrix((values, indices, indptr), shape=(n_rows, n_features))


def _proteins(rng: np.random.Generator, cell_type: np.ndarray, n_proteins: int) -> np.ndarray:
    background = rng.gamma(2.0, 5.0, size=n_proteins)
    signal = rng.gamma(1.0, 30.0, size=(N_TYPES, n_proteins)) * (rng.random((N_TYPES, n_proteins)) < 0.3)
    return rng.poisson(background + signal[cell_type]).astype(np.float32)


def _obs(rng: np.random.Generator, n_cells: int, start: int) -> pd.DataFrame:
    cell_type = rng.integers(N_TYPES, size=n_cells)
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical(
                [f"type{t}" for t in cell_type], categories=[f"type{t}" for t in range(N_TYPES)]
            ),
            "batch": pd.Categorical(
                [f"b{b}" for b in rng.integers(N_BATCHES, size=n_cells)], categories=[f"b{b}" for b in range(N_BATCHES)]
            ),
        },
        index=[f"cell{start + i}" for i in range(n_cells)],
    )


def multiome(n_cells: int, n_peaks: int, *, n_genes: int = 4000, seed: int = 0) -> md.MuData:
    """In-memory MuData with ``rna`` (counts) and ``atac`` (binary peaks), obs ``cell_type`` and ``batch``."""
    rng = np.random.default_rng(seed)
    obs = _obs(rng, n_cells, 0)
    types = obs["cell_type"].cat.codes.to_numpy()
    rna = structured_csr(rng, types, n_genes, GENE_DENSITY, counts=True)
    atac = structured_csr(rng, types, n_peaks, PEAK_DENSITY, counts=False)
    return _mudata({"rna": rna, "atac": atac}, obs, n_genes=n_genes, n_peaks=n_peaks)


def cite(n_cells: int, *, n_genes: int = 4000, n_proteins: int = 134, seed: int = 0) -> md.MuData:
    """In-memory MuData with ``rna`` (counts) and ``prot`` (dense counts)."""
    rng = np.random.default_rng(seed)
    obs = _obs(rng, n_cells, 0)
    types = obs["cell_type"].cat.codes.to_numpy()
    rna = structured_csr(rng, types, n_genes, GENE_DENSITY, counts=True)
    return _mudata({"rna": rna, "prot": _proteins(rng, types, n_proteins)}, obs, n_genes=n_genes, n_peaks=0)


def _var(prefix: str, n: int) -> pd.DataFrame:
    return pd.DataFrame(index=[f"{prefix}{i}" for i in range(n)])


def _mudata(matrices: dict, obs: pd.DataFrame, *, n_genes: int, n_peaks: int) -> md.MuData:
    prefixes = {"rna": "gene", "atac": "peak", "prot": "protein"}
    mods = {
        key: ad.AnnData(X=matrix, obs=pd.DataFrame(index=obs.index), var=_var(prefixes[key], matrix.shape[1]))
        for key, matrix in matrices.items()
    }
    mdata = md.MuData(mods)
    for column in obs.columns:
        mdata.obs[column] = obs[column].to_numpy()
    return mdata


def write_multiome_h5mu(
    path: str | Path, n_cells: int, n_peaks: int, *, n_genes: int = 4000, seed: int = 0, chunk: int = 20_000
) -> Path:
    """Write a multiome h5mu of ``n_cells`` chunk by chunk (CSR on disk) and return its path.

    Built as a small MuData written by mudata, whose ``X`` groups are then grown in place: the file is a regular
    h5mu that ``mudata.read_h5mu(path, backed=True)`` opens.
    """
    path = Path(path)
    ad.settings.allow_write_nullable_strings = True
    rng = np.random.default_rng(seed)
    obs = _obs(rng, n_cells, 0)
    types = obs["cell_type"].cat.codes.to_numpy()
    shapes = {"rna": n_genes, "atac": n_peaks}
    empty = {key: sparse.csr_matrix((n_cells, n), dtype=np.float32) for key, n in shapes.items()}
    _mudata(empty, obs, n_genes=n_genes, n_peaks=n_peaks).write_h5mu(path)
    with h5py.File(path, "r+") as handle:
        groups = {key: handle[f"mod/{key}/X"] for key in shapes}
        for group in groups.values():
            for name in ("indices", "data"):
                del group[name]
            group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
            group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
            del group["indptr"]
            group.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
            group["indptr"][0] = 0
        spans = [(start, min(start + chunk, n_cells)) for start in range(0, n_cells, chunk)]
        jobs = [(seed, index, types[a:b], shapes) for index, (a, b) in enumerate(spans)]
        with multiprocessing.get_context("fork").Pool(max(1, min(8, (os.cpu_count() or 2) - 1))) as pool:
            for (start, stop), blocks in zip(spans, pool.imap(_chunk, jobs), strict=True):
                for key, block in blocks.items():
                    group = groups[key]
                    offset = group["indices"].shape[0]
                    for name, values in (("indices", block.indices), ("data", block.data)):
                        group[name].resize((offset + len(values),))
                        group[name][offset:] = values
                    group["indptr"][start + 1 : stop + 1] = block.indptr[1:].astype(np.int64) + offset
    return path


def _chunk(job) -> dict[str, sparse.csr_matrix]:
    seed, index, types, shapes = job
    rng = np.random.default_rng([seed, index])
    return {
        key: structured_csr(rng, types, n_features, GENE_DENSITY if key == "rna" else PEAK_DENSITY, counts=key == "rna")
        for key, n_features in shapes.items()
    }
