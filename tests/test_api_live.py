"""The real server: ``fedxrec serve`` (uvicorn, 2 workers) on 127.0.0.1, over HTTP; then schemathesis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_fixtures import TOKEN, env, make_checkpoint
from conftest import REPO, write_tiny_ml100k

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25  # per operation and phase: keeps the fuzz run around a minute on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("live")
    data = write_tiny_ml100k(root / "data")
    ckpt = make_checkpoint(data, tiny_bert, root / "ckpt")
    port = _free_port()
    e = {**os.environ, **env(data, ckpt, root / "state"), "FEDXREC_PORT": str(port), "FEDXREC_WORKERS": "2"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.api.cli"], cwd=REPO, env=e, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, (root / "server.log").read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "server did not start"
        time.sleep(0.3)
    try:
        yield url, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_real_server_over_http(server: tuple[str, Path]) -> None:
    url, root = server
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/recommend", json={"history": [1, 6, 11], "k": 5, "explain": True})
        assert r.status_code == 200 and len(r.json()["items"]) == 5 and r.headers["x-request-id"]
        assert (
            c.post("/v1/recommend", content=b"{oops", headers={"Content-Type": "application/json"}).status_code == 422
        )
        assert c.post("/v1/items", json={"title": "Nope"}).status_code == 401
        new = c.post(
            "/v1/items",
            json={
                "title": "Live One",
                "genres": ["Drama"],
                "entities": {"director": ["http://dbpedia.org/resource/Director_3"]},
            },
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert new.status_code == 201, new.text
        new_id = new.json()["id"]
    # every worker sees the new item at once: fresh connections land on either process
    for _ in range(8):
        with httpx.Client(base_url=url, timeout=30) as c:
            e = c.post("/v1/explain", json={"history": [3], "item_id": new_id}).json()
            assert e["paths"] and e["paths"][0]["entity_label"] == "Director 3"
    log = (root / "server.log").read_text()
    assert "request_id=" in log and "Live One" not in log and "history" not in log


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: tuple[str, Path]) -> None:
    url, root = server
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is a dev dependency"
    cmd = [
        exe,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance,negative_data_rejection",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
