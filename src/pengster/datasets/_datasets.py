"""Public multimodal datasets, as MuData."""

from __future__ import annotations

import mudata as md

from pengster.data import read_openproblems

from ._fetch import fetch


def _read_h5mu(file_name: str) -> md.MuData:
    with md.set_options(pull_on_update=False):
        return md.read_h5mu(fetch(file_name))


def bmmc_multiome() -> md.MuData:
    """NeurIPS 2021 BMMC multiome starter subset: 500 cells, ``rna`` 600 genes, ``atac`` 600 peaks.

    Read with :func:`~pengster.data.read_openproblems`: X normalized, raw counts in ``layers['counts']``,
    ``obs`` with ``cell_type``, ``batch``, ``is_train``. Taken from ``$PENGSTER_DATA_DIR`` when it holds the
    files, else downloaded from GitHub ``openproblems-bio/neurips2021_multimodal_viash`` (commit edaa87933)
    and checked against its sha256.

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'atac'``.
    """
    prefix = "openproblems_bmmc_multiome_starter"
    return read_openproblems(fetch(f"{prefix}.output_rna.h5ad"), fetch(f"{prefix}.output_mod2.h5ad"))


def bmmc_cite() -> md.MuData:
    """NeurIPS 2021 BMMC CITE-seq starter subset: 600 cells, ``rna`` 1000 genes, ``prot`` 134 antibodies.

    Same reading and sources as :func:`bmmc_multiome`.

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'prot'``.
    """
    prefix = "openproblems_bmmc_cite_starter"
    return read_openproblems(fetch(f"{prefix}.output_rna.h5ad"), fetch(f"{prefix}.output_mod2.h5ad"))


def pbmc_cite_mosaic() -> md.MuData:
    """PBMC CITE-seq mosaic (Hao et al. 2021, built by the MIDAS authors): 1,600 cells of 4 donors.

    ``p1_0`` has RNA only, ``p2_0`` protein only, ``p3_0`` and ``p4_0`` both; ``rna`` 500 genes,
    ``adt`` 224 proteins, counts in X; obs ``batch`` and ``celltype``. Taken from ``$PENGSTER_DATA_DIR``
    when it holds ``pbmc_cite_mosaic_midas.h5mu``, else extracted from the PyPI wheel ``scmidas==0.3.0``
    (``scmidas/data/quickstart_pbmc_mosaic.h5mu``), checked against the wheel's sha256.

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'adt'``.
    """
    return _read_h5mu("pbmc_cite_mosaic_midas.h5mu")


def mop_snareseq2() -> md.MuData:
    """Mouse motor cortex SNARE-seq2 (paired RNA + ATAC), 8 of 12 libraries: 6,968 nuclei.

    ``rna`` 1,677 genes, ``atac`` 25,734 peaks (var: chrom, start, end), counts in X; obs ``batch``,
    ``cell_type`` (15), ``cell_type_fine`` (23). Read from ``$PENGSTER_DATA_DIR/mop_snareseq2_dev.h5mu`` when
    it is there; else GitHub ``PeterZZQ/scMoMaT``'s ``data/real/MOp_5batches/`` files (``GxC1.npz``,
    ``RxC1.npz``, ``meta_c1.csv``, ``genes.txt``, ``regions.txt``; commit 39fd0972) are downloaded into the
    pooch cache and assembled (libraries 09A-09H) by ``build_mop_snareseq2``,
    and the result must match the pinned content sha256 of the maintainers' file.

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'atac'``.

    Raises
    ------
    ValueError
        When the assembled data differ from the pinned content hash.
    """
    return _read_h5mu("mop_snareseq2_dev.h5mu")


def pbmc_1k_protein() -> md.MuData:
    """10x PBMC 1k with TotalSeq-B antibodies: 747 cells, ``rna`` 630 genes, ``adt`` 17 proteins, counts in X.

    No labels. This h5mu has no public download: it is read from ``$PENGSTER_DATA_DIR/pbmc_1k_protein_v3.h5mu``
    only, and was built from GitHub ``openproblems-bio/neurips2021_multimodal_viash``,
    ``resources_test/common/pbmc_1k_protein_v3.*`` (commit a0832a93).

    Returns
    -------
    MuData with modalities ``'rna'`` and ``'adt'``.

    Raises
    ------
    FileNotFoundError
        When ``$PENGSTER_DATA_DIR`` does not hold the file.
    """
    return _read_h5mu("pbmc_1k_protein_v3.h5mu")
