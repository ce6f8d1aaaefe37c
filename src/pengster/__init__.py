"""pengster: one latent space for RNA, ATAC and surface protein across multiome and CITE-seq data."""

from . import data, dataloaders, datasets, distributions, metrics, model, module, nn, pl, tl, train
from ._version import __version__

__all__ = [
    "__version__",
    "data",
    "dataloaders",
    "datasets",
    "distributions",
    "metrics",
    "model",
    "module",
    "nn",
    "pl",
    "tl",
    "train",
]
