"""Sphinx configuration of ntkflow's documentation site (docs/index.md says why Sphinx).

Build, warnings as errors (what .ci/run does):

    pip install ".[docs]"
    python -m sphinx -W --keep-going -b html docs build/docs-html

The API reference imports the installed ntkflow (its compiled core included), so build it
in the environment the package is installed in.
"""

from __future__ import annotations

import ntkflow

project = "ntkflow"
author = "the ntkflow developers"
copyright = "the ntkflow developers (BSD-3-Clause)"
release = version = ntkflow.__version__

extensions = [
    "myst_parser",           # Markdown pages: the theory, tutorials, getting started
    "sphinx.ext.autodoc",    # the API reference from the docstrings
    "sphinx.ext.napoleon",   # which are numpydoc style
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/README.md is the note for readers of the repository, not a page of the site.
exclude_patterns = ["README.md", "_build", "carry_over.txt"]

# MyST: ```python blocks stay plain code (they are run by tests/test_docs_code.py, not by
# the build); heading anchors let pages link to a section of the theory.
myst_heading_anchors = 3

# autodoc + napoleon (numpydoc sections). Members in source order, as the modules present
# them; type hints in the signature only, where the docstrings already describe them.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
# Signatures as the source spells them: "NDArray[np.float64]" rather than its expansion
# "numpy.ndarray[tuple[typing.Any, ...], numpy.dtype[numpy.float64]]". (Not the unions
# Data, Training, Init: Sphinx 9 prints an alias inside "X | None" as TypeAliasForwardRef;
# nor "Path", which is also pathlib's.)
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
autodoc_type_aliases = {
    name: name
    for name in ("NDArray", "ArrayLike", "Array", "FloatArray", "BoolArray")
}
autodoc_class_signature = "mixed"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# "Attributes" sections as :ivar: fields: dataclass fields are documented there, and a
# second ".. attribute::" entry per field would be a duplicate-description warning.
napoleon_use_ivar = True
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"ntkflow {release}"
html_static_path: list[str] = []

# Type fields of the numpydoc sections are shapes such as "(trajectories, times[, outputs])":
# Sphinx tries each word as a cross-reference, and a word that is also an attribute of two
# classes ("outputs": Dataset.outputs, Result.outputs) is reported as ambiguous. Those
# words are dimension names, not references; only that ambiguity warning is silenced
# (a reference to nothing is not a warning here: nitpicky is off).
suppress_warnings = ["ref.python"]
