"""Public multimodal datasets: read from ``$PENGSTER_DATA_DIR`` or downloaded (pooch, sha256) into a cache."""

from __future__ import annotations

from ._datasets import bmmc_cite, bmmc_multiome, mop_snareseq2, pbmc_1k_protein, pbmc_cite_mosaic

__all__ = ["bmmc_cite", "bmmc_multiome", "mop_snareseq2", "pbmc_1k_protein", "pbmc_cite_mosaic"]
