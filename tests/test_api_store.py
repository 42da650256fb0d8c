"""The cold-item store (append, follow, malformed lines) and start-up errors of the service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.api.service import Service, StartupError
from server.api.settings import Settings
from server.api.store import ColdItemStore, StoreError


def test_store_appends_and_followers_read_complete_lines_only(tmp_path: Path) -> None:
    writer, follower = ColdItemStore(tmp_path), ColdItemStore(tmp_path)
    assert not follower.changed() and follower.read_new() == []
    with writer.locked():
        assert writer.read_new() == []
        writer.append({"id": 5, "title": "A"})
    with open(writer.path, "ab") as f:
        f.write(b'{"id": 6, "ti')  # another process is mid-write
    assert follower.read_new() == [{"id": 5, "title": "A"}]
    with open(writer.path, "ab") as f:
        f.write(b'tle": "B"}\n')
    assert follower.read_new() == [{"id": 6, "title": "B"}]
    assert writer.read_new() == [{"id": 6, "title": "B"}]  # the writer skips its own line, not others'
    assert not follower.changed()


@pytest.mark.parametrize("line", [b"not json\n", b'{"title": "no id"}\n', b"[1, 2]\n"])
def test_malformed_store_line_names_file_and_line(tmp_path: Path, line: bytes) -> None:
    store = ColdItemStore(tmp_path)
    store.dir.mkdir(exist_ok=True)
    store.path.write_bytes(json.dumps({"id": 1}).encode() + b"\n" + line)
    with pytest.raises(StoreError, match=r"cold_items.jsonl:2"):
        store.read_new()


def test_damaged_checkpoint_or_missing_data_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="not a checkpoint"):
        Service.load(Settings(checkpoint=tmp_path / "nope", data_dir=tmp_path, state_dir=tmp_path / "s"))
    from api_fixtures import make_checkpoint
    from conftest import write_tiny_ml100k

    data = write_tiny_ml100k(tmp_path / "data")
    ckpt = make_checkpoint(data, "unused-backbone", tmp_path / "ckpt")
    with pytest.raises(StartupError, match="no ml-100k data"):
        Service.load(Settings(checkpoint=ckpt, data_dir=tmp_path / "empty", state_dir=tmp_path / "s"))
    (ckpt / "item_vectors.safetensors").write_bytes(b"garbage")
    with pytest.raises(StartupError, match="checksum mismatch"):
        Service.load(Settings(checkpoint=ckpt, data_dir=data, state_dir=tmp_path / "s"))


def test_remove_rewrites_the_file_atomically_and_followers_notice(tmp_path: Path) -> None:
    writer, follower = ColdItemStore(tmp_path), ColdItemStore(tmp_path)
    with writer.locked():
        writer.append({"id": 5, "title": "A"})
        writer.append({"id": 6, "title": "B"})
    assert [r["id"] for r in follower.read_new()] == [5, 6]
    ino = writer.path.stat().st_ino
    with writer.locked():
        assert writer.read_new() == []
        assert writer.remove(5) and not writer.remove(5) and not writer.remove(77)
    assert writer.path.stat().st_ino != ino  # a new file renamed over the old one
    assert not list(tmp_path.glob(".*.tmp"))
    lines = [json.loads(x) for x in writer.path.read_text().splitlines()]
    assert lines == [{"id": 5, "deleted": True}, {"id": 6, "title": "B"}]
    assert follower.changed() and follower.rewritten()
    with pytest.raises(StoreError, match="replaced"):
        follower.read_new()
    assert follower.read_all() == lines and not follower.changed()
    with writer.locked():  # the writer follows its own rewrite: appends go on from there
        assert writer.read_new() == []
        writer.append({"id": 7, "title": "C"})
    assert follower.read_new() == [{"id": 7, "title": "C"}]
