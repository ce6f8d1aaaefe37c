"""Sphinx configuration of the pengster documentation."""

from __future__ import annotations

import shutil
import sys
from datetime import date
from pathlib import Path

import pengster

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

from benchmark_tables import write_benchmark_tables  # noqa: E402
from offline_inventories import public_module, write_inventories  # noqa: E402

# The notebooks live in ../tutorials (committed executed); Sphinx only reads files under docs/, so copy them in.
# docs/tutorials/ is a build product (see .gitignore).
_TUTORIALS = HERE / "tutorials"
shutil.rmtree(_TUTORIALS, ignore_errors=True)
_TUTORIALS.mkdir()
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(notebook, _TUTORIALS / notebook.name)

# The Benchmarks page includes tables written from the committed results (docs/_ext/benchmark_tables.py).
write_benchmark_tables(ROOT / "benchmarks" / "results", HERE / "_build" / "benchmark_tables")

# The benchmarks' own description (benchmarks/README.md) and the result pages measured with 0.2 or that chose its
# defaults are pages of the site, at the same relative paths, so that the links between them work here as they do in
# the source tree. speed.md (its GPU rows are 0.1.0's; the Benchmarks page shows its CPU table) and query.md (0.1.0)
# stay in the source tree. docs/benchmarks/ is a build product (see .gitignore).
SITE_RESULTS = [
    "accuracy", "tune", "training_length", "training_curve", "readout", "differential", "differential_scale", "reported_scale",
    "reported_scale_validation",
]  # fmt: skip
_BENCHMARKS = HERE / "benchmarks"
shutil.rmtree(_BENCHMARKS, ignore_errors=True)
(_BENCHMARKS / "results").mkdir(parents=True)
shutil.copy2(ROOT / "benchmarks" / "README.md", _BENCHMARKS / "README.md")
for name in SITE_RESULTS:
    page = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text()
    # in their wide tables a value and its sd ("0.648 ± 0.005") and a task ("RNA->protein") stay on one line
    page = page.replace(" ± ", "\u00a0±\u00a0").replace("->", "\u2011>")
    (_BENCHMARKS / "results" / f"{name}.md").write_text(page)

project = "pengster"
author = "pengster developers"
copyright = f"{date.today().year}, {author}"
version = release = pengster.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served with the site: equations render without a CDN
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "sphinx_design",
    "typed_returns",
    "sphinxcontrib.bibtex",
]

# .rst first: autosummary writes its stub pages with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
nitpicky = True
# names the type hints produce that no inventory documents: the `...` of tuple[str, ...], scipy's private CSR class
nitpick_ignore = [("py:data", "Ellipsis"), ("py:class", "scipy.sparse._csr.csr_matrix")]

# -- notebooks: committed executed on the real data, never executed by the docs build
nb_execution_mode = "off"
nb_merge_streams = True
# warnings and progress messages of the libraries (stderr) stay in the notebooks but not on the pages
nb_output_stderr = "remove"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference
autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_default_options = {"inherited-members": False}
autoclass_content = "class"
# read by docs/_templates/autosummary/class.rst: the tutorials a class page links to, and the inherited members it
# documents (a user of JointVAE looks for `history` and `is_trained` on its page, not on scvi-tools' site)
autosummary_context = {
    "class_tutorials": {
        "pengster.model.JointVAE": [
            ("tutorials/01_snareseq2", "RNA + ATAC"),
            ("tutorials/02_cite_seq", "RNA + protein"),
            ("tutorials/03_mosaic", "a mosaic of multiome and CITE-seq"),
            ("tutorials/04_save_load_query", "saving, loading and reference mapping"),
            ("tutorials/05_differential", "differential expression and accessibility"),
        ]
    },
    # the inherited members a user of the class calls; scvi-tools' registry plumbing stays on scvi-tools' site
    "inherited_documented": {
        "pengster.model.JointVAE": (
            "scvi-tools' BaseModelClass and VAEMixin",
            [
                "adata",
                "device",
                "history",
                "is_trained",
                "summary_string",
                "test_indices",
                "train_indices",
                "validation_indices",
                "to_device",
                "get_elbo",
                "get_reconstruction_error",
            ],
        )
    },
}


def _pengster_members(cls: type) -> list[str]:
    """Public members defined by pengster's own classes in ``cls``'s MRO (the class and its mixins)."""
    return sorted(
        {name for klass in cls.__mro__ if klass.__module__.startswith("pengster") for name in vars(klass)}
        - {name for name in dir(cls) if name.startswith("_")}
    )


# members of pengster's own mixins are the class's own on its page
autosummary_context["pengster_defined"] = {"pengster.model.JointVAE": _pengster_members(pengster.model.JointVAE)}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
typehints_defaults = "braces"
always_use_bars_union = True
# The return type comes from the annotation and goes into the "Returns" entry ("Axes -- The Axes, one line per
# key"), not into a second "Return type" block. sphinx-autodoc-typehints marks numpydoc "Returns" sections that have
# no type line, so that napoleon reads their text as a description rather than as a type name.
typehints_document_rtype = True
typehints_use_rtype = False
napoleon_use_rtype = False

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
bibtex_default_style = "plain"

# Offline: the inventories are written from docs/_ext/offline_inventories.py (see there why).
intersphinx_mapping = write_inventories(HERE / "_build" / "inventories")
typehints_fixup_module_name = public_module
# a function-valued setting only disables caching of the environment between builds
suppress_warnings = ["config.cache"]

# -- HTML
html_theme = "sphinx_book_theme"
html_title = "pengster"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_js_files = ["break_names.js"]
html_favicon = "_static/favicon.svg"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
