from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.data import load_ml100k
from shared.download import download_kg, download_ml100k, fetch
from shared.errors import DataError


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.endswith("truncated.bin"):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def _zip_of(tiny_data: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in ("u.data", "u.item", "u.genre"):
            zf.write(tiny_data / "ml-100k" / f, f"ml-100k/{f}")
        for f in ("u.user", "u.occupation", "u.info"):
            zf.writestr(f"ml-100k/{f}", "")
    return buf.getvalue()


def test_ml100k_download_verified_and_unpacked(http_root: tuple[str, Path], tiny_data: Path, tmp_path: Path) -> None:
    url, root = http_root
    blob = _zip_of(tiny_data)
    (root / "ml-100k.zip").write_bytes(blob)
    out = tmp_path / "fresh"
    download_ml100k(out, url=f"{url}/ml-100k.zip", md5=hashlib.md5(blob).hexdigest())
    assert len(load_ml100k(out, kg_version=None).interactions) == 120


def test_wrong_checksum_leaves_nothing(http_root: tuple[str, Path], tiny_data: Path, tmp_path: Path) -> None:
    url, root = http_root
    (root / "ml-100k.zip").write_bytes(_zip_of(tiny_data))
    out = tmp_path / "fresh"
    out.mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        download_ml100k(out, url=f"{url}/ml-100k.zip", md5="0" * 32)
    assert list(out.iterdir()) == []


def test_truncated_download_is_an_error(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = http_root
    with pytest.raises(DataError, match="truncated download"):
        fetch(f"{url}/truncated.bin", tmp_path / "t.bin", digest="0")
    assert not (tmp_path / "t.bin").exists()
    assert not list(tmp_path.glob(".t.bin*"))


def test_missing_file_names_url(http_root: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = http_root
    with pytest.raises(DataError, match="404"):
        fetch(f"{url}/nope.zip", tmp_path / "n.zip", digest="0")


def test_kg_download_checks_sha256(
    http_root: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.download as dl

    url, root = http_root
    commit = "c0ffee"
    files = {"enriched.csv": b"item_id::string,abstract::string\n1,x\n", "map.csv": b"item_id::string,URI::string\n"}
    d = root / commit / "datasets" / "ml-100k" / "processed"
    d.mkdir(parents=True)
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    sums = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    monkeypatch.setitem(dl.KG_FILES, "test-version", (commit, sums))
    target = download_kg(tmp_path / "data", "test-version", base_url=url)
    assert (target / "enriched.csv").read_bytes() == files["enriched.csv"]
    monkeypatch.setitem(dl.KG_FILES, "bad-version", (commit, {"map.csv": "f" * 64}))
    with pytest.raises(DataError, match="checksum mismatch"):
        download_kg(tmp_path / "data2", "bad-version", base_url=url)
    assert not (tmp_path / "data2" / "kg" / "frankgraphbench-ml100k-dbpedia" / "bad-version" / "map.csv").exists()
