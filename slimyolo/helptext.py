"""``--help`` text from docstrings: every command's description says what its module's or class's docstring says."""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :mod:`x`, :class:`~a.B` → the name


def plain_text(docstring: str | None) -> str:
    """The first paragraph of a docstring as one plain sentence for --help: reST roles and literals unwrapped."""
    paragraph = (docstring or "").strip().split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    return _ROLE.sub(r"\1", text).replace("``", "")
