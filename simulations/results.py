"""Writing benchmark figures: ``results/summary.json`` is merged key by key, never clobbered."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from shared.io import atomic_write_text

RESULTS = Path(os.environ.get("FEDXREC_RESULTS_DIR", "results"))


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def merge_summary(updates: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Merge ``updates`` (nested dicts) into ``summary.json`` under a file lock; returns the result."""
    path = path or RESULTS / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        _merge(data, updates)
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def replace_summary(keys: list[str], value: Any, path: Path | None = None) -> dict[str, Any]:
    """Set ``summary[k0][k1]...`` to ``value``, replacing what was there (no stale sub-keys survive)."""
    path = path or RESULTS / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data


def provenance(settings: dict[str, Any]) -> dict[str, Any]:
    """The command line, settings and time that produced a set of figures."""
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": settings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
