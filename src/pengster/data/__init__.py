"""Build the MuData that pengster models: readers, mosaics of datasets, and synthetic data."""

from __future__ import annotations

from ._mosaic import mosaic
from ._query import prepare_query
from ._read import read_openproblems
from ._synthetic import synthetic_mosaic

__all__ = ["mosaic", "prepare_query", "read_openproblems", "synthetic_mosaic"]
