"""Errors raised where input enters the system; each names what is wrong."""

from __future__ import annotations

from pathlib import Path


class FedxrecError(Exception):
    """Base class of every error fedxrec raises on bad input."""


class DataError(FedxrecError, ValueError):
    """A data file is missing, malformed, truncated or has the wrong checksum.

    The message names the file and, where known, the line.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(FedxrecError, ValueError):
    """A configuration key is unknown or has an invalid value (the key is named)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class CheckpointError(FedxrecError, ValueError):
    """A checkpoint directory is missing, incomplete or damaged."""


class UnknownItemError(FedxrecError, KeyError):
    """An item id is not in the catalogue."""

    def __init__(self, item_id: object) -> None:
        self.item_id = item_id
        super().__init__(f"unknown item id {item_id!r}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return f"unknown item id {self.item_id!r}"
