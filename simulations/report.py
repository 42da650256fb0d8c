"""Render ``results/README.md`` (readable tables) from ``results/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.io import atomic_write_text
from simulations.results import RESULTS

RUN_COLUMNS = ("hr@10", "ndcg@10", "recall@20", "ndcg@20", "epsilon", "delta", "rounds", "best_epoch", "seconds")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _flat(prefix: str, obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if k in ("provenance",) or k.endswith("provenance"):
                continue
            out += _flat(f"{prefix}.{k}" if prefix else k, v)
        return out
    return [(prefix, obj)]


def render(summary: dict[str, Any]) -> str:
    lines = [
        "# Results",
        "",
        "Generated from `results/summary.json` by `simulations/report.py`; every figure was measured by the",
        "command recorded beside it in `summary.json` (`provenance`). Regenerate with the benchmark commands",
        "in the README.",
        "",
    ]
    runs = summary.get("runs", {})
    if runs:
        lines += ["## Accuracy (ml-100k, P1: test at the best validation epoch/round)", ""]
        lines += ["| run | " + " | ".join(RUN_COLUMNS) + " | command |", "|---" * (len(RUN_COLUMNS) + 2) + "|"]
        for name, r in runs.items():
            cmd = (r.get("provenance", {}).get("command") or r.get("command", "")) if isinstance(r, dict) else ""
            lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c)) for c in RUN_COLUMNS) + f" | `{cmd}` |")
        lines.append("")
    lines += _dp_tables(summary)
    for section in sorted(k for k in summary if k not in ("runs", "dp_ablation", "privacy_utility")):
        rows = _flat("", summary[section])
        if not rows:
            continue
        lines += [f"## {section}", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
        prov = summary[section].get("provenance") if isinstance(summary[section], dict) else None
        if prov:
            lines += ["", f"Command: `{prov.get('command', '')}`"]
        lines.append("")
    return "\n".join(lines)


DP_COLUMNS = ("hr@10", "ndcg@10", "val_hr@10", "best_round", "round0_hr@10", "epsilon", "noise_multiplier", "seconds")


def _dp_tables(summary: dict[str, Any]) -> list[str]:
    """The record-level DP ablation and the privacy–utility points, as tables (``bench_dp``)."""
    lines: list[str] = []
    abl = summary.get("dp_ablation", {})
    if abl:
        lines += [
            "## Record-level DP ablation (ml-100k, ε = 8, δ = 1e-5; experimenter's central P1)",
            "",
            "| step | " + " | ".join(DP_COLUMNS) + " |",
            "|---" * (len(DP_COLUMNS) + 1) + "|",
        ]
        lines += [f"| {k} | " + " | ".join(_fmt(v.get(c)) for c in DP_COLUMNS) + " |" for k, v in abl.items()]
        cmd = next(iter(abl.values())).get("provenance", {}).get("command", "")
        lines += ["", f"Command: `{cmd}`", ""]
    curve = summary.get("privacy_utility", {})
    if curve:
        lines += ["## Privacy–utility (ml-100k, P1 test HR@10 at the best validation round)", ""]
        lines += ["![HR@10 against ε](privacy_utility.png)", ""]
        eps = sorted({k for pts in curve.values() for k in pts}, key=lambda k: float("inf") if k == "inf" else float(k))
        lines += ["| route | " + " | ".join(f"ε = {e}" for e in eps) + " |", "|---" * (len(eps) + 1) + "|"]
        for route, pts in curve.items():
            lines.append(f"| {route} | " + " | ".join(_fmt(pts.get(e, {}).get("hr@10")) for e in eps) + " |")
        lines.append("")
    return lines


def write_readme(results: Path | None = None) -> None:
    results = results or RESULTS
    path = results / "summary.json"
    if path.exists():
        atomic_write_text(results / "README.md", render(json.loads(path.read_text())))


if __name__ == "__main__":
    write_readme()
