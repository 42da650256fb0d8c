"""Per-round records of a federated run: a JSON-lines log, a PNG plot and a final summary table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_log(path: Path, upto_round: int | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if upto_round is None or r["round"] <= upto_round]


def rewrite_log(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def best_round(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The round with the best federated validation HR@10 + NDCG@10 (P1 protocol)."""
    scored = [r for r in rows if r.get("fed", {}).get("val-hr@10") is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: r["fed"]["val-hr@10"] + r["fed"]["val-ndcg@10"])


def progress_line(row: dict[str, Any], num_rounds: int) -> str:
    f, c, t = row.get("fed", {}), row.get("central", {}), row.get("train", {})
    parts = [f"round {row['round']:>3}/{num_rounds}", f"loss {t.get('train-loss', float('nan')):.4f}"]
    if "val-hr@10" in f:
        parts.append(f"fed val HR/NDCG {f['val-hr@10']:.4f}/{f['val-ndcg@10']:.4f}")
        parts.append(f"test {f['test-hr@10']:.4f}/{f['test-ndcg@10']:.4f}")
    if "test-hr@10" in c:
        parts.append(f"central test {c['test-hr@10']:.4f}/{c['test-ndcg@10']:.4f}")
    if t.get("epsilon-max", 0) > 0:
        parts.append(f"eps max/mean {t['epsilon-max']:.2f}/{t['epsilon-mean']:.2f}")
    parts.append(f"up {t.get('upload-bytes-per-client', 0) / 1000:.1f} kB/client")
    parts.append(f"{row['seconds']:.1f}s")
    if row.get("dropped") or row.get("failed"):
        parts.append(f"dropped {row.get('dropped', 0)}, failed {row.get('failed', 0)}")
    return " | ".join(parts)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: the final round and the best-validation round."""
    best, last = best_round(rows), rows[-1] if rows else None
    lines = [f"{'':<22}{'round':>6}{'val HR@10':>11}{'val NDCG':>10}{'test HR@10':>12}{'test NDCG':>11}{'eps max':>9}"]
    for name, r in (("best validation round", best), ("last round", last)):
        if r is None:
            continue
        f = r.get("fed", {})
        lines.append(
            f"{name:<22}{r['round']:>6}{f.get('val-hr@10', float('nan')):>11.4f}{f.get('val-ndcg@10', float('nan')):>10.4f}"
            f"{f.get('test-hr@10', float('nan')):>12.4f}{f.get('test-ndcg@10', float('nan')):>11.4f}"
            f"{r.get('train', {}).get('epsilon-max', 0.0):>9.2f}"
        )
    if rows:
        secs = sum(r["seconds"] for r in rows)
        up = [r["train"].get("upload-bytes-per-client", 0.0) for r in rows if "train" in r]
        lines.append(
            f"{len(rows)} rounds in {secs / 60:.1f} min; upload {max(up, default=0):,.0f} bytes per client per round"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """HR@10 / NDCG@10 per round (federated and central) and ε, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for src, style in (("fed", "-"), ("central", ":")):
        for key in ("val-hr@10", "test-hr@10", "test-ndcg@10"):
            pts = [(r["round"], r[src][key]) for r in rows if key in r.get(src, {})]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{src} {key}")
    ax.set_xlabel("round")
    ax.set_title(title)
    ax.legend(fontsize=7)
    pts = [(r["round"], r["train"].get("epsilon-max", 0.0)) for r in rows if "train" in r]
    if pts:
        ax2.plot(*zip(*pts, strict=True), label="ε max (record level)")
    pts = [(r["round"], r["user-dp-epsilon"]) for r in rows if "user-dp-epsilon" in r]
    if pts:
        ax2.plot(*zip(*pts, strict=True), label="ε (user level)")
    ax2.set_xlabel("round")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
