"""Help texts of the commands, written once as module docstrings."""

from __future__ import annotations


def plain(doc: str) -> str:
    """A docstring as ``--help`` shows it: without the reStructuredText literal marks."""
    return doc.replace("``", "")
