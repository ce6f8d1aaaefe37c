"""Read a numpydoc ``Returns`` section as prose; the return type comes from the annotation.

pengster writes types in signatures, not in docstrings (see STYLE.md), so its ``Returns`` sections hold a sentence
("The Axes, one line per key found.") that napoleon would otherwise read as a type name and try to cross-reference.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.ext.napoleon.docstring import NumpyDocstring


def _parse_returns_section(self: NumpyDocstring, section: str) -> list[str]:
    lines = self._dedent(self._consume_to_next_section())
    lines = self._format_block(":returns: ", lines)
    if lines and lines[-1]:
        lines.append("")
    return lines


def setup(app: Sphinx) -> dict[str, bool]:
    """Register the parser of ``Returns`` sections."""
    NumpyDocstring._parse_returns_section = _parse_returns_section
    return {"parallel_read_safe": True, "parallel_write_safe": True}
