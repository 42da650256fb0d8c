"""End to end: a real SuperLink and 3 SuperNodes on 127.0.0.1, each with its own data file and state
folder, 2 rounds of distributed DP-SGD under SecAgg+ (a real device requires record-level DP and a
target ε by default); checks the rows, the server's ε against each device's own ledger, and stops every
process by PID."""

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

from server.loop import record_dp_epsilon
from shared.privacy import PrivacyConfig, epsilon_of, plan_noise

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
        f = tmp_path / f"device{n}" / "u.data"  # one folder per device: its state and ledger live beside it
        f.parent.mkdir()
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
            "fed.fraction-train=1.0 fed.eval-every=1 dp.enabled=true dp.mode='distributed' dp.target-epsilon=4.0 "
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
        dp = PrivacyConfig(enabled=True, mode="distributed", target_epsilon=4.0)
        sigma = plan_noise(dp, num_rounds=2, fraction=1.0)
        for r in rows:
            assert r["secagg"] and r["dp-mode"] == "distributed" and not r.get("skipped"), r
            assert r["shares"] == 3 and r["train"] == {"nodes": 3.0}  # nothing but the count in the clear
            assert "fed" not in r and r["eval"] == "experimenter" and 0 <= r["central"]["test-hr@10"] <= 1
            assert r["noise-multiplier"] == pytest.approx(sigma) and r["delta"] == dp.delta
            assert r["max-participation"] == r["round"]  # every device in every round
            assert r["epsilon"] == pytest.approx(
                record_dp_epsilon(dp, noise_multiplier=sigma, participations=r["round"])
            )
        assert 0 < rows[-1]["epsilon"] <= 4.0 * (1 + 1e-9)
        # the server's ε (from public settings) is what each device's own accountant recorded
        for f in files:
            ledger = json.loads((f.parent / ".fedxrec-state" / "privacy-ledger.json").read_text())
            history = [tuple(h) for h in ledger["runs"]["e2e"]]
            assert epsilon_of(history, dp.delta) == pytest.approx(rows[-1]["epsilon"], rel=1e-6)
        assert json.loads(summary.read_text())["best-selected-by"].startswith("experimenter")
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
