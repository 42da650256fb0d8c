"""``fedxrec serve``: run the API with uvicorn, settings from the environment (``FEDXREC_*``)."""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any


def serve(argv: list[str] | None = None) -> int:
    """Parse ``fedxrec serve`` options (each overrides its ``FEDXREC_*`` variable) and run uvicorn."""
    p = argparse.ArgumentParser(prog="fedxrec serve", description="Serve the explanation API (uvicorn).")
    p.add_argument("--checkpoint", help="checkpoint directory (FEDXREC_CHECKPOINT)")
    p.add_argument("--data-dir", help="data directory (FEDXREC_DATA_DIR)")
    p.add_argument("--state-dir", help="where registered items persist (FEDXREC_STATE_DIR)")
    p.add_argument("--host", help="bind address (FEDXREC_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (FEDXREC_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (FEDXREC_WORKERS, default 1)")
    args = p.parse_args(argv)
    # Workers are separate processes that read their settings from the environment.
    for name in ("checkpoint", "data_dir", "state_dir", "host", "port", "workers"):
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
    uvicorn.run(
        "server.api.main:app",
        host=s.host,
        port=s.port,
        workers=s.workers,
        log_level=s.log_level,
        access_log=False,  # the access log would carry client addresses and query strings
        log_config=log_config(s.log_level),
    )
    return 0


def log_config(level: str) -> dict[str, Any]:
    """Uvicorn's logging config plus our loggers (applied in every worker process, unlike basicConfig)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["formatters"]["app"] = {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"}
    cfg["handlers"]["app"] = {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"}
    for name in ("server", "kg", "shared"):
        cfg["loggers"][name] = {"handlers": ["app"], "level": level.upper(), "propagate": False}
    return cfg


if __name__ == "__main__":
    raise SystemExit(serve())
