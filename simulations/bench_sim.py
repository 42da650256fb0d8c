"""Simulation cost: seconds per client and per round of the main job's simulation at 610, 943 and 10,000 nodes.

Each scale runs the main job's recipe (the ``[tool.flwr.app.config]`` defaults: record-level DP-SGD on
every device, every node in every round) as an in-process Flower simulation (Ray backend, one CPU per
node, as many node workers as this machine has CPUs), one user per node:

* ``610``: ml-latest-small (610 users, 9,742 items);
* ``943``: ml-100k (943 users, 1,682 items);
* ``10000``: synthetic, the ml-100k catalogue with 10,000 users, each a copy of a seeded random
  ml-100k user's ratings (so the per-client work has ml-100k's distribution of history lengths).

A round's cost is its ``train-seconds`` (sampling, the nodes' training and the aggregation; no
evaluation) from the run's ``rounds.jsonl``, averaged over the rounds after the first (which also starts
the node workers); per client: that over the replies of the round. Writes ``cost.sim_seconds_per_client_round.<nodes>``,
``cost.sim_round_seconds.<nodes>`` and ``cost.sim`` (details, provenance) into results/summary.json and
the plot ``results/sim_cost.png``. ``--rounds`` off its default makes an ad-hoc run under ``runs/bench_sim/``.

Usage::

    fedxrec bench sim                          # the three scales (python -m simulations.bench_sim)
    fedxrec bench sim --scales 943             # one scale (updates only its keys)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from simulations import options
from simulations.results import provenance
from simulations.runner import run_config, simulate

log = logging.getLogger(__name__)

#: nodes -> (dataset, users of a synthetic copy of it, or 0 for the dataset itself)
SCALES: dict[str, tuple[str, int]] = {
    "610": ("ml-latest-small", 0),
    "943": ("ml-100k", 0),
    "10000": ("ml-100k", 10_000),
}
#: the run-config overrides of every scale: evaluation only at the last round, no checkpoint resume
COST_OVERRIDES: dict[str, Any] = {"fed.eval-every": 10_000, "fed.central-eval": False, "fed.resume": False}


def synthetic_ml100k(source: Path, users: int, out: Path, *, seed: int = 0) -> Path:
    """A data directory in ml-100k layout whose ``u.data`` has ``users`` users resampled from ``source``'s.

    User ``k`` (1-based) gets every rating of one ml-100k user drawn with replacement by a seeded
    generator; ``u.item``, ``u.genre`` and the KG are the source's (copied, linked). Written to a
    temporary folder first, so a half-written directory never replaces a complete one.
    """
    from shared.data import read_ml100k_ratings

    src = source / "ml-100k"
    done = out / "ml-100k" / ".complete"
    stamp = f"{(src / 'u.data').stat().st_size} {users} {seed}"
    if done.exists() and done.read_text() == stamp:
        return out
    u, items, ratings, ts = read_ml100k_ratings(src / "u.data")
    ids = np.unique(u)
    rows = {uid: np.flatnonzero(u == uid) for uid in ids.tolist()}
    picks = np.random.default_rng(seed).choice(ids, size=users, replace=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "ml-100k").mkdir(parents=True)
    lines = []
    for k, uid in enumerate(picks.tolist(), start=1):
        for r in rows[uid].tolist():
            lines.append(f"{k}\t{items[r]}\t{ratings[r]:g}\t{ts[r]}")
    (tmp / "ml-100k" / "u.data").write_text("\n".join(lines) + "\n")
    for name in ("u.item", "u.genre"):
        shutil.copyfile(src / name, tmp / "ml-100k" / name)
    if (source / "kg").exists():
        os.symlink((source / "kg").resolve(), tmp / "kg")
    (tmp / "ml-100k" / ".complete").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def measure(name: str, overrides: dict[str, Any], nodes: int, runs_dir: Path) -> dict[str, Any]:
    """One simulation of ``nodes`` nodes; its cost per round and per client-round."""
    ov = {**overrides, **COST_OVERRIDES, "fed.run-name": name, "fed.out-dir": str(runs_dir.resolve())}
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    t0 = time.time()
    simulate(ov, num_supernodes=nodes)
    seconds = time.time() - t0
    rows = [json.loads(x) for x in (runs_dir / name / "rounds.jsonl").read_text().splitlines() if x.strip()]
    if len(rows) < 2:
        raise RuntimeError(f"{name}: {len(rows)} round(s) logged; the cost needs at least 2")
    steady = rows[1:]
    failed = sum(r["failed"] + r["dropped"] for r in rows)
    per_round = float(np.mean([r["train-seconds"] for r in steady]))
    clients = float(np.mean([r["replies"] for r in steady]))
    return {
        "nodes": nodes,
        "clients_per_round": clients,
        "round_seconds": per_round,
        "seconds_per_client_round": per_round / clients,
        "first_round_seconds": rows[0]["train-seconds"],
        "rounds": len(rows),
        "failed_or_dropped": failed,
        "seconds": round(seconds, 1),
        # what the whole run cost besides its rounds' training: start-up, the last round's evaluation, shutdown
        "other_seconds": round(seconds - sum(r["train-seconds"] for r in rows), 1),
        "upload_bytes_per_client_round": float(np.mean([r["train"].get("upload-bytes-per-client", 0.0) for r in rows])),
    }


def scale_overrides(scale: str, data_dir: Path, work: Path) -> tuple[dict[str, Any], int]:
    """The data overrides and node count of a scale (building its synthetic data where it has one)."""
    dataset, synthetic = SCALES[scale]
    if synthetic:
        root = synthetic_ml100k(data_dir, synthetic, work / f"synthetic-{synthetic}")
        return {"data.dataset": dataset, "data.dir": str(root.resolve())}, synthetic
    data = {"data.dataset": dataset, "data.dir": str(data_dir.resolve())}
    return data, options.num_users(dataset, str(data_dir))


def plot(figures: dict[str, dict[str, Any]], path: Path) -> None:
    """Seconds per client-round and per round against the node count, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(figures.values(), key=lambda f: f["nodes"])
    x = [f["nodes"] for f in pts]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot(x, [1000 * f["seconds_per_client_round"] for f in pts], "o-")
    ax.set_xscale("log")
    ax.set_xlabel("nodes (one user each)")
    ax.set_ylabel("ms per client-round")
    ax.set_title("simulation cost per client")
    ax2.plot(x, [f["round_seconds"] for f in pts], "o-")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("nodes (every node trains in every round)")
    ax2.set_ylabel("seconds per round")
    ax2.set_title(f"round time ({os.cpu_count()} CPUs, one node worker each)")
    for a in (ax, ax2):
        a.set_xticks(x, [str(n) for n in x])
        a.minorticks_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = options.output("sim", "bench_sim", args)
    data_dir = options.resolve_data_dir(args.data_dir)
    work = Path(args.work_dir)
    runs_dir = work / "runs"
    figures: dict[str, dict[str, Any]] = {}
    for scale in args.scales:
        data, nodes = scale_overrides(scale, data_dir, work)
        log.info("scale %s: %d nodes, %s", scale, nodes, data["data.dataset"])
        fig = measure(f"sim-{scale}", {**data, "num-server-rounds": args.rounds}, nodes, runs_dir)
        fig["dataset"] = data["data.dataset"] + (" (synthetic users)" if SCALES[scale][1] else "")
        figures[scale] = fig
        log.info("scale %s: %s", scale, json.dumps(fig))
        out.merge(
            {
                "cost": {
                    "sim_seconds_per_client_round": {scale: fig["seconds_per_client_round"]},
                    "sim_round_seconds": {scale: fig["round_seconds"]},
                    "sim": {scale: fig},
                }
            }
        )
    cfg = run_config({"num-server-rounds": args.rounds})
    settings = {
        "recipe": "the main job's ([tool.flwr.app.config] defaults)",
        "rounds": args.rounds,
        "dp.enabled": cfg["dp.enabled"],
        "fed.fraction-train": cfg["fed.fraction-train"],
        "overrides": COST_OVERRIDES,
        "cpus": os.cpu_count(),
        "node_workers": os.cpu_count(),
        "measured": "train-seconds of rounds 2.. (round 1 also starts the workers); per client: over the replies",
    }
    out.merge({"cost": {"sim": {"provenance": provenance(settings)}}})
    if out.write:
        merged = out.section(out.load()).get("cost", {}).get("sim", {})
        plot({k: v for k, v in merged.items() if k in SCALES}, out.root / "sim_cost.png")
    out.readme()
    print(json.dumps(figures, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = options.parser("sim", "python -m simulations.bench_sim", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_sim"):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
