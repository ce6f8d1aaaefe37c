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

from offline_inventories import public_module, write_inventories  # noqa: E402

# The notebooks live in ../tutorials (committed executed); Sphinx only reads files under docs/, so copy them in.
# docs/tutorials/ is a build product (see .gitignore).
_TUTORIALS = HERE / "tutorials"
shutil.rmtree(_TUTORIALS, ignore_errors=True)
_TUTORIALS.mkdir()
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(notebook, _TUTORIALS / notebook.name)

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
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
typehints_defaults = "braces"
always_use_bars_union = True
typehints_document_rtype = True

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
html_theme_options = {
    "repository_url": "https://github.com/pengster/pengster",
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_show_sourcelink = False
