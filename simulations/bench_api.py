"""Loopback load test of ``POST /v1/recommend`` (explain=true, history 20, k=10) against a real server.

Starts ``fedxrec serve`` (uvicorn, N workers) as a separate process on 127.0.0.1, then for each
concurrency level sends a fixed number of requests (stopping early at a time cap) from a raw
asyncio HTTP/1.1 keep-alive client (cheap, so the 2-core machine's CPU goes to the server).
Histories are the 20 latest items of real users of ``--dataset`` (ml-100k). Figures are merged into
``results/summary.json`` under ``api`` (``p50_ms``, ``p99_ms``, ``rps`` at the highest
concurrency, ``c1_p50_ms`` ...) with the command and settings that produced them (another dataset:
under ``datasets.<name>.api``; other load settings: ``runs/bench_api/``).

    fedxrec bench api [--checkpoint runs/central/checkpoint] [--data-dir $FEDXREC_DATA_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from simulations import options
from simulations.results import provenance

log = logging.getLogger("bench_api")


def histories(dataset: str, data_dir: Path, length: int, n: int, seed: int = 0) -> list[list[int]]:
    """The ``length`` latest item ids (oldest first) of ``n`` sampled users of ``dataset`` with enough history."""
    from shared.data import load_dataset

    ds = load_dataset(dataset, data_dir)
    inter, ids = ds.interactions, np.asarray(ds.catalogue.ids)
    order = np.lexsort((inter.timestamps, inter.users))  # by user, then time (stable: file order on ties)
    users, rows = inter.users[order], inter.items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    eligible = [(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True) if e - s >= length]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(eligible), size=min(n, len(eligible)), replace=False)
    return [ids[rows[eligible[j][1] - length : eligible[j][1]]].tolist() for j in sorted(picked.tolist())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def _raw_post(port: int, path: str, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def load(port: int, bodies: list[bytes], concurrency: int, total: int, max_seconds: float) -> dict[str, float]:
    """Send ``total`` requests over ``concurrency`` keep-alive connections; latency stats and throughput."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(total))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in counter:
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                status = await _request(reader, writer, bodies[n % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p90_ms": round(float(np.percentile(lat, 90)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "non_200": sum(c for s, c in statuses.items() if s != 200),
        "5xx": sum(c for s, c in statuses.items() if s >= 500),
    }


def _wait_ready(port: int, proc: subprocess.Popen[bytes], workers: int, timeout: float) -> None:
    """Until ``workers`` distinct worker processes have answered ``/health`` (each is listening)."""
    import httpx

    seen: set[int] = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} (see its log)")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)  # a new connection each time
            if r.status_code == 200:
                seen.add(r.json()["worker_pid"])
                if len(seen) >= workers:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1 if seen else 0.3)
    raise RuntimeError(f"{len(seen)} of {workers} workers ready after {timeout}s")


def run(args: argparse.Namespace) -> dict[str, object]:
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        raise SystemExit(
            f"bench_api: error: --concurrency: expected comma-separated numbers, got {args.concurrency!r}"
        ) from None
    checkpoint = args.checkpoint or str(options.default_checkpoint(args.dataset))
    if not (Path(checkpoint) / "fedxrec.json").is_file():
        raise SystemExit(
            f"bench_api: error: no checkpoint at {checkpoint} (make it with `fedxrec central --dataset {args.dataset}`)"
        )
    out = options.output("api", "bench_api", args)
    load_before = os.getloadavg()[0]  # the machine is shared: other work inflates the figures
    data_dir = options.resolve_data_dir(args.data_dir)
    port = _free_port()
    state = tempfile.mkdtemp(prefix="fedxrec-bench-api-")
    env = {
        **os.environ,
        "FEDXREC_CHECKPOINT": checkpoint,
        "FEDXREC_DATA_DIR": str(data_dir),
        "FEDXREC_DATASET": args.dataset,
        "FEDXREC_STATE_DIR": state,
        "FEDXREC_PORT": str(port),
        "FEDXREC_WORKERS": str(args.workers),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",  # one BLAS thread per worker: the workers are the parallelism
    }
    log_path = Path(args.server_log or tempfile.mktemp(prefix="fedxrec-bench-api-", suffix=".log"))
    cmd = [sys.executable, "-c", "from server.api.cli import serve; raise SystemExit(serve())"]
    with open(log_path, "wb") as server_log:
        proc = subprocess.Popen(cmd, env=env, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            _wait_ready(port, proc, args.workers, timeout=180)
            hist = histories(args.dataset, data_dir, args.history_len, 200)
            bodies = [
                _raw_post(port, "/v1/recommend", {"history": h, "k": args.k, "exclude_seen": True, "explain": True})
                for h in hist
            ]
            asyncio.run(load(port, bodies, max(levels), args.warmup, 60))  # warm every worker
            figures = {}
            for c in levels:
                figures[c] = asyncio.run(load(port, bodies, c, args.requests, args.max_seconds))
                log.info("concurrency %d: %s", c, figures[c])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    top, one = figures[levels[-1]], figures[levels[0]]
    api = {
        "p50_ms": top["p50_ms"],
        "p99_ms": top["p99_ms"],
        "rps": top["rps"],
        "c1_p50_ms": one["p50_ms"],
        "c1_p99_ms": one["p99_ms"],
        "c1_rps": one["rps"],
        "by_concurrency": {str(c): f for c, f in figures.items()},
        **provenance(
            {
                "checkpoint": checkpoint,
                "dataset": args.dataset,
                "workers": args.workers,
                "concurrency": levels,
                "requests_per_level": args.requests,
                "max_seconds_per_level": args.max_seconds,
                "history_len": args.history_len,
                "k": args.k,
                "explain": True,
                "client": "raw asyncio HTTP/1.1 keep-alive, same host",
                "cpus": os.cpu_count(),
                "loadavg_before": round(load_before, 2),
                "loadavg_after": round(os.getloadavg()[0], 2),
            }
        ),
    }
    out.merge({"api": api})
    log.info(
        "api figures: p50 %.2f ms, p99 %.2f ms, %.1f req/s at c=%d; c=1 p50 %.2f ms",
        api["p50_ms"],
        api["p99_ms"],
        api["rps"],
        levels[-1],
        api["c1_p50_ms"],
    )
    return api


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = options.parser("api", "python -m simulations.bench_api", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_api"):
        return run(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
