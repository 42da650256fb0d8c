"""Per-round records of a federated run: a JSON-lines log, a PNG plot and a final summary table.

A row's validation and test figures come from one of two sources: ``fed`` (federated evaluation: the
nodes' own hit sums) or ``central`` (the experimenter's evaluation of the global model on the whole
dataset, in simulation, outside the protocol; a private run has only this one and labels its rows
``"eval": "experimenter"``). The best round is chosen on one named source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the label of rows (and of the best-round choice) whose figures the experimenter computed centrally
EXPERIMENTER = "experimenter"
#: who chose the best round, per source
SELECTED_BY = {
    "fed": "federated evaluation (the nodes' validation sums)",
    "central": f"{EXPERIMENTER} (central validation on the whole dataset, outside the protocol)",
}


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


def _check_source(source: str) -> None:
    if source not in SELECTED_BY:
        raise ValueError(f"source must be one of {sorted(SELECTED_BY)}, got {source!r}")


def best_round(rows: list[dict[str, Any]], *, source: str = "fed") -> dict[str, Any] | None:
    """The round with the best validation HR@10 + NDCG@10 (P1 protocol) in ``source`` (``fed`` or ``central``).

    Raises
    ------
    ValueError
        An unknown ``source``.
    """
    _check_source(source)
    scored = [r for r in rows if r.get(source, {}).get("val-hr@10") is not None]
    if not scored:
        return None
    return max(scored, key=lambda r: r[source]["val-hr@10"] + r[source]["val-ndcg@10"])


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(row: dict[str, Any], num_rounds: int, *, eta: float | None = None) -> str:
    """One line per round; ``eta``: the seconds the remaining rounds should take (shown as ``ETA``)."""
    f, c, t = row.get("fed", {}), row.get("central", {}), row.get("train", {})
    parts = [f"round {row['round']:>3}/{num_rounds}"]
    if "train-loss" in t:
        parts.append(f"loss {t['train-loss']:.4f}")
    if row.get("skipped"):
        parts.append(f"skipped: {row['skipped']}")
    if "val-hr@10" in f:
        parts.append(f"fed val HR/NDCG {f['val-hr@10']:.4f}/{f['val-ndcg@10']:.4f}")
        parts.append(f"test {f['test-hr@10']:.4f}/{f['test-ndcg@10']:.4f}")
    if "test-hr@10" in c:
        who = "experimenter" if row.get("eval") == EXPERIMENTER else "central"
        parts.append(f"{who} val {c['val-hr@10']:.4f} test {c['test-hr@10']:.4f}/{c['test-ndcg@10']:.4f}")
    if "epsilon" in row:  # record level, computed by the server from public settings
        parts.append(f"eps {row['epsilon']:.2f} (delta {row['delta']:.0e}, sigma {row['noise-multiplier']:.3g})")
    elif t.get("epsilon-max", 0) > 0:
        parts.append(f"eps max/mean {t['epsilon-max']:.2f}/{t['epsilon-mean']:.2f}")
    if "user-dp-epsilon" in row:
        parts.append(f"user-level eps {row['user-dp-epsilon']:.2f}")
    if "upload-bytes-per-client" in t:
        parts.append(f"up {t['upload-bytes-per-client'] / 1000:.1f} kB/client")
    parts.append(f"{row['seconds']:.1f}s")
    if row.get("dropped") or row.get("failed"):
        parts.append(f"dropped {row.get('dropped', 0)}, failed {row.get('failed', 0)}")
    if eta is not None and num_rounds > row["round"]:
        parts.append(f"ETA {_duration(eta)}")
    return " | ".join(parts)


def summary_table(rows: list[dict[str, Any]], *, source: str = "fed") -> str:
    """A plain-text table: the final round and the best-validation round, with the figures of ``source``."""
    best, last = best_round(rows, source=source), rows[-1] if rows else None
    lines = [
        f"figures and best round: {SELECTED_BY[source]}",
        f"{'':<22}{'round':>6}{'val HR@10':>11}{'val NDCG':>10}{'test HR@10':>12}{'test NDCG':>11}{'eps':>9}",
    ]
    for name, r in (("best validation round", best), ("last round", last)):
        if r is None:
            continue
        f = r.get(source, {})
        eps = r.get("epsilon", r.get("user-dp-epsilon", r.get("train", {}).get("epsilon-max", 0.0)))
        lines.append(
            f"{name:<22}{r['round']:>6}{f.get('val-hr@10', float('nan')):>11.4f}{f.get('val-ndcg@10', float('nan')):>10.4f}"
            f"{f.get('test-hr@10', float('nan')):>12.4f}{f.get('test-ndcg@10', float('nan')):>11.4f}{eps:>9.2f}"
        )
    if rows:
        secs = sum(r["seconds"] for r in rows)
        up = [r["train"].get("upload-bytes-per-client", 0.0) for r in rows if "train" in r]
        skipped = sum(1 for r in rows if r.get("skipped"))
        lines.append(
            f"{len(rows)} rounds ({skipped} skipped) in {secs / 60:.1f} min; "
            f"upload {max(up, default=0):,.0f} bytes per client per round"
        )
        last = rows[-1]
        if "epsilon" in last:
            lines.append(
                f"record-level DP: ε = {last['epsilon']:.3f} at δ = {last['delta']:g} for the most-sampled node "
                f"({last['max-participation']} rounds, σ = {last['noise-multiplier']:.4g}; public settings)"
            )
        if "user-dp-epsilon" in last:
            lines.append(
                f"user-level DP: ε = {last['user-dp-epsilon']:.3f} for the most-sampled node "
                f"({last['user-dp-max-participation']} rounds)"
            )
    return "\n".join(lines)


def write_summary(rows: list[dict[str, Any]], out: Path, title: str, *, source: str) -> str:
    """Write ``rounds.png`` and ``summary.json`` (best round on ``source``, and who chose it); returns the table."""
    _check_source(source)
    if rows:
        plot(rows, out / "rounds.png", title)
    summary = {
        "best": best_round(rows, source=source),
        "best-selected-by": SELECTED_BY[source],
        "last": rows[-1] if rows else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary_table(rows, source=source)


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
    if ax.get_legend_handles_labels()[0]:  # a run without evaluation rounds has no curves here
        ax.legend(fontsize=7)
    pts = [(r["round"], r.get("epsilon", r.get("train", {}).get("epsilon-max", 0.0))) for r in rows]
    if pts:
        ax2.plot(*zip(*pts, strict=True), label="ε max (record level)")
    pts = [(r["round"], r["user-dp-epsilon"]) for r in rows if "user-dp-epsilon" in r]
    if pts:
        ax2.plot(*zip(*pts, strict=True), label="ε (user level)")
    ax2.set_xlabel("round")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
