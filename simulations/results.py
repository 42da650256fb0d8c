"""Writing benchmark figures: ``results/summary.json`` is merged key by key, never clobbered.

Which figures may go there is decided in one place, :func:`output_for`: only a documented benchmark
command at its documented settings writes ``results/`` (a subset of its documented runs, presets or
parts updates just those keys); a run with any other setting (epochs, rounds, nodes, seeds, ...) is ad
hoc and writes the same layout under ``runs/<bench>/``, saying so. Figures of a dataset other than
the default go under ``datasets.<name>.`` in either file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import DEFAULT_DATASET
from shared.io import atomic_write_text

RESULTS = Path(os.environ.get("FEDXREC_RESULTS_DIR", "results"))
#: ad-hoc benchmark runs write ``RUNS / <bench> / summary.json`` (and their logs, checkpoints) instead
RUNS = Path(os.environ.get("FEDXREC_RUNS_DIR", "runs"))


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


def machine() -> dict[str, Any]:
    """What a figure's speed (and a k >= 1 tower's matmul dtype) depends on: CPU, threads, native bf16."""
    import platform

    import torch

    from shared.model import bf16_supported

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_native": bf16_supported(),
    }


def provenance(settings: dict[str, Any]) -> dict[str, Any]:
    """The command line, settings, machine and time that produced a set of figures."""
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": settings,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass(frozen=True)
class Output:
    """Where one benchmark invocation writes: ``root/summary.json`` (results/ or runs/<bench>/)."""

    bench: str
    root: Path
    dataset: str = DEFAULT_DATASET
    #: the documented command at its documented settings (root is results/)
    documented: bool = True
    #: the settings off their defaults (empty when documented)
    changed: dict[str, Any] = field(default_factory=dict)
    #: false: figures are only logged (--no-write)
    write: bool = True

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def keys(self, *keys: str) -> list[str]:
        """Where a figure goes in summary.json: ``keys``, under ``datasets.<name>.`` for another dataset."""
        return list(keys) if self.dataset == DEFAULT_DATASET else ["datasets", self.dataset, *keys]

    def nest(self, updates: dict[str, Any]) -> dict[str, Any]:
        return updates if self.dataset == DEFAULT_DATASET else {"datasets": {self.dataset: updates}}

    def section(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The part of a loaded summary for this dataset (the top level for the default dataset)."""
        if self.dataset == DEFAULT_DATASET:
            return summary
        return summary.get("datasets", {}).get(self.dataset, {})

    def load(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    def merge(self, updates: dict[str, Any]) -> None:
        if self.write:
            merge_summary(self.nest(updates), self.summary)

    def replace(self, keys: list[str], value: Any) -> None:
        if self.write:
            replace_summary(self.keys(*keys), value, self.summary)

    def run_dir(self, name: str) -> Path:
        """A preset's logs and checkpoint: ``root/fed/<name>`` (``<dataset>-<name>`` for another dataset)."""
        return self.root / "fed" / (name if self.dataset == DEFAULT_DATASET else f"{self.dataset}-{name}")

    def readme(self) -> None:
        if self.write:
            from simulations.report import write_readme

            write_readme(self.root)


def changed_settings(args: Any, defaults: Mapping[str, Any], neutral: Iterable[str]) -> dict[str, Any]:
    """The options of ``args`` (a namespace) that differ from ``defaults``, ignoring the ``neutral`` ones."""
    skip = set(neutral)
    return {
        k: getattr(args, k) for k, d in defaults.items() if k not in skip and hasattr(args, k) and getattr(args, k) != d
    }


def output_for(
    bench: str,
    changed: Mapping[str, Any],
    *,
    dataset: str = DEFAULT_DATASET,
    results: str | Path = "",
    write: bool = True,
    announce: bool = True,
) -> Output:
    """Where ``bench`` writes, given its settings off their defaults (``changed``), and say so (stderr).

    No changed setting: the documented figures, ``results`` (default :data:`RESULTS`). Any changed
    setting: ``RUNS/<bench>/``, so that an ad-hoc run never replaces a committed figure.
    """
    shown = ", ".join(f"--{k.replace('_', '-')}={_show(v)}" for k, v in changed.items())
    prefix = "" if dataset == DEFAULT_DATASET else f" (under datasets.{dataset})"
    if changed:
        out = Output(bench, RUNS / bench, dataset, documented=False, changed=dict(changed), write=write)
        msg = f"{bench}: ad-hoc settings ({shown}): figures go to {out.summary}{prefix}, not to results/"
    else:
        out = Output(bench, Path(results) if results else RESULTS, dataset, write=write)
        msg = f"{bench}: documented settings: figures go to {out.summary}{prefix}"
    if not write:
        msg = f"{bench}: --no-write: figures are only logged"
    if announce:
        print(msg, file=sys.stderr)
    return out


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
