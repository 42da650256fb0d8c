"""Fetch the original data files where a machine has the internet, verifying checksums.

Everything is downloaded to a temporary file, verified, and only then moved into place: a wrong
checksum or a truncated download leaves nothing behind. Base URLs can be overridden (tests point
them at a local HTTP server).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from shared.errors import DataError
from shared.io import atomic_dir, atomic_path

log = logging.getLogger(__name__)

ML100K_URL = os.environ.get("FEDXREC_ML100K_URL", "https://files.grouplens.org/datasets/movielens/ml-100k.zip")
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
FRANKGRAPHBENCH_BASE = os.environ.get("FEDXREC_KG_BASE_URL", "https://raw.githubusercontent.com/AKSW/frankgraphbench")
#: version -> (commit, {file: sha256}) from ../shared/data/kg/frankgraphbench-ml100k-dbpedia/SOURCE.md
KG_FILES = {
    "dbpedia-live-2024": (
        "f60d9c228429a266998093013fd831d634c9e3b3",
        {
            "enriched.csv": "093b7996df4988c5a4542ca3bf0711d7e21ca8cd5baf49005206d50387f32271",
            "map.csv": "5f3fd13cee83e5890088f510fc63c3e000d6c31edc435cd63ba673b92f480c3d",
        },
    ),
    "dbpedia-2016-10": (
        "2e6afc87a6b35d856090b5a524761daa907fceef",
        {
            "enriched.csv": "3d6e52ca18babe5feb34038a921e09da6880cda8cdb05b4d869d114fc637e4d3",
            "map.csv": "bd4fbfafd2c182c529ecdd773c204fe8e4f195f0a77ee28a0c845a34dd5ffec6",
        },
    ),
}
ML100K_FILES = ("u.data", "u.item", "u.genre", "u.user", "u.occupation", "u.info")


def fetch(url: str, dest: Path, *, digest: str, algorithm: str = "sha256", timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` if its ``algorithm`` digest equals ``digest``.

    Raises :class:`DataError` (naming the URL and file) on an HTTP error, a truncated body (fewer
    bytes than Content-Length) or a checksum mismatch; ``dest`` is then left untouched.
    """
    h = hashlib.new(algorithm)
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                expected = resp.headers.get("Content-Length")
                got = 0
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    h.update(chunk)
                    out.write(chunk)
                    got += len(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise DataError(dest, f"download of {url} failed: {e}") from e
        if expected is not None and got != int(expected):
            raise DataError(dest, f"truncated download of {url}: {got} of {expected} bytes")
        if h.hexdigest() != digest:
            raise DataError(dest, f"checksum mismatch for {url}: {algorithm} {h.hexdigest()}, expected {digest}")
    log.info("downloaded %s -> %s", url, dest)
    return dest


def download_ml100k(data_dir: str | Path, *, url: str = ML100K_URL, md5: str = ML100K_MD5) -> Path:
    """Download and unpack ml-100k into ``data_dir/ml-100k`` (verified by the official MD5)."""
    data_dir = Path(data_dir)
    target = data_dir / "ml-100k"
    with tempfile.TemporaryDirectory(dir=data_dir if data_dir.exists() else None) as td:
        zpath = fetch(url, Path(td) / "ml-100k.zip", digest=md5, algorithm="md5")
        try:
            with zipfile.ZipFile(zpath) as zf, atomic_dir(target) as out:
                for name in ML100K_FILES:
                    try:
                        with zf.open(f"ml-100k/{name}") as src, open(out / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except KeyError:
                        raise DataError(zpath, f"archive lacks ml-100k/{name}") from None
        except zipfile.BadZipFile as e:
            raise DataError(zpath, f"not a zip archive: {e}") from e
    return target


def download_kg(
    data_dir: str | Path, version: str = "dbpedia-live-2024", *, base_url: str = FRANKGRAPHBENCH_BASE
) -> Path:
    """Download the FranKGraphBench ml-100k enrichment files at their pinned commit (sha256 checked)."""
    if version not in KG_FILES:
        raise ValueError(f"unknown KG version {version!r}; known: {sorted(KG_FILES)}")
    commit, files = KG_FILES[version]
    target = Path(data_dir) / "kg" / "frankgraphbench-ml100k-dbpedia" / version
    for name, sha in files.items():
        url = f"{base_url}/{commit}/datasets/ml-100k/processed/{name}"
        fetch(url, target / name, digest=sha)
    return target
