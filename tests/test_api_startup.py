"""``fedxrec serve`` start-up: the default checkpoint is the main job's best round; failures are one line, non-zero."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from api_fixtures import make_checkpoint
from conftest import REPO, write_tiny_ml100k

from server.api.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FEDXREC_")}
    e.update({"FEDXREC_RUNS_DIR": str(tmp_path / "runs"), "FEDXREC_PORT": "1", "FEDXREC_LOG_LEVEL": "error", **env})
    return subprocess.run(
        [sys.executable, "-m", "server.api.cli"], cwd=REPO, env=e, capture_output=True, text=True, timeout=300
    )


def test_the_default_checkpoint_is_the_main_jobs_best_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("FEDXREC_CHECKPOINT", raising=False)
    assert Settings().checkpoint == (tmp_path / "runs" / "fed" / "best").resolve()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_missing_checkpoint_is_one_line_naming_it_and_the_command(tmp_path: Path, workers: str) -> None:
    out = _serve(tmp_path, FEDXREC_WORKERS=workers)
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1, lines
    assert str(tmp_path / "runs" / "fed" / "best") in lines[0] and "make run" in lines[0]


@pytest.mark.slow
def test_a_failing_worker_start_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    data = write_tiny_ml100k(tmp_path / "data")
    ckpt = make_checkpoint(data, "unused-backbone", tmp_path / "ckpt")
    out = _serve(
        tmp_path,
        FEDXREC_WORKERS="2",
        FEDXREC_CHECKPOINT=str(ckpt),
        FEDXREC_DATA_DIR=str(tmp_path / "nowhere"),
        FEDXREC_PORT=str(_free_port()),
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text
    assert f"fedxrec serve: cannot start: no ml-100k data under {tmp_path / 'nowhere'}" in text
