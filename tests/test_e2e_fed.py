"""End to end: a real SuperLink and 3 SuperNodes on 127.0.0.1, each with its own data file, 2 rounds
with SecAgg+; checks the aggregated metrics and stops every process by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_tiny_ml100k

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"port {port} not open after {timeout}s")


@pytest.mark.slow
def test_secagg_round_trip_with_real_processes(tmp_path: Path, tiny_bert: str) -> None:
    root = write_tiny_ml100k(tmp_path / "data", users=6, per_user=15)
    catalog = tmp_path / "catalog"  # the public catalogue only (no one's ratings)
    catalog.mkdir()
    for f in ("u.item", "u.genre"):
        shutil.copy(root / "ml-100k" / f, catalog / f)
    shutil.copy(root / "kg" / "frankgraphbench-ml100k-dbpedia" / "dbpedia-live-2024" / "enriched.csv", catalog)
    lines = (root / "ml-100k" / "u.data").read_text().splitlines()
    files = []
    for n, users in enumerate((("1", "2"), ("3", "4"), ("5", "6"))):
        f = tmp_path / f"device{n}.data"
        f.write_text("\n".join(line for line in lines if line.split("\t")[0] in users) + "\n")
        files.append(f)

    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    http = _free_port()  # Flower 1.42: Fleet, Control and Runtime APIs share one HTTP port
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{http}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        link = subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(http),
            ],
            env=env,
            stdout=open(logs / "superlink.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(link)
        _wait_port(http, link)
        for n, f in enumerate(files):
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{http}",
                        "--port",
                        str(_free_port()),
                        "--node-config",
                        f"data-path='{f}' catalog-path='{catalog}'",
                    ],
                    env=env,
                    stdout=open(logs / f"supernode{n}.log", "w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        out = tmp_path / "runs"
        overrides = (
            f"num-server-rounds=2 fed.secagg=true fed.min-nodes=3 fed.out-dir='{out}' fed.run-name='e2e' "
            f"data.dir='{root}' data.cache-dir='{tmp_path / 'cache'}' model.backbone='{tiny_bert}' "
            "model.dim=16 model.bottleneck=8 model.history-len=8 train.negatives=8 local.batch-size=4"
        )
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO), "e2e", "--run-config", overrides],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        summary = out / "e2e" / "summary.json"
        t0 = time.time()
        while not summary.exists() and time.time() - t0 < 400:
            time.sleep(2)
        assert summary.exists(), (logs / "superlink.log").read_text()[-3000:]
        rows = [json.loads(line) for line in (out / "e2e" / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        for r in rows:
            assert r["secagg"] and r["fed"]["nodes"] == 3
            assert r["fed"]["val-count"] == 6 and 0 <= r["fed"]["test-hr@10"] <= 1
            assert r["train"]["nodes"] == 3 and r["train"]["train-loss"] > 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
    assert all(p.poll() is not None for p in procs)
