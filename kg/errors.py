"""Errors the knowledge graph raises; each message names the bad id, file or line.

Only the web layer turns these into HTTP statuses (an unknown item is a 404 there).
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx


class KGError(Exception):
    """Base class of every error raised by :mod:`kg`."""


class UnknownItemError(KGError, KeyError, nx.NodeNotFound):
    """An item id is not in the knowledge graph.

    A ``KeyError`` (like a missing mapping key) and an ``nx.NodeNotFound`` (like networkx's own
    path functions), so callers may catch either.
    """

    def __init__(self, item_id: object, where: str = "the knowledge graph") -> None:
        self.item_id = item_id
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:  # KeyError would quote its message otherwise
        return f"item {self.item_id!r} is not in {self.where}"


class InvalidItemError(KGError, ValueError):
    """An item record has a missing or ill-typed field, or an unknown relation."""

    def __init__(self, item_id: object, message: str) -> None:
        self.item_id = item_id
        super().__init__(f"item {item_id!r}: {message}")


class DuplicateItemError(InvalidItemError):
    """An item id is already in the knowledge graph (or twice in a catalogue)."""

    def __init__(self, item_id: object) -> None:
        super().__init__(item_id, "already in the knowledge graph")


class NoNeighboursError(KGError, LookupError):
    """An item shares no entity with any item that has a vector, so it has no KG prior."""

    def __init__(self, item_id: object) -> None:
        self.item_id = item_id
        super().__init__(f"item {item_id!r} shares no KG entity with any item that has a vector")


class KGFileError(KGError, ValueError):
    """A saved graph file is missing, malformed or inconsistent (names the file and line)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class KGVersionError(KGFileError):
    """A saved graph file has another format version than this code reads."""


class CatalogueMismatchError(KGFileError):
    """A saved graph was built from another item catalogue than the one in use."""
