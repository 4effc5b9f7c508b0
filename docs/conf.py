"""Sphinx configuration for the grassbundle / llm-adapter documentation.

Built by ``make docs`` (warnings are errors).  The gallery scripts under
``examples/plot_*.py`` run during the build; sphinx-gallery caches their output
in ``auto_examples/`` and re-runs a script only when it changes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

os.environ.setdefault("MPLBACKEND", "Agg")

import grassbundle
import llm_adapter

project = "grassbundle"
author = "the grassbundle developers"
copyright = "2026, the grassbundle developers"
version = release = grassbundle.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "argparse_doc",
    "bench_results",
    "public_api",
    "module_refs",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "**.md5"]
templates_path: list[str] = []
nitpicky = False
default_role = "math"
# keep "--option" and quotes as typed (the CLI reference shows argparse text)
smartquotes = False

# -- autodoc / numpydoc --------------------------------------------------------
autodoc_typehints = "none"  # the numpydoc "Parameters" lines carry types and shapes
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_class_members_toctree = False

# -- MyST: used only to include benchmarks/results/*.md -------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 0
suppress_warnings = ["myst.header"]  # the results files start at their own heading level

# -- sphinx-gallery ------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": [str(REPO / "examples")],
    "gallery_dirs": ["auto_examples"],
    # Only plot_*.py scripts belong to the gallery; examples/demo.py is the
    # `make demo` script and is neither executed nor rendered here.
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(demo|__init__)\.py$",
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reference_url": {},
    "write_computation_times": False,
    "show_signature": False,
}

# -- HTML ------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"grassbundle {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
html_show_sourcelink = False

# The public names the API pages must document (checked by the public_api
# extension during the build and by tests/test_docs.py).
public_api_modules = ["grassbundle", "llm_adapter", "grassbundle.theorems"]

del grassbundle, llm_adapter
