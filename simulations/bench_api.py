"""Load test of ``POST /v1/recommend`` against a real server, and the served model's P1 accuracy via ``/v1/score``.

The load test: explain=true, history 20, k=10, over loopback.

Starts ``fedxrec serve`` (uvicorn, N workers) as a separate process on 127.0.0.1, then for each
concurrency level sends a fixed number of requests (stopping early at a time cap) from a raw
asyncio HTTP/1.1 keep-alive client (cheap, so the 2-core machine's CPU goes to the server).
Histories are the 20 latest items of real users of ``--dataset``. Then every user of the P1 split
(``--split-seed``, the run's ``data.split-seed``) is scored through ``/v1/score``: their whole
training history (plus the validation item, for test), in the split's time order, and the held-out
item with its 99 negatives, exactly what :func:`server.evaluation.central_p1` ranks. Figures are
merged into ``results/summary.json`` under ``api`` (``p50_ms``, ``p99_ms``, ``rps`` at the highest
concurrency, ``c1_p50_ms``, ``p1_hr@10``, ``p1_ndcg@10`` ...) with the command and settings that
produced them, beside the test figures the checkpoint's run recorded for its round (another
dataset: under ``datasets.<name>.api``; other settings: ``runs/bench_api/``).

    fedxrec bench api [--checkpoint runs/fed/best] [--data-dir $FEDXREC_DATA_DIR] [--p1-only]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def p1_requests(split: Any, item_ids: list[int], which: str = "test") -> list[tuple[list[int], list[int]]]:
    """(history, candidates) per evaluated user, as item ids: what ``central_p1`` ranks for ``which``.

    The history is the user's training items in the split's time order, plus the validation item
    when ranking test (``shared.training.eval_histories``); the candidates are the held-out item
    first, then its negatives.
    """
    target = split.val if which == "val" else split.test
    negs = split.val_negatives if which == "val" else split.test_negatives
    out = []
    for u in np.flatnonzero(target >= 0).tolist():
        h = split.train[u].tolist()
        if which == "test" and split.val[u] >= 0:
            h.append(int(split.val[u]))
        cand = [int(target[u]), *negs[u].tolist()]
        out.append(([item_ids[r] for r in h], [item_ids[r] for r in cand]))
    return out


def p1_via_api(
    post: Callable[[dict[str, Any]], dict[str, Any]], split: Any, item_ids: list[int], which: str = "test", k: int = 10
) -> dict[str, Any]:
    """HR@k / NDCG@k of the served model through ``/v1/score`` (``post`` sends one body, returns the reply)."""
    from shared.metrics import hit_rate, ndcg, rank_of_target

    ranks = []
    for history, cand in p1_requests(split, item_ids, which):
        scores = [s["score"] for s in post({"history": history, "item_ids": cand})["scores"]]
        ranks.append(int(rank_of_target(np.array([scores]), 0)[0]))
    r = np.array(ranks, np.int64)
    return {"ranks": r, f"{which}-hr@{k}": hit_rate(r, k), f"{which}-ndcg@{k}": ndcg(r, k)}


def p1_figures(port: int, data_dir: Path, dataset: str, cache_dir: str, split_seed: int) -> dict[str, Any]:
    """The P1 test figures of the served model over every user, through ``/v1/score`` on ``port``."""
    import httpx

    from shared.data import load_dataset
    from shared.splits import cached_split

    kwargs = {"kg_version": "dbpedia-live-2024"} if dataset == "ml-100k" else {}
    ds = load_dataset(dataset, data_dir, **kwargs)
    split = cached_split(ds.interactions, len(ds.catalogue), cache_dir, seed=split_seed)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:

        def post(body: dict[str, Any]) -> dict[str, Any]:
            r = c.post("/v1/score", json=body)
            r.raise_for_status()
            return r.json()  # type: ignore[no-any-return]

        f = p1_via_api(post, split, ds.catalogue.ids, "test")
    return {
        "p1_hr@10": round(f["test-hr@10"], 4),
        "p1_ndcg@10": round(f["test-ndcg@10"], 4),
        "p1_users": len(f["ranks"]),
    }


def checkpoint_test_figures(checkpoint: Path) -> dict[str, Any]:
    """The test figures the run recorded for the checkpoint's round (``meta.best``; empty if none)."""
    meta = json.loads((checkpoint / "fedxrec.json").read_text()).get("meta", {})
    best = meta.get("best", {})
    out = {f"run_{k}": v for k, v in best.items() if k in ("test-hr@10", "test-ndcg@10", "round", "source")}
    return out


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
    checkpoint = args.checkpoint or str(options.served_checkpoint(args.dataset))
    if not (Path(checkpoint) / "fedxrec.json").is_file():
        raise SystemExit(
            f"bench_api: error: no checkpoint at {checkpoint} (make it with `fedxrec run --dataset {args.dataset}`)"
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
            p1 = {
                **p1_figures(port, data_dir, args.dataset, args.cache_dir, args.split_seed),
                **checkpoint_test_figures(Path(checkpoint)),
            }
            log.info("P1 through /v1/score: %s", p1)
            figures = {}
            if not args.p1_only:
                hist = histories(args.dataset, data_dir, args.history_len, 200)
                bodies = [
                    _raw_post(port, "/v1/recommend", {"history": h, "k": args.k, "exclude_seen": True, "explain": True})
                    for h in hist
                ]
                asyncio.run(load(port, bodies, max(levels), args.warmup, 60))  # warm every worker
                for c in levels:
                    figures[c] = asyncio.run(load(port, bodies, c, args.requests, args.max_seconds))
                    log.info("concurrency %d: %s", c, figures[c])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if args.p1_only:
        api_p1 = {
            **p1,
            **provenance({"checkpoint": checkpoint, "dataset": args.dataset, "split_seed": args.split_seed}),
        }
        out.merge({"api": api_p1})
        return api_p1
    top, one = figures[levels[-1]], figures[levels[0]]
    api = {
        **p1,
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
                "split_seed": args.split_seed,
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
