"""``fedxrec serve``: run the API with uvicorn, settings from the environment (``FEDXREC_*``)."""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing
import os
import signal
import socket
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from server.best import default_checkpoint
from shared.config import DATASETS, DEFAULT_DATASET

APP = "server.api.main:app"
STARTUP_FAILURE = 3  # uvicorn's exit status when the application fails to start


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """The options of ``fedxrec serve`` (each overrides its ``FEDXREC_*`` variable)."""
    p.add_argument(
        "--checkpoint",
        help="checkpoint directory (FEDXREC_CHECKPOINT; default: the best round of the dataset's main job)",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help=f"dataset whose catalogue is served (FEDXREC_DATASET, default {DEFAULT_DATASET})",
    )
    p.add_argument("--data-dir", help="data directory (FEDXREC_DATA_DIR)")
    p.add_argument("--state-dir", help="where registered items persist (FEDXREC_STATE_DIR)")
    p.add_argument("--host", help="bind address (FEDXREC_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (FEDXREC_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (FEDXREC_WORKERS, default 1)")


def build_parser(prog: str = "fedxrec serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve the explanation API (uvicorn).")
    add_serve_options(p)
    return p


def serve(argv: list[str] | None = None) -> int:
    """Parse ``fedxrec serve`` options and run uvicorn."""
    return serve_args(build_parser().parse_args(argv))


def serve_args(args: argparse.Namespace) -> int:
    """Run uvicorn with parsed ``fedxrec serve`` options (each overrides its ``FEDXREC_*`` variable)."""
    # Workers are separate processes that read their settings from the environment.
    for name in ("checkpoint", "dataset", "data_dir", "state_dir", "host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"FEDXREC_{name.upper()}"] = str(value)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import uvicorn
    from pydantic import ValidationError

    from server.api.settings import get_settings

    get_settings.cache_clear()
    try:
        s = get_settings()
    except ValidationError as e:
        bad = "; ".join(f"FEDXREC_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
        raise SystemExit(f"fedxrec serve: bad setting: {bad}") from None
    problem = missing_checkpoint(s.checkpoint, s.dataset)
    if problem:
        raise SystemExit(problem)
    kwargs: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "log_level": s.log_level,
        "access_log": False,  # the access log would carry client addresses and query strings
        "log_config": log_config(s.log_level),
    }
    if s.workers > 1 and hasattr(socket, "SO_REUSEPORT"):
        return _run_workers(s.workers, kwargs)
    uvicorn.run(APP, workers=s.workers, **kwargs)
    return 0


def missing_checkpoint(path: Path, dataset: str = DEFAULT_DATASET) -> str | None:
    """One line naming the missing checkpoint and the command that makes it (None: it is there)."""
    if (Path(path) / "fedxrec.json").is_file():
        return None
    job = "`make run`" if dataset == DEFAULT_DATASET else f"`fedxrec run --dataset {dataset}`"
    return (
        f"fedxrec serve: no checkpoint at {path} (no fedxrec.json); the main job {job} writes its best"
        f" round to {default_checkpoint(dataset)} (the default), or set FEDXREC_CHECKPOINT (--checkpoint) to"
        " another checkpoint"
    )


def _run_workers(n: int, kwargs: dict[str, Any]) -> int:
    """Run ``n`` uvicorn processes, each listening on its own ``SO_REUSEPORT`` socket.

    With uvicorn's one shared socket, whichever worker wakes first accepts a whole burst of new
    connections (a load test's 32 all went to one of two workers); with a socket per worker the
    kernel spreads connections evenly. A worker that exits stops the others (no restarts).
    """
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(kwargs,), name=f"fedxrec-api-{i}") for i in range(n)]
    for p in procs:
        p.start()

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    first = wait([p.sentinel for p in procs])[0]
    stop(signal.SIGTERM, None)
    for p in procs:
        p.join()
    return next(p.exitcode or 0 for p in procs if p.sentinel == first)


def _worker(kwargs: dict[str, Any]) -> None:
    import uvicorn

    family, kind, proto, _, addr = socket.getaddrinfo(kwargs["host"], kwargs["port"], type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    server = uvicorn.Server(uvicorn.Config(APP, **kwargs))
    server.run(sockets=[sock])
    if not server.started:  # the lifespan failed (as uvicorn.run exits then): the others are stopped
        sys.exit(STARTUP_FAILURE)


def log_config(level: str) -> dict[str, Any]:
    """Uvicorn's logging config plus our loggers (applied in every worker process, unlike basicConfig)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["startup"] = {"()": StartupErrorFilter}
    cfg["handlers"]["default"].setdefault("filters", []).append("startup")
    cfg["formatters"]["app"] = {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"}
    cfg["handlers"]["app"] = {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}
    for name in ("server", "kg", "shared"):
        cfg["loggers"][name] = {"handlers": ["app"], "level": level.upper(), "propagate": False}
    return cfg


class StartupErrorFilter(logging.Filter):
    """Shortens uvicorn's report of a failed start (a traceback) to the service's one-line reason."""

    MARK = "StartupError: "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        msg = record.getMessage()
        if self.MARK not in msg:
            return True
        reason = [line for line in msg.splitlines() if self.MARK in line][-1].split(self.MARK, 1)[1]
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"fedxrec serve: cannot start: {reason}",
            (),
            None,
            None,
        )
        return True


if __name__ == "__main__":
    raise SystemExit(serve())
