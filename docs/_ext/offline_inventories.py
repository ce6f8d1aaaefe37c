"""Intersphinx inventories for an offline build.

CI and the developers' machines cannot reach the documentation sites of our dependencies, so the build cannot fetch
their ``objects.inv``. These are the entries pengster's pages link to, with the addresses the projects publish; they
are written as inventories at build time and given to intersphinx as local files. A name that is missing here shows
up as a nitpicky warning (an error with ``-W``): add it with the page address of the project's own documentation.
"""

from __future__ import annotations

import zlib
from pathlib import Path

# project -> (base URL, {name: (domain:role, path relative to the base URL)})
INVENTORIES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "python": (
        "https://docs.python.org/3/",
        {
            "typing.Any": ("py:data", "library/typing.html#typing.Any"),
            "typing.Literal": ("py:data", "library/typing.html#typing.Literal"),
            "collections.abc.Sequence": ("py:class", "library/collections.abc.html#collections.abc.Sequence"),
            "collections.abc.Mapping": ("py:class", "library/collections.abc.html#collections.abc.Mapping"),
            "collections.abc.Iterator": ("py:class", "library/collections.abc.html#collections.abc.Iterator"),
            "os.PathLike": ("py:class", "library/os.html#os.PathLike"),
            "pathlib.Path": ("py:class", "library/pathlib.html#pathlib.Path"),
            "str": ("py:class", "library/stdtypes.html#str"),
            "int": ("py:class", "library/functions.html#int"),
            "float": ("py:class", "library/functions.html#float"),
            "bool": ("py:class", "library/functions.html#bool"),
            "dict": ("py:class", "library/stdtypes.html#dict"),
            "list": ("py:class", "library/stdtypes.html#list"),
            "tuple": ("py:class", "library/stdtypes.html#tuple"),
            "object": ("py:class", "library/functions.html#object"),
            "None": ("py:data", "library/constants.html#None"),
            "KeyError": ("py:exception", "library/exceptions.html#KeyError"),
            "ValueError": ("py:exception", "library/exceptions.html#ValueError"),
            "TypeError": ("py:exception", "library/exceptions.html#TypeError"),
            "FileNotFoundError": ("py:exception", "library/exceptions.html#FileNotFoundError"),
        },
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        {
            "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
            "numpy.random.Generator": ("py:class", "reference/random/generator.html#numpy.random.Generator"),
        },
    ),
    "pandas": (
        "https://pandas.pydata.org/docs/",
        {
            "pandas.DataFrame": ("py:class", "reference/api/pandas.DataFrame.html#pandas.DataFrame"),
            "pandas.Series": ("py:class", "reference/api/pandas.Series.html#pandas.Series"),
            "pandas.Index": ("py:class", "reference/api/pandas.Index.html#pandas.Index"),
        },
    ),
    "scipy": (
        "https://docs.scipy.org/doc/scipy/",
        {
            "scipy.sparse.csr_matrix": ("py:class", "reference/generated/scipy.sparse.csr_matrix.html"),
            "scipy.sparse.spmatrix": ("py:class", "reference/generated/scipy.sparse.spmatrix.html"),
        },
    ),
    "matplotlib": (
        "https://matplotlib.org/stable/",
        {
            "matplotlib.axes.Axes": ("py:class", "api/_as_gen/matplotlib.axes.Axes.html#matplotlib.axes.Axes"),
            "matplotlib.figure.Figure": ("py:class", "api/_as_gen/matplotlib.figure.Figure.html"),
        },
    ),
    "sklearn": (
        "https://scikit-learn.org/stable/",
        {
            "sklearn.neighbors.KNeighborsClassifier": (
                "py:class",
                "modules/generated/sklearn.neighbors.KNeighborsClassifier.html",
            ),
            "sklearn.metrics.roc_auc_score": ("py:function", "modules/generated/sklearn.metrics.roc_auc_score.html"),
            "sklearn.metrics.average_precision_score": (
                "py:function",
                "modules/generated/sklearn.metrics.average_precision_score.html",
            ),
        },
    ),
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        {
            "torch.Tensor": ("py:class", "tensors.html#torch.Tensor"),
            "torch.nn.Module": ("py:class", "generated/torch.nn.Module.html#torch.nn.Module"),
            "torch.set_num_threads": ("py:function", "generated/torch.set_num_threads.html"),
            "torch.device": ("py:class", "tensor_attributes.html#torch.device"),
            "torch.distributions.distribution.Distribution": (
                "py:class",
                "distributions.html#torch.distributions.distribution.Distribution",
            ),
            "torch.distributions.normal.Normal": ("py:class", "distributions.html#torch.distributions.normal.Normal"),
        },
    ),
    "anndata": (
        "https://anndata.readthedocs.io/en/stable/",
        {
            "anndata.AnnData": ("py:class", "generated/anndata.AnnData.html#anndata.AnnData"),
            "anndata.AnnData.var_names": ("py:attribute", "generated/anndata.AnnData.var_names.html"),
        },
    ),
    "mudata": (
        "https://mudata.readthedocs.io/en/latest/",
        {
            "mudata.MuData": ("py:class", "generated/mudata.MuData.html#mudata.MuData"),
            "mudata.read_h5mu": ("py:function", "generated/mudata.read_h5mu.html#mudata.read_h5mu"),
        },
    ),
    "scanpy": (
        "https://scanpy.readthedocs.io/en/stable/",
        {
            "scanpy.pp.neighbors": ("py:function", "generated/scanpy.pp.neighbors.html#scanpy.pp.neighbors"),
            "scanpy.tl.umap": ("py:function", "generated/scanpy.tl.umap.html#scanpy.tl.umap"),
            "scanpy.pl.umap": ("py:function", "generated/scanpy.pl.umap.html#scanpy.pl.umap"),
        },
    ),
    "scvi": (
        "https://docs.scvi-tools.org/en/stable/",
        {
            "scvi.model.SCVI": ("py:class", "api/reference/scvi.model.SCVI.html#scvi.model.SCVI"),
            "scvi.model.SCVI.train": ("py:method", "api/reference/scvi.model.SCVI.html#scvi.model.SCVI.train"),
            "scvi.model.SCVI.load": ("py:method", "api/reference/scvi.model.SCVI.html#scvi.model.SCVI.load"),
            "scvi.model.TOTALVI": ("py:class", "api/reference/scvi.model.TOTALVI.html#scvi.model.TOTALVI"),
            "scvi.model.MULTIVI": ("py:class", "api/reference/scvi.model.MULTIVI.html#scvi.model.MULTIVI"),
            "scvi.model.PEAKVI": ("py:class", "api/reference/scvi.model.PEAKVI.html#scvi.model.PEAKVI"),
            "scvi.model.base.BaseModelClass": (
                "py:class",
                "api/reference/scvi.model.base.BaseModelClass.html#scvi.model.base.BaseModelClass",
            ),
            "scvi.model.base.BaseModelClass.save": (
                "py:method",
                "api/reference/scvi.model.base.BaseModelClass.html#scvi.model.base.BaseModelClass.save",
            ),
            "scvi.model.base.BaseModelClass.history": (
                "py:property",
                "api/reference/scvi.model.base.BaseModelClass.html#scvi.model.base.BaseModelClass.history",
            ),
            "scvi.model.base.ArchesMixin": (
                "py:class",
                "api/reference/scvi.model.base.ArchesMixin.html#scvi.model.base.ArchesMixin",
            ),
            "scvi.model.base.ArchesMixin.load_query_data": (
                "py:method",
                "api/reference/scvi.model.base.ArchesMixin.html#scvi.model.base.ArchesMixin.load_query_data",
            ),
            "scvi.data.AnnDataManager": (
                "py:class",
                "api/reference/scvi.data.AnnDataManager.html#scvi.data.AnnDataManager",
            ),
            "scvi.data.AnnDataManager.register_fields": (
                "py:method",
                "api/reference/scvi.data.AnnDataManager.html#scvi.data.AnnDataManager.register_fields",
            ),
            "scvi.data.AnnDataManager.transfer_fields": (
                "py:method",
                "api/reference/scvi.data.AnnDataManager.html#scvi.data.AnnDataManager.transfer_fields",
            ),
            "scvi.utils.attrdict": ("py:class", "api/reference/scvi.utils.attrdict.html#scvi.utils.attrdict"),
            "scvi.module.base.BaseModuleClass": (
                "py:class",
                "api/reference/scvi.module.base.BaseModuleClass.html#scvi.module.base.BaseModuleClass",
            ),
            "scvi.module.base.LossOutput": (
                "py:class",
                "api/reference/scvi.module.base.LossOutput.html#scvi.module.base.LossOutput",
            ),
        },
    ),
}

# The modules where objects are defined, mapped to those where their projects document them.
PUBLIC_MODULES = {
    "pandas.core.frame": "pandas",
    "pandas.core.series": "pandas",
    "pandas.core.indexes.base": "pandas",
    "mudata._core.mudata": "mudata",
    "anndata._core.anndata": "anndata",
    "matplotlib.axes._axes": "matplotlib.axes",
    "matplotlib.figure": "matplotlib.figure",
    "scvi.module.base._base_module": "scvi.module.base",
    "scvi.model.base._base_model": "scvi.model.base",
    "scvi.data._manager": "scvi.data",
    "scvi.utils._attrdict": "scvi.utils",
    "numpy.random._generator": "numpy.random",
}


def public_module(module: str) -> str:
    """The module under which a project documents objects defined in ``module``."""
    return PUBLIC_MODULES.get(module, module)


def write_inventories(out_dir: Path) -> dict[str, tuple[str, str]]:
    """Write one ``<project>.inv`` per project into ``out_dir``; return an ``intersphinx_mapping``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (base_url, entries) in INVENTORIES.items():
        header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
        header += "# The remainder of this file is compressed using zlib.\n"
        lines = "".join(f"{name} {role} 1 {path} -\n" for name, (role, path) in sorted(entries.items()))
        path = out_dir / f"{project}.inv"
        path.write_bytes(header.encode() + zlib.compress(lines.encode()))
        mapping[project] = (base_url, str(path))
    return mapping
