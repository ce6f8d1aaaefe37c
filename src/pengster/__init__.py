"""pengster: one latent space for RNA, ATAC and surface protein across multiome and CITE-seq data."""

from importlib.metadata import PackageNotFoundError, version

from . import data, dataloaders, datasets, distributions, metrics, model, module, nn, pl, tl, train

try:
    __version__ = version("pengster")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

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
