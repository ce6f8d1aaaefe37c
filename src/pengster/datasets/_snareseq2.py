"""Rebuild ``mop_snareseq2_dev.h5mu`` from the public scMoMaT files and check it against a pinned content hash."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zipfile
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pooch
import scipy.sparse as sp

from ._download import retrieve

logger = logging.getLogger(__name__)

FILE_NAME = "mop_snareseq2_dev.h5mu"
"""Name of the assembled file, in ``$PENGSTER_DATA_DIR`` and in the download cache."""

RAW_BASE_URL = "https://raw.githubusercontent.com/PeterZZQ/scMoMaT"
"""Root of the raw files; a file's URL is ``{RAW_BASE_URL}/{commit}/{RAW_FOLDER}/{name}``."""

RAW_FOLDER = "data/real/MOp_5batches"
SCMOMAT_COMMIT = "39fd0972d9e84e2cfbc9c1a8b3f67359b8b21ff3"
RAW_FILES: dict[str, str] = {
    "GxC1.npz": SCMOMAT_COMMIT,  # genes x cells RNA counts, scipy sparse
    "RxC1.npz": SCMOMAT_COMMIT,  # regions x cells ATAC counts, scipy sparse
    "meta_c1.csv": SCMOMAT_COMMIT,  # one row per cell, the column order of GxC1 and RxC1
    "genes.txt": "cfd129f5cfd804aac3a2e5376eb94512b75b07f3",
    "regions.txt": "4a932e46490081b2c9bb80ff919a50c9494fbcbc",
}
"""Raw file name -> the scMoMaT commit it is downloaded from."""

LIBRARIES = ("09A", "09B", "09C", "09D", "09E", "09F", "09G", "09H")
"""The 8 of the 12 SNARE-seq2 libraries in meta_c1 that the dev file keeps (a smaller file for tests)."""

CONTENT_SHA256 = "530871c6960973f69ab0e87b1a2985338c72d211709a27b99a6bc1bf43116057"
"""sha256 of :func:`content_sha256` of ``mop_snareseq2_dev.h5mu`` as the pengster maintainers built it."""

SOURCE = f"PeterZZQ/scMoMaT {RAW_FOLDER} batch 1 (GxC1/RxC1/meta_c1), commit {SCMOMAT_COMMIT}"
"""Written to ``mdata.uns['source']``."""

# scMoMaT's own relabelling of batch 1 (test/demo_mop_5batches.py): SNARE-seq2 clusters -> shared cell types
CELL_TYPE: dict[str, str] = {
    "E2Rasgrf2": "L2/3",
    "E3Rmst": "L2/3",
    "E3Rorb": "L2/3",
    "E4Il1rapl2": "L4/5",
    "E4Thsd7a": "L4/5",
    "E5Galnt14": "L4/5",
    "E5Parm1": "L4/5",
    "E5Sulf1": "L4/5",
    "E5Tshz2": "L4/5",
    "E6Tle4": "L6",
    "Ast": "Astro",
    "OliM": "Oligo",
    "OliI": "Oligo",
    "OPC": "OPC",
    "InV": "CGE",
    "InS": "Sst",
    "InP": "Pvalb",
    "InN": "Npy",
    "Mic": "MGC",
    "Clau": "Clau",
    "Endo": "Endo",
    "Mis": "Mis",
    "Peri": "Peri",
}


def _hash_frame(digest: hashlib._Hash, frame: pd.DataFrame) -> None:
    digest.update("\x1f".join(map(str, frame.index)).encode())
    for name, column in frame.items():
        digest.update(f"\x1e{name}:{column.dtype}".encode())
        if isinstance(column.dtype, pd.CategoricalDtype):
            digest.update("\x1f".join(map(str, column.cat.categories)).encode())
            values = column.cat.codes.to_numpy(dtype=np.int64)
        else:
            values = column.to_numpy()
        if values.dtype == object:
            digest.update("\x1f".join(map(str, values)).encode())
        else:
            digest.update(np.ascontiguousarray(values).tobytes())


def content_sha256(mdata: md.MuData) -> str:
    """sha256 of what a MuData holds, independent of how HDF5 laid it out on disk.

    Covers the global ``obs`` and, per modality in order, ``X`` (format, shape, dtype, data, indices, indptr),
    ``obs`` and ``var`` (index, columns, dtypes, categories and codes). Two files with the same hash hold the
    same cells, features, counts and labels.

    Parameters
    ----------
    mdata
        MuData whose modalities hold a scipy sparse ``X``.

    Returns
    -------
    Hexadecimal sha256.
    """
    digest = hashlib.sha256()
    _hash_frame(digest, mdata.obs)
    for key, adata in mdata.mod.items():
        matrix = adata.X
        if not sp.issparse(matrix):
            raise TypeError(f"mdata.mod[{key!r}].X is {type(matrix).__name__}; content_sha256 expects scipy sparse")
        digest.update(f"\x1d{key}:{matrix.format}:{matrix.shape}:{matrix.dtype}".encode())
        for part in (matrix.data, matrix.indices, matrix.indptr):
            digest.update(f"{part.dtype}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        _hash_frame(digest, adata.obs)
        _hash_frame(digest, adata.var)
    return digest.hexdigest()


def _read_lines(path: Path) -> list[str]:
    # not pandas.read_csv: it would turn gene symbols such as "NA" or "NaN" into missing values
    return [line for line in Path(path).read_text().splitlines() if line]


def _cells_by_features(path: Path, *, n_features: int, n_cells: int, what: str) -> sp.csr_matrix:
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a scipy sparse .npz ({error}); it starts with {path.read_bytes()[:40]!r}. "
            f"Delete it and download again."
        ) from error
    if matrix.shape != (n_features, n_cells):
        raise ValueError(
            f"{path.name} has shape {matrix.shape}; scMoMaT stores {what} x cells, expected "
            f"({n_features}, {n_cells}) from the feature list and meta_c1.csv. The raw files do not belong together: "
            f"delete them and download again."
        )
    cells = sp.csr_matrix(matrix.T, dtype=np.float32)
    cells.eliminate_zeros()
    cells.sort_indices()
    cells.indices = cells.indices.astype(np.int32, copy=False)
    cells.indptr = cells.indptr.astype(np.int32, copy=False)
    return cells


def _natural_key(chrom: str) -> tuple[int, int | str]:
    number = chrom.removeprefix("chr")
    return (0, int(number)) if number.isdigit() else (1, number)


def _region_var(regions: list[str]) -> pd.DataFrame:
    parts = [re.fullmatch(r"(.+)_(\d+)_(\d+)", region) for region in regions]
    bad = [region for region, match in zip(regions, parts, strict=True) if match is None]
    if bad:
        raise ValueError(f"regions.txt has names that are not chrom_start_end, e.g. {bad[:3]}")
    chrom = [match.group(1) for match in parts]
    return pd.DataFrame(
        {
            "chrom": pd.Categorical(chrom, categories=sorted(set(chrom), key=_natural_key)),
            "start": np.array([int(match.group(2)) for match in parts], dtype=np.int64),
            "end": np.array([int(match.group(3)) for match in parts], dtype=np.int64),
        },
        index=pd.Index(regions),
    )


def _obs(meta: pd.DataFrame) -> pd.DataFrame:
    missing = {"Batch", "Barcode", "Ident"} - set(meta.columns)
    if missing:
        raise ValueError(f"meta_c1.csv lacks the columns {sorted(missing)}; it has {list(meta.columns)}")
    unknown = sorted(set(meta["Ident"]) - set(CELL_TYPE))
    if unknown:
        raise ValueError(f"meta_c1.csv 'Ident' has labels with no cell type in CELL_TYPE: {unknown}")
    return pd.DataFrame(
        {
            "batch": meta["Batch"].astype(str).astype("category"),
            "barcode": meta["Barcode"].astype(str).astype("category"),
            "cell_type_fine": meta["Ident"].astype(str).astype("category"),
            "cell_type": meta["Ident"].map(CELL_TYPE).astype("category"),
        },
        index=pd.Index(meta.index.astype(str)),
    )


def build_mop_snareseq2(raw_dir: Path | str) -> md.MuData:
    """Assemble the SNARE-seq2 dev MuData from scMoMaT's raw files.

    Cells are the rows of ``meta_c1.csv`` from libraries :data:`LIBRARIES`, in file order; ``GxC1``/``RxC1``
    (features x cells) are transposed to cells x features, float32 CSR. ``cell_type_fine`` is meta's ``Ident``,
    ``cell_type`` its scMoMaT relabelling (:data:`CELL_TYPE`); atac ``var`` has ``chrom``, ``start``, ``end``
    parsed from ``regions.txt``. Categories of the global ``obs`` are those of all 12 libraries; each
    modality's ``obs`` keeps only the categories its cells use.

    Parameters
    ----------
    raw_dir
        Folder holding the files named in :data:`RAW_FILES`.

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'atac'``; not yet checked against :data:`CONTENT_SHA256`.
    """
    raw_dir = Path(raw_dir)
    absent = [name for name in RAW_FILES if not (raw_dir / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{raw_dir} lacks the scMoMaT files {absent}")
    meta = pd.read_csv(raw_dir / "meta_c1.csv", index_col=0)
    genes = _read_lines(raw_dir / "genes.txt")
    regions = _read_lines(raw_dir / "regions.txt")
    obs = _obs(meta)
    keep = obs["batch"].isin(LIBRARIES).to_numpy()
    if not keep.any():
        raise ValueError(f"meta_c1.csv has no cells of the libraries {LIBRARIES}; its batches are {set(meta['Batch'])}")
    n_cells = len(meta)
    rna_x = _cells_by_features(raw_dir / "GxC1.npz", n_features=len(genes), n_cells=n_cells, what="genes")
    atac_x = _cells_by_features(raw_dir / "RxC1.npz", n_features=len(regions), n_cells=n_cells, what="regions")
    kept_obs = obs.loc[keep]
    modality_obs = kept_obs.apply(lambda column: column.cat.remove_unused_categories())
    rna = ad.AnnData(rna_x[keep], obs=modality_obs.copy(), var=pd.DataFrame(index=pd.Index(genes)))
    atac = ad.AnnData(atac_x[keep], obs=modality_obs.copy(), var=_region_var(regions))
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "atac": atac})
        mdata.obs = kept_obs
    mdata.uns["source"] = SOURCE
    return mdata


def download_mop_snareseq2(*, base_url: str | None = None, cache_dir: Path | str | None = None) -> Path:
    """Download scMoMaT's raw files, assemble ``mop_snareseq2_dev.h5mu`` and verify its content hash.

    Parameters
    ----------
    base_url
        Root that serves ``{commit}/data/real/MOp_5batches/{name}``; ``None`` means :data:`RAW_BASE_URL`
        (raw.githubusercontent.com).
    cache_dir
        Where the raw files and the assembled h5mu are kept; ``None`` means ``pooch.os_cache('pengster')``.
        An h5mu already there is returned as is.

    Returns
    -------
    Path to the assembled h5mu.

    Raises
    ------
    ValueError
        When the assembled MuData's :func:`content_sha256` differs from :data:`CONTENT_SHA256`.
    ConnectionError
        When a raw file cannot be downloaded; the message names ``$PENGSTER_DATA_DIR``.
    """
    base_url = (base_url or RAW_BASE_URL).rstrip("/")
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(pooch.os_cache("pengster"))
    target = cache_dir / FILE_NAME
    if target.is_file():
        logger.info("using the %s assembled earlier in %s", FILE_NAME, cache_dir)
        return target
    raw_dir = cache_dir / "scmomat_mop_5batches"
    for name, commit in RAW_FILES.items():
        # known_hash=None: GitHub could not be reached where this downloader was written, so the raw files' own
        # sha256 are unknown; integrity is checked on the assembled content (CONTENT_SHA256) instead, and pooch
        # logs each downloaded file's sha256.
        retrieve(
            FILE_NAME,
            url=f"{base_url}/{commit}/{RAW_FOLDER}/{name}",
            known_hash=None,
            fname=name,
            path=raw_dir,
            progressbar=False,
        )
    mdata = build_mop_snareseq2(raw_dir)
    digest = content_sha256(mdata)
    if digest != CONTENT_SHA256:
        raise ValueError(
            f"The MuData assembled from {sorted(RAW_FILES)} in {raw_dir} has content sha256 {digest}, but "
            f"{FILE_NAME} has {CONTENT_SHA256}: the files served at {base_url} differ from scMoMaT's at the pinned "
            f"commits. Delete {raw_dir} and retry, or set PENGSTER_DATA_DIR to a folder holding {FILE_NAME}."
        )
    partial = target.with_name(f"{FILE_NAME}.partial")
    mdata.write(partial, compression="gzip")
    os.replace(partial, target)
    logger.info("assembled %s from scMoMaT (content sha256 %s)", target, digest)
    return target
