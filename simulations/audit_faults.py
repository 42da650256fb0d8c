"""Fault audit: corrupt inputs, a poisoned client, and faults of real processes on 127.0.0.1.

Corrupt inputs run in-process; the poisoned client runs in a simulation; a SuperNode killed
mid-round and the SuperLink and ServerApp stopped and restarted use real processes.

Each case returns ``{"status": "pass" | "fail", "detail": ...}``. Process cases run the real
``flower-superlink`` / ``flower-supernode`` / ``flwr run`` on free ports, with a scratch ``FLWR_HOME``,
over a small real slice of ml-100k (the full catalogue and its item cache, the first users' ratings),
and stop every process they started by its id.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from simulations.runner import ENV, REPO

log = logging.getLogger(__name__)

Result = dict[str, Any]


def _ok(cond: bool, detail: Any) -> Result:
    return {"status": "pass" if cond else "fail", "detail": detail}


def _leftovers(root: Path) -> list[str]:
    """Temporary or partial files under ``root`` (what an interrupted write would leave)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


# --------------------------------------------------------------------------- corrupt inputs


def _expect(fn: Callable[[], object], exc: type[BaseException], *needles: str) -> tuple[bool, str]:
    try:
        fn()
    except exc as e:
        msg = str(e)
        return all(n in msg for n in needles), f"{type(e).__name__}: {msg[:240]}"
    except Exception as e:  # noqa: BLE001 - a wrong exception type is a finding, not a crash
        return False, f"unexpected {type(e).__name__}: {str(e)[:240]}"
    return False, "no error raised"


@contextlib.contextmanager
def _http_server(root: Path) -> Iterator[str]:
    """A local HTTP server over ``root`` on 127.0.0.1 (a free port); yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def corrupt_inputs(data_dir: Path, work: Path) -> Result:
    """Truncated ratings, wrong checksum, malformed KG files, damaged checkpoint: clear errors, no debris."""
    import torch

    from kg.errors import KGFileError
    from kg.graph import build_graph, load_graph, save_graph
    from shared.backbone import PrefixCache
    from shared.checkpoint import load_checkpoint, save_checkpoint
    from shared.config import Config, DataConfig, ModelConfig
    from shared.download import download_ml100k, fetch
    from shared.errors import CheckpointError, DataError
    from shared.model import Recommender
    from shared.pipeline import prepare

    checks: dict[str, Any] = {}
    work.mkdir(parents=True, exist_ok=True)

    # 1. truncated u.data: the run stops at the broken line; no split or item cache is written
    d = work / "truncated" / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("u.item", "u.genre"):
        shutil.copy(data_dir / "ml-100k" / f, d / f)
    raw = (data_dir / "ml-100k" / "u.data").read_bytes()
    cut = raw.index(b"\n", len(raw) // 2) + 8  # mid-line: "user\titem" without rating and time
    (d / "u.data").write_bytes(raw[:cut])
    line = raw[:cut].count(b"\n") + 1
    cache = work / "truncated" / "cache"
    cfg = Config(data=DataConfig(dir=str(d.parent), cache_dir=str(cache)))
    ok, msg = _expect(lambda: prepare(cfg, progress=False), DataError, "u.data", f":{line}")
    debris = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    checks["truncated_ratings"] = _ok(ok and not debris, {"error": msg, "expected_line": line, "cache_files": debris})

    # 2. wrong checksum / truncated body from a local HTTP server: nothing is left at the target
    srv_root = work / "http"
    srv_root.mkdir(exist_ok=True)
    (srv_root / "map.csv").write_bytes(b"item_id,uri\n1,http://dbpedia.org/resource/Toy_Story\n")
    dl = work / "download"
    with _http_server(srv_root) as base:
        ok1, m1 = _expect(
            lambda: fetch(f"{base}/map.csv", dl / "map.csv", digest="0" * 64), DataError, "checksum mismatch", "map.csv"
        )
        ok2, m2 = _expect(
            lambda: download_ml100k(dl, url=f"{base}/map.csv", md5="0" * 32), DataError, "checksum mismatch"
        )
    left = [str(p.relative_to(dl)) for p in dl.rglob("*")] if dl.exists() else []
    checks["wrong_checksum"] = _ok(ok1 and ok2 and not left, {"fetch": m1, "download_ml100k": m2, "files_left": left})

    # 3. malformed KG files: the graph JSON cut short, and an enriched.csv row with a missing field
    g = build_graph(
        [
            {
                "id": 1,
                "title": "Toy Story",
                "year": 1995,
                "genres": ["Animation"],
                "entities": {"director": ["John_Lasseter"]},
            },
            {"id": 2, "title": "GoldenEye", "year": 1995, "genres": ["Action"], "entities": {}},
        ]
    )
    gpath = save_graph(g, work / "kg" / "graph.json")
    text = gpath.read_text()
    gpath.write_text(text[: len(text) // 2])
    ok3, m3 = _expect(lambda: load_graph(gpath), KGFileError, "graph.json")
    from shared.data import read_frankgraphbench

    src = data_dir / "kg" / "frankgraphbench-ml100k-dbpedia" / "dbpedia-live-2024" / "enriched.csv"
    bad = work / "kg" / "enriched.csv"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[5] = lines[5].rsplit(",", 1)[0] + "\n"  # one field fewer on line 6
    bad.write_text("".join(lines), encoding="utf-8")
    ok4, m4 = _expect(lambda: read_frankgraphbench(bad), DataError, "enriched.csv:6")
    checks["malformed_kg"] = _ok(ok3 and ok4, {"graph_json": m3, "enriched_csv": m4})

    # 4. damaged checkpoint: one flipped byte in the weights is a CheckpointError naming the file
    torch.manual_seed(0)
    cache_obj = PrefixCache(top_layers=0, pooled=torch.randn(20, 16))
    model = Recommender(ModelConfig(dim=8, bottleneck=4), cache_obj, 1)
    ck = save_checkpoint(model, list(range(1, 21)), work / "ckpt")
    w = ck / "adapter_model.safetensors"
    b = bytearray(w.read_bytes())
    b[-3] ^= 0xFF
    w.write_bytes(bytes(b))
    ok5, m5 = _expect(lambda: load_checkpoint(ck), CheckpointError, "adapter_model.safetensors", "checksum")
    (ck / "fedxrec.json").write_text("{not json")
    ok6, m6 = _expect(lambda: load_checkpoint(ck), CheckpointError, "fedxrec.json")
    checks["damaged_checkpoint"] = _ok(ok5 and ok6 and not _leftovers(work / "ckpt"), {"weights": m5, "manifest": m6})

    passed = all(c["status"] == "pass" for c in checks.values())
    return _ok(passed, checks)


# --------------------------------------------------------------------------- poisoned update (simulation)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _simulate(config: dict[str, Any], nodes: int, poisoned: int | None) -> None:
    from flwr.simulation import run_simulation

    from simulations.audit_apps import poisoned_apps

    sapp, capp = poisoned_apps(config, poisoned_partition=poisoned)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}
    run_simulation(sapp, capp, num_supernodes=nodes, backend_config=backend)


def poisoned_update(data_dir: Path, work: Path, *, nodes: int = 10, rounds: int = 3, users: int = 943) -> Result:
    """One of ``nodes`` sends NaN, then Inf, then a huge update; compare final HR@10 with a clean run."""
    from server.runlog import read_log
    from simulations.runner import run_config

    data = slice_dataset(data_dir, work / "data", users)
    base = {
        "data.dir": str(data),
        "data.cache-dir": str((REPO / ".cache" / "fedxrec").resolve()),
        "num-server-rounds": rounds,
        "fed.out-dir": str(work),
        "fed.eval-every": rounds,
        "fed.min-nodes": nodes,
        "fed.resume": False,
        "fed.timeout": 1800.0,
    }
    cap = _Capture()
    logging.getLogger("server.strategy").addHandler(cap)
    out: dict[str, Any] = {}
    try:
        for name, poisoned in (("clean", None), ("poisoned", 0)):
            _simulate(run_config({**base, "fed.run-name": name}), nodes, poisoned)
            rows = read_log(work / name / "rounds.jsonl")
            out[name] = {
                "rounds": len(rows),
                "dropped": [r.get("dropped", 0) for r in rows],
                "central-test-hr@10": rows[-1]["central"]["test-hr@10"] if rows else None,
                "fed-test-hr@10": rows[-1].get("fed", {}).get("test-hr@10") if rows else None,
            }
    finally:
        logging.getLogger("server.strategy").removeHandler(cap)
    c, p = out["clean"], out["poisoned"]
    reasons = [line for line in cap.lines if "dropped the update" in line]

    def gap(key: str) -> float | None:
        return None if c[key] is None or p[key] is None else abs(c[key] - p[key])

    diff, fdiff = gap("central-test-hr@10"), gap("fed-test-hr@10")
    ok = (
        c["rounds"] == rounds
        and p["rounds"] == rounds
        and p["dropped"] == [1] * rounds
        and c["dropped"] == [0] * rounds
        and diff is not None
        and fdiff is not None
        and max(diff, fdiff) <= 0.01 + 1e-9
    )
    return _ok(
        ok,
        {
            **out,
            "central_hr@10_difference_points": None if diff is None else 100 * diff,
            "fed_hr@10_difference_points": None if fdiff is None else 100 * fdiff,
            "server_log": reasons[:rounds],
        },
    )


# --------------------------------------------------------------------------- real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slice_dataset(data_dir: Path, dest: Path, users: int) -> Path:
    """A real slice of ml-100k: the full catalogue (and KG) with the ratings of users 1..``users``."""
    d = dest / "ml-100k"
    d.mkdir(parents=True, exist_ok=True)
    for f in ("u.item", "u.genre"):
        shutil.copy(data_dir / "ml-100k" / f, d / f)
    keep = [ln for ln in (data_dir / "ml-100k" / "u.data").read_text().splitlines() if int(ln.split("\t")[0]) <= users]
    (d / "u.data").write_text("\n".join(keep) + "\n")
    if (data_dir / "kg").exists() and not (dest / "kg").exists():
        (dest / "kg").symlink_to((data_dir / "kg").resolve())
    return dest


class Cluster:
    """A SuperLink and SuperNodes as real processes on 127.0.0.1; every process is stopped by its id."""

    def __init__(self, work: Path, *, num_nodes: int, node_extra: dict[int, str] | None = None) -> None:
        self.work = work
        self.home = work / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "audit"\n\n[superlink.audit]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.env = {**os.environ, **ENV, "FLWR_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env.get('PATH', '')}"
        self.num_nodes = num_nodes
        self.node_extra = node_extra or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.db = work / "superlink.db"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logf = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process
        p = subprocess.Popen(
            args, env=self.env, stdout=logf, stderr=subprocess.STDOUT, cwd=self.work, start_new_session=True
        )
        self.procs[name] = p
        return p

    def start_superlink(self) -> None:
        self._start(
            "superlink",
            [
                str(Path(sys.executable).parent / "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--database",
                str(self.db),
            ],
        )
        _wait_port(self.port, 90)

    def start_node(self, i: int) -> None:
        cfg = f"partition-id={i} num-partitions={self.num_nodes}" + (
            f" {self.node_extra[i]}" if i in self.node_extra else ""
        )
        self._start(
            f"supernode-{i}",
            [
                str(Path(sys.executable).parent / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                cfg,
            ],
        )

    def submit(self, run_config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """``flwr run`` of this repository's app on the cluster with ``run_config`` overrides."""
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        return subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", str(REPO), "audit", "--run-config", pairs],
            env=self.env,
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one process and its children (its own process group) by id."""
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=20)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=20)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


def _wait_port(port: int, timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _wait_rows(path: Path, n: int, timeout: float, poll: float = 1.0) -> list[dict[str, Any]]:
    from server.runlog import read_log

    t0 = time.time()
    rows: list[dict[str, Any]] = []
    while time.time() - t0 < timeout:
        with contextlib.suppress(json.JSONDecodeError, OSError):
            rows = read_log(path)
        if len(rows) >= n:
            return rows
        time.sleep(poll)
    return rows


def _deploy_config(data: Path, work: Path, name: str, rounds: int, **extra: Any) -> dict[str, Any]:
    return {
        "data.dir": str(data),
        "data.cache-dir": str((REPO / ".cache" / "fedxrec").resolve()),
        "num-server-rounds": rounds,
        "fed.out-dir": str(work / "runs"),
        "fed.run-name": name,
        "fed.central-eval": True,
        "fed.fraction-train": 1.0,  # every node trains every round (the cases are about each node)
        **extra,
    }


def supernode_killed(data_dir: Path, work: Path, *, users: int = 30, rounds: int = 3, timeout: float = 120.0) -> Result:
    """Three SuperNodes; one is killed while round 2 trains. The run must finish with the other two."""
    data = slice_dataset(data_dir, work / "data", users)
    cl = Cluster(work, num_nodes=3)
    try:
        cl.start_superlink()
        for i in range(3):
            cl.start_node(i)
        cfg = _deploy_config(data, work, "killed", rounds, **{"fed.min-nodes": 2, "fed.timeout": timeout})
        sub = cl.submit(cfg)
        if sub.returncode != 0:
            return _ok(False, {"flwr_run": (sub.stdout + sub.stderr)[-800:]})
        log_path = work / "runs" / "killed" / "rounds.jsonl"
        first = _wait_rows(log_path, 1, 900)
        if not first:
            return _ok(False, {"error": "round 1 never finished", "superlink_log": _tail(work / "superlink.log")})
        time.sleep(3.0)  # round 2 has been sent out: its ClientApps are training
        cl.kill("supernode-2")
        rows = _wait_rows(log_path, rounds, 900 + 2 * timeout)
        summary = work / "runs" / "killed" / "summary.json"
        t0 = time.time()
        while not summary.exists() and time.time() - t0 < 60:
            time.sleep(1)
        detail = {
            "rounds_finished": len(rows),
            "replies_per_round": [r.get("replies") for r in rows],
            "failed_per_round": [r.get("failed") for r in rows],
            "errors_logged": [e for r in rows for e in r.get("errors", [])][:3],
            "train_nodes_per_round": [r.get("train", {}).get("nodes") for r in rows],
            "final_central_test_hr@10": rows[-1].get("central", {}).get("test-hr@10") if rows else None,
            "summary_written": summary.exists(),
        }
        nodes = detail["train_nodes_per_round"]
        ok = len(rows) == rounds and summary.exists() and nodes[0] == 3 and all(n == 2 for n in nodes[1:])
        return _ok(ok, detail)
    finally:
        cl.stop_all()


def superlink_restart(
    data_dir: Path, work: Path, *, users: int = 30, rounds: int = 3, timeout: float = 120.0
) -> Result:
    """Stop the SuperLink (and with it the ServerApp) after round 2; restart; resume from the checkpoint."""
    data = slice_dataset(data_dir, work / "data", users)
    cl = Cluster(work, num_nodes=2)
    try:
        cl.start_superlink()
        for i in range(2):
            cl.start_node(i)
        cfg = _deploy_config(
            data,
            work,
            "restart",
            rounds,
            **{
                "fed.min-nodes": 2,
                "fed.timeout": timeout,
                "fed.resume": True,
                "fed.eval-every": rounds,
                # record-level DP on, with a budget no round reaches: the nodes' accountants must
                # continue across the restart (node state kept on the device), not start again
                "dp.enabled": True,
                "dp.noise-multiplier": 1.0,
            },
        )
        sub = cl.submit(cfg)
        if sub.returncode != 0:
            return _ok(False, {"flwr_run": (sub.stdout + sub.stderr)[-800:]})
        log_path = work / "runs" / "restart" / "rounds.jsonl"
        before = _wait_rows(log_path, 2, 900)
        if len(before) < 2:
            return _ok(False, {"error": "round 2 never finished", "superlink_log": _tail(work / "superlink.log")})
        cl.kill("superlink")  # SIGKILL: the SuperLink and its ServerApp subprocess die mid-run
        time.sleep(2.0)
        snapshot = list(before)
        ck_round = json.loads((work / "runs" / "restart" / "checkpoint" / "fedxrec.json").read_text())["meta"]["round"]
        cl.start_superlink()
        sub2 = cl.submit(cfg)
        if sub2.returncode != 0:
            return _ok(False, {"flwr_run_after_restart": (sub2.stdout + sub2.stderr)[-800:]})
        rows = _wait_rows(log_path, rounds, 900 + 2 * timeout)
        kept = [r["round"] for r in rows]
        same = all(
            json.dumps(a.get("central"), sort_keys=True) == json.dumps(b.get("central"), sort_keys=True)
            for a, b in zip(snapshot[:ck_round], rows[:ck_round], strict=False)
        )
        eps = [r.get("train", {}).get("epsilon-max", 0.0) for r in rows]
        eps_continues = len(eps) == rounds and all(b > a for a, b in zip(eps, eps[1:], strict=False))
        detail = {
            "epsilon_max_by_round": eps,
            "epsilon_continues_after_restart": eps_continues,
            "rounds_before_stop": [r["round"] for r in snapshot],
            "checkpoint_round_at_stop": ck_round,
            "rounds_after_restart": kept,
            "completed_rounds_unchanged": same,
            "final_central_test_hr@10": rows[-1].get("central", {}).get("test-hr@10") if rows else None,
            "runs_submitted": 2,
        }
        ok = kept == list(range(1, rounds + 1)) and same and ck_round >= 2 and eps_continues
        return _ok(ok, detail)
    finally:
        cl.stop_all()


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- driver


CASES: dict[str, Callable[[Path, Path], Result]] = {
    "corrupt_inputs": corrupt_inputs,
    "poisoned_update": poisoned_update,
    "supernode_killed": supernode_killed,
    "superlink_restart": superlink_restart,
}


def run_faults(cases: list[str], *, data_dir: str = "") -> tuple[dict[str, Result], dict[str, Any]]:
    """Run the named fault cases; returns their results and the settings used."""
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ValueError(f"unknown fault cases {unknown}; known: {sorted(CASES)}")
    data = Path(data_dir or os.environ.get("FEDXREC_DATA_DIR", "data")).resolve()
    scratch = Path(os.environ.get("FEDXREC_AUDIT_WORK", tempfile.mkdtemp(prefix="fedxrec-audit-")))
    out: dict[str, Result] = {}
    for case in cases:
        work = scratch / case
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t0 = time.time()
        try:
            res = CASES[case](data, work)
        except Exception as e:  # noqa: BLE001 - a crashed case is a failed case, with its reason
            log.exception("fault case %s crashed", case)
            res = _ok(False, {"error": f"{type(e).__name__}: {e}"})
        res["seconds"] = round(time.time() - t0, 1)
        log.info("fault case %s: %s", case, res["status"])
        out[case] = res
    settings = {
        "data": str(data),
        "poisoned_update": {
            "nodes": 10,
            "rounds": 3,
            "users": 943,
            "seeds": "node seeds fixed per partition in both runs",
            "modes": "nan, inf, huge (x1e4) by round",
            "hr": "central and federated test HR@10, last round",
        },
        "supernode_killed": {
            "supernodes": 3,
            "rounds": 3,
            "users": 30,
            "killed": "supernode 2 by SIGKILL during round 2",
        },
        "superlink_restart": {
            "supernodes": 2,
            "rounds": 3,
            "users": 30,
            "stopped": "SuperLink (+ServerApp) by SIGKILL after round 2",
        },
        "scratch": str(scratch),
        "np": np.__version__,
    }
    return out, settings
