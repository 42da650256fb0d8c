"""JSON-lines store of registered cold-start items, shared by every worker process.

Each line is one item (public catalogue data: title, year, genres, text, entity links) with the
vector and bias it was given and the checkpoint they came from. Appends hold an exclusive
``flock`` and are fsynced; readers follow the file by byte offset, so a worker picks up items
another worker registered by polling :meth:`ColdItemStore.read_new` (one ``stat`` per call).

A deletion (:meth:`ColdItemStore.remove`) rewrites the file atomically (a new file renamed over
the old one) with the item's line replaced by a tombstone ``{"id": ..., "deleted": true}`` that
holds nothing but the id (so the id is never handed out again). Followers notice the new file by
its inode (:meth:`ColdItemStore.rewritten`) and re-read it whole (:meth:`ColdItemStore.read_all`).
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
        self._ino: int | None = None  # inode of the file read so far (None: nothing read yet)

    def _stat(self) -> os.stat_result | None:
        try:
            return self.path.stat()
        except FileNotFoundError:
            return None

    def rewritten(self) -> bool:
        """Whether the file was replaced (a deletion) or removed since it was last read."""
        st = self._stat()
        if self._ino is None:
            return False
        return st is None or st.st_ino != self._ino

    def changed(self) -> bool:
        """Whether the file grew or was replaced since the last read (cheap: one ``stat``)."""
        st = self._stat()
        if st is None:
            return self._ino is not None
        return st.st_size > self._offset or (self._ino is not None and st.st_ino != self._ino)

    def read_all(self) -> list[dict[str, Any]]:
        """Every record of the file, from its start (after :meth:`rewritten`); tombstones included.

        Raises
        ------
        StoreError
            If a complete line is not a JSON object.
        """
        self._offset = self._line = 0
        self._ino = None
        return self.read_new()

    def read_new(self) -> list[dict[str, Any]]:
        """Records appended since the last call (complete lines only).

        Raises
        ------
        StoreError
            If a complete line is not a JSON object.
        """
        if self.rewritten():
            raise StoreError(f"{self.path}: the file was replaced; read it again whole (read_all)")
        if not self.changed():
            return []
        with open(self.path, "rb") as f:
            self._ino = os.fstat(f.fileno()).st_ino
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
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), int) or isinstance(rec["id"], bool):
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
        line = _encode(record)
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if self._ino in (None, st.st_ino) and self._offset == st.st_size - len(line):
            self._offset += len(line)
            self._line += 1
            self._ino = st.st_ino
        if st.st_size == len(line):  # a new file: make the new directory entry durable too
            self._fsync_dir()

    def remove(self, item_id: int) -> bool:
        """Replace ``item_id``'s record by a tombstone, rewriting the file atomically.

        Call inside :meth:`locked`, after syncing (so nothing unread is lost). Returns whether the
        item had a live record. The new file is fsynced before it is renamed over the old one.
        """
        found = False
        out = []
        for rec in self._all_lines():
            if rec["id"] == item_id and not rec.get("deleted"):
                rec = {"id": item_id, "deleted": True}
                found = True
            out.append(rec)
        if not found:
            return False
        data = b"".join(_encode(r) for r in out)
        tmp = self.dir / f".{FILE_NAME}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._fsync_dir()
        self._ino, self._offset, self._line = ino, len(data), len(out)
        return True

    def _all_lines(self) -> list[dict[str, Any]]:
        """Every record, reading the file from its start without moving the follower's position."""
        saved = (self._offset, self._line, self._ino)
        try:
            return self.read_all()
        finally:
            self._offset, self._line, self._ino = saved

    def _fsync_dir(self) -> None:
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
