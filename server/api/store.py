"""Append-only JSON-lines store of registered cold-start items, shared by every worker process.

Each line is one item (public catalogue data: title, year, genres, text, entity links) with the
vector and bias it was given and the checkpoint they came from. Appends hold an exclusive
``flock`` and are fsynced; readers follow the file by byte offset, so a worker picks up items
another worker registered by polling :meth:`ColdItemStore.read_new` (one ``stat`` per call).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "cold_items.jsonl"


class StoreError(ValueError):
    """The store file is unreadable or holds a malformed line (the file and line are named)."""


class ColdItemStore:
    """Follows and appends to ``<state_dir>/cold_items.jsonl``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self._offset = 0
        self._line = 0

    def changed(self) -> bool:
        """Whether the file grew since the last read (cheap: one ``stat``)."""
        try:
            return self.path.stat().st_size > self._offset
        except FileNotFoundError:
            return False

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call (complete lines only).

        Raises
        ------
        StoreError
            If a complete line is not a JSON object.
        """
        if not self.changed():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is left for the next call
        out = []
        for raw in data[:end].splitlines():
            self._line += 1
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise StoreError(f"{self.path}:{self._line}: not valid JSON: {e.msg}") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), int):
                raise StoreError(f"{self.path}:{self._line}: not an item record with an integer 'id'")
            out.append(rec)
        self._offset += end
        return out

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (across processes) while assigning an id and appending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / (FILE_NAME + ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (call inside :meth:`locked`, after :meth:`read_new`)."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._offset == self.path.stat().st_size - len(line):
            self._offset += len(line)
            self._line += 1
        new_file = self.path.stat().st_size == len(line)
        if new_file:  # make the new directory entry durable too
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
