"""Read a numpydoc ``Returns`` section as a description; the return type comes from the annotation.

pengster writes types in signatures, not in docstrings (see STYLE.md), so its ``Returns`` sections hold only a
sentence ("The Axes, one line per key found."), written where numpydoc expects a type line. Indenting that sentence
makes it the description of an unnamed, untyped return value: sphinx-autodoc-typehints then puts the annotation in
front of it, and the page shows one "Returns" entry, "Axes -- The Axes, one line per key found.".
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx

_UNDERLINE = set("-=~_*+#")


def _is_section_start(lines: list[str], index: int) -> bool:
    if index + 1 >= len(lines) or not lines[index].strip():
        return False
    underline = lines[index + 1].strip()
    return bool(underline) and set(underline) <= _UNDERLINE and len(set(underline)) == 1


def indent_returns_description(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Indent the text of a ``Returns`` section without a type line (in place), so that it reads as a description."""
    if what not in {"function", "method"}:
        return
    for index in range(len(lines) - 1):
        if lines[index].strip().lower() == "returns" and _is_section_start(lines, index):
            break
    else:
        return
    start = index + 2
    end = start
    while end < len(lines) and not _is_section_start(lines, end):
        end += 1
    text = [line for line in lines[start:end] if line.strip()]
    # a section that starts indented already has a type line: leave it as numpydoc wrote it
    if text and not text[0].startswith(" "):
        lines[start:end] = ["    " + line if line.strip() else line for line in lines[start:end]]


def setup(app: Sphinx) -> dict[str, bool]:
    """Connect the handler before sphinx-autodoc-typehints (499) and napoleon (500) read the docstring."""
    app.connect("autodoc-process-docstring", indent_returns_description, priority=498)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
