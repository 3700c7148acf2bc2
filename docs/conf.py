"""Sphinx configuration of s2cube's documentation: `make docs` builds it into docs/_build/html.

The pages are Markdown (MyST): the cube's contract (cube.md), object storage (s3.md), STAC
(stac.md); the CLI reference comes from the click commands (sphinx-click) and the API
reference from the docstrings (numpydoc), one page per module, generated at build time
into api/generated/ (not committed). CI builds it with warnings as errors.
"""

from __future__ import annotations

import s2cube

project = "s2cube"
author = "s2cube contributors"
copyright = "s2cube contributors"
release = s2cube.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_click",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST: anchors for the headings of the Markdown pages, so `cube.md#checksums` links resolve
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: every public module of the package, one page each
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# no network at build time: intersphinx inventories are not fetched (links stay plain text)
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

html_theme = "alabaster"
html_title = f"s2cube {release}"
html_static_path: list[str] = []
