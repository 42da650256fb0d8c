"""DP benchmark: the record-level DP presets, the privacy–utility curve and the ablation, in-process.

Every preset runs through :mod:`simulations.dp_union` (one DP step per device per round, all devices'
arithmetic computed over the union of their batches; the secure sum of ``fed-sdp-*`` without the
cryptography). Figures are P1 test at the best validation round, with the experimenter's central
evaluation (outside the protocol: under DP no device sends evaluation figures). ε is the largest
device's cumulative record-level ε (δ = ``dp.delta``), from the public settings.

Usage::

    python -m simulations.bench_dp                                # the DP presets on ml-100k
    python -m simulations.bench_dp --parts curve,ablation         # privacy–utility curve, ablation
    python -m simulations.bench_dp --dataset ml-latest-small --presets fed-dp-eps8

Only these documented commands write ``results/``; ``--rounds`` (a shorter run) writes under ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from client.config import parse_run_config
from server.config import parse_server_config
from server.loop import initial_model
from shared.checkpoint import save_checkpoint
from shared.pipeline import prepare
from simulations.dp_union import UnionRun, run_union
from simulations.presets import ABLATION, CURVE_BASES, CURVE_EPSILONS, DP_SUMMARY_KEYS, PRESETS
from simulations.results import provenance, replace_summary
from simulations.runner import REPO, run_config

log = logging.getLogger(__name__)


def run_dp(overrides: dict[str, Any], checkpoint: Path | None = None) -> dict[str, Any]:
    """One in-process DP federation; returns its figures (test at the best validation round).

    ``checkpoint``: where to save the best validation round's model (what the audit attacks).
    """
    cfg = run_config(overrides)
    crc, src = parse_run_config(cfg), parse_server_config(cfg)
    prep = prepare(crc.core, progress=False)
    model = initial_model(src, prep)
    run = UnionRun(
        pcfg=crc.dp,
        tcfg=crc.core.train,
        rounds=crc.num_rounds,
        lr=crc.local.lr,
        personal_lr_scale=crc.local.personal_lr_scale,
        momentum=src.fed.server_momentum if src.fed.strategy == "fedavgm" else 0.0,
        fraction=src.fed.fraction_train,
        eval_every=src.fed.eval_every,
    )
    t0 = time.time()
    rows = run_union(model, prep.split, run)
    scored = [r for r in rows if "val-hr@10" in r and r["round"] > 0]
    best = max(scored, key=lambda r: r["val-hr@10"] + r["val-ndcg@10"])
    if checkpoint is not None:  # the model of the best validation round (run_union restores it)
        meta = {"settings": dict(overrides), "round": best["round"], "selected-by": "experimenter central validation"}
        save_checkpoint(model, prep.dataset.catalogue.ids, checkpoint, meta=meta)
    return {
        "hr@10": best["test-hr@10"],
        "ndcg@10": best["test-ndcg@10"],
        "val_hr@10": best["val-hr@10"],
        "best_round": best["round"],
        "round0_hr@10": rows[0]["test-hr@10"],
        "epsilon": max(r.get("epsilon", 0.0) for r in rows),
        "delta": crc.dp.delta,
        "noise_multiplier": rows[0]["noise-multiplier"],
        "privacy_unit": "interaction",
        "route": crc.dp.mode,
        "trust": "secure aggregation (SecAgg+) and honest noise shares" if crc.dp.mode == "distributed" else "none",
        "rounds": crc.num_rounds,
        "seconds": round(time.time() - t0, 1),
        "evaluation": "experimenter: central P1 on every user, outside the protocol",
        "simulation": "in-process union of one-step devices (simulations/dp_union.py)",
        "curve": [{k: r[k] for k in ("round", "val-hr@10", "test-hr@10", "epsilon") if k in r} for r in scored],
        "settings": dict(overrides),
    }


def _keys(dataset: str, *keys: str) -> list[str]:
    """Where a figure goes in summary.json: ``keys``, under ``datasets.<name>.`` for another dataset."""
    return list(keys) if dataset == "ml-100k" else ["datasets", dataset, *keys]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulations.bench_dp", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--presets", default=",".join(DP_SUMMARY_KEYS), help=f"comma-separated, from {sorted(PRESETS)}")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument(
        "--parts",
        default="presets",
        help="comma-separated: presets (the DP presets), curve (HR@10 against ε), ablation",
    )
    ap.add_argument("--rounds", type=int, default=0, help="shorter runs (written under runs/, not results/)")
    ap.add_argument("--results", default=str(REPO / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    documented = args.rounds == 0
    out_dir = Path(args.results) if documented else REPO / "runs" / "bench_dp"
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.json"
    base = {"data.dataset": args.dataset}

    def figures(name: str, ov: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        ov = {**ov, **base}
        if args.rounds:
            ov["num-server-rounds"] = args.rounds
        where = out_dir / "fed" / (name if args.dataset == "ml-100k" else f"{args.dataset}-{name}") / "checkpoint"
        fig = run_dp(ov, where if keep else None)
        fig["provenance"] = provenance(ov)
        log.info("%s: %s", name, json.dumps({k: v for k, v in fig.items() if k not in ("settings", "curve")}))
        return fig

    parts = set(args.parts.split(","))
    if parts - {"presets", "curve", "ablation"}:
        ap.error(f"unknown parts {sorted(parts - {'presets', 'curve', 'ablation'})}; known: presets, curve, ablation")
    for name in [p for p in args.presets.split(",") if p] if "presets" in parts else []:
        if name not in PRESETS:
            ap.error(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        replace_summary(_keys(args.dataset, "runs", name), figures(name, PRESETS[name], keep=True), summary)
    if "curve" in parts:
        curves: dict[str, dict[str, Any]] = {}
        for route, preset in CURVE_BASES.items():
            points = {}
            for eps in CURVE_EPSILONS:
                # ε = ∞: the same recipe with (almost) no noise
                ov = (
                    {**PRESETS[preset], "dp.target-epsilon": eps}
                    if eps
                    else {
                        **PRESETS[preset],
                        "dp.target-epsilon": 0.0,
                        "dp.noise-multiplier": 1e-6,
                    }
                )
                points["inf" if not eps else f"{eps:g}"] = figures(f"curve {route} eps={eps or 'inf'}", ov)
            curves[route] = points
            replace_summary(_keys(args.dataset, "privacy_utility", route), points, summary)
        name = "privacy_utility.png" if args.dataset == "ml-100k" else f"privacy_utility_{args.dataset}.png"
        plot_curve(curves, out_dir / name)
    if "ablation" in parts:
        done = json.loads(summary.read_text()) if summary.exists() else {}
        runs = (done if args.dataset == "ml-100k" else done.get("datasets", {}).get(args.dataset, {})).get("runs", {})
        table = {}
        for name, ov in ABLATION.items():
            if isinstance(ov, str):  # the same settings as a preset: its figures (run `--parts presets` first)
                if ov not in runs:
                    ap.error(f"ablation step {name!r} reuses runs.{ov}: run `--parts presets` first")
                table[name] = runs[ov]
            else:
                table[name] = figures(f"ablation {name}", ov)
        replace_summary(_keys(args.dataset, "dp_ablation"), table, summary)
    return 0


def plot_curve(curves: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    """P1 test HR@10 against ε for each route (dashed: the same recipe without noise), log-scaled ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (route, points), color in zip(curves.items(), ("C0", "C1"), strict=False):
        finite = sorted((float(k), v["hr@10"]) for k, v in points.items() if k != "inf")
        ax.plot([e for e, _ in finite], [h for _, h in finite], "o-", color=color, label=f"{route} DP-SGD")
        if "inf" in points:
            ax.axhline(points["inf"]["hr@10"], ls="--", color=color, lw=0.8, label=f"{route}, no noise (ε = ∞)")
    ax.set_xscale("log")
    ax.set_xlabel("ε per interaction (δ = 1e-5)")
    ax.set_ylabel("P1 test HR@10 (ml-100k)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
