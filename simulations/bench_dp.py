"""DP benchmark: the record-level DP presets, the privacy–utility curve and the ablation, in-process.

Every preset runs through :mod:`simulations.dp_union` (one DP step per device per round, all devices'
arithmetic computed over the union of their batches; the secure sum of ``fed-sdp-*`` without the
cryptography). Figures are P1 test at the best validation round, with the experimenter's central
evaluation (outside the protocol: under DP no device sends evaluation figures). ε is the largest
device's cumulative record-level ε (δ = ``dp.delta``), from the public settings.

Usage (``fedxrec bench dp`` is ``python -m simulations.bench_dp``)::

    fedxrec bench dp                                          # the DP presets on ml-100k
    fedxrec bench dp --parts curve,ablation                   # privacy–utility curve, ablation
    fedxrec bench dp --dataset ml-latest-small --presets fed-dp-eps8

Only these documented commands write ``results/``; ``--rounds`` (a shorter run) writes under
``runs/bench_dp/`` (:func:`simulations.results.output_for`).
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
from shared.config import DEFAULT_DATASET
from shared.pipeline import prepare
from simulations import options
from simulations.dp_union import UnionRun, run_union
from simulations.presets import ABLATION, CURVE_BASES, CURVE_EPSILONS, PRESETS
from simulations.results import provenance
from simulations.runner import run_config

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


def run(args: argparse.Namespace) -> int:
    out = options.output("dp", "bench_dp", args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    out.root.mkdir(parents=True, exist_ok=True)
    base = {"data.dataset": args.dataset, **({"data.dir": args.data_dir} if args.data_dir else {})}

    def figures(name: str, ov: dict[str, Any], keep: bool = False) -> dict[str, Any]:
        ov = {**ov, **base}
        if args.rounds:
            ov["num-server-rounds"] = args.rounds
        fig = run_dp(ov, out.run_dir(name) / "checkpoint" if keep else None)
        fig["provenance"] = provenance(ov)
        log.info("%s: %s", name, json.dumps({k: v for k, v in fig.items() if k not in ("settings", "curve")}))
        return fig

    parts = set(args.parts)
    if "ablation" in parts:  # check before any run: the ablation reuses the presets' figures
        runs = out.section(out.load()).get("runs", {})
        have = set(runs) | (set(args.presets) if "presets" in parts else set())
        for name, ov in ABLATION.items():
            if isinstance(ov, str) and ov not in have:
                raise SystemExit(
                    f"bench_dp: error: ablation step {name!r} reuses runs.{ov} of {out.summary}: "
                    f"run `--parts presets --presets {ov}` first (same settings)"
                )
    for name in args.presets if "presets" in parts else []:
        out.replace(["runs", name], figures(name, PRESETS[name], keep=True))
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
            out.replace(["privacy_utility", route], points)
        name = "privacy_utility.png" if out.dataset == DEFAULT_DATASET else f"privacy_utility_{out.dataset}.png"
        plot_curve(curves, out.root / name, out.dataset)
    if "ablation" in parts:
        runs = out.section(out.load()).get("runs", {})
        table = {}
        for name, ov in ABLATION.items():
            # a string names a preset with the same settings: its figures
            table[name] = runs[ov] if isinstance(ov, str) else figures(f"ablation {name}", ov)
        out.replace(["dp_ablation"], table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = options.parser("dp", "python -m simulations.bench_dp", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_dp"):
        return run(args)


def plot_curve(curves: dict[str, dict[str, dict[str, Any]]], path: Path, dataset: str = DEFAULT_DATASET) -> None:
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
    ax.set_ylabel(f"P1 test HR@10 ({dataset})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
