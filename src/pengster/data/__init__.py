"""Build the MuData that pengster models: readers, mosaics of datasets, and synthetic data."""

from __future__ import annotations

from ._mosaic import mosaic
from ._read import read_openproblems
from ._synthetic import synthetic_mosaic

__all__ = ["mosaic", "read_openproblems", "synthetic_mosaic"]
