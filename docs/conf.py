"""
Sphinx configuration of the dmq documentation site.

``make docs`` builds it into ``build/docs`` with warnings as errors; the pages
are the Markdown files of this folder (read by MyST) and the API reference,
which autodoc takes from the docstrings of the public modules.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "dmq"
author = "the dmq authors"
copyright = "the dmq authors"
_version = re.search(r'^__version__ = "([^"]+)"', (ROOT / "dmq" / "__init__.py").read_text(encoding="utf-8"), re.M)
release = version = _version.group(1) if _version else "unknown"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "settings_table",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# MyST: ``{directive}`` fences and ``(label)=`` targets; heading anchors so
# that pages can link to each other's sections as ``page.md#section``.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: members in source order, signatures without the type noise (the
# types are in the annotations, shown in the description).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"dmq {release}"
html_static_path: list[str] = []
