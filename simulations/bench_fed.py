"""Federated benchmark: the presets on ml-100k, one user per node, merged into results/summary.json.

Writes ``runs.fed*`` and ``cost.*`` (merged key by key; other keys are kept), with per-round logs
and plots in ``results/fed/<preset>/``.

Usage::

    FEDXREC_DATA_DIR=/work/shared/data python -m simulations.bench_fed            # every preset
    python -m simulations.bench_fed --presets fed,fed-dp-eps8 --rounds 20          # a subset, shorter

Test figures are taken at the best federated-validation round (P1). ε is the largest cumulative
record-level ε over the nodes (δ as configured; a node never uses δ > 1/n), or the user-level ε of
the server-side DP wrapper.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.runlog import SELECTED_BY, best_round
from simulations.presets import PRESETS, SUMMARY_KEYS
from simulations.results import merge_summary
from simulations.runner import REPO, run_config, simulate

log = logging.getLogger(__name__)


def run_preset(name: str, overrides: dict[str, Any], runs_dir: Path, num_nodes: int) -> dict[str, Any]:
    """One simulation; returns its summary figures."""
    ov = {**overrides, "fed.run-name": name, "fed.out-dir": str(runs_dir), "fed.resume": False}
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    t0 = time.time()
    simulate(ov, num_supernodes=num_nodes)
    seconds = time.time() - t0
    rows = [json.loads(line) for line in (runs_dir / name / "rounds.jsonl").read_text().splitlines() if line.strip()]
    cfg = run_config(ov)
    user_dp = cfg["fed.user-dp"] != "off"
    private = bool(cfg["dp.enabled"]) or user_dp or bool(cfg["fed.secagg"])
    # under any DP or SecAgg no node sends evaluation figures: the experimenter's central evaluation picks
    source = "central" if private else "fed"
    best = best_round(rows, source=source)
    if best is None:
        raise RuntimeError(f"{name}: no round has {source} validation figures ({runs_dir / name / 'rounds.jsonl'})")
    last = rows[-1]
    eps = last.get("user-dp-epsilon") if user_dp else last.get("epsilon")
    return {
        "hr@10": best[source]["test-hr@10"],
        "ndcg@10": best[source]["test-ndcg@10"],
        "val_hr@10": best[source]["val-hr@10"],
        "best_round": best["round"],
        "selected_by": SELECTED_BY[source],
        "central_test_hr@10": best.get("central", {}).get("test-hr@10"),
        "epsilon": eps,
        "delta": (cfg["fed.user-dp-delta"] if user_dp else cfg["dp.delta"]) if (cfg["dp.enabled"] or user_dp) else None,
        "privacy_unit": "user" if user_dp else ("interaction" if cfg["dp.enabled"] else None),
        "rounds": len(rows),
        "seconds": round(seconds, 1),
        "round_seconds": float(np.mean([r["seconds"] for r in rows])),
        "upload_bytes_per_client_round": float(
            np.mean([r["train"].get("upload-bytes-per-client", 0.0) for r in rows if "train" in r])
        ),
        "nodes": num_nodes,
        "settings": dict(overrides),
    }


def dp_step_overhead(num_users: int = 60, seed: int = 0) -> dict[str, float]:
    """Time of one DP-SGD step over the same step without DP (same model, batch and per-sample path)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from client.config import NodeSpec, parse_run_config
    from client.data import load_node_data
    from client.train import build_model
    from shared.training import Sequences, make_batch, sample_losses

    torch.set_num_threads(1)
    rc = parse_run_config(run_config({"dp.enabled": True, "dp.train-tower": True, "dp.train-personal": True}))
    rng = np.random.default_rng(seed)
    t_dp = t_plain = 0.0
    for pid in range(num_users):
        data = load_node_data(NodeSpec(pid, 943), rc.core)
        seqs = Sequences.from_lists(data.split.train)
        users, steps = seqs.samples()
        idx = rng.permutation(len(users))[: rc.local.batch_size]
        b = make_batch(
            seqs,
            users[idx],
            steps[idx],
            history_len=None,
            negatives=rc.core.train.negatives,
            num_items=data.num_items,
            rng=rng,
        )
        for private in (False, True):
            model = build_model(rc.model, data)
            model.scale.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=1e-3)
            net: torch.nn.Module = model
            if private:
                net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
                opt = DPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=len(idx))
            t0 = time.perf_counter()
            opt.zero_grad()
            sample_losses(net(b["users"], None, b["candidates"]), "softmax", 0.1).mean().backward()
            opt.step()
            dt = time.perf_counter() - t0
            if private:
                t_dp += dt
                net._close()  # type: ignore[operator]
            else:
                t_plain += dt
    return {"dp_step_seconds": t_dp / num_users, "plain_step_seconds": t_plain / num_users, "ratio": t_dp / t_plain}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--presets", default=",".join(SUMMARY_KEYS), help=f"comma-separated, from {sorted(PRESETS)}")
    ap.add_argument("--rounds", type=int, default=0, help="override num-server-rounds of every preset")
    ap.add_argument("--nodes", type=int, default=943, help="simulated nodes (943: one user per node)")
    ap.add_argument("--results", default=str(REPO / "results"))
    ap.add_argument("--no-write", action="store_true", help="print, do not merge into summary.json")
    ap.add_argument("--dp-overhead-only", action="store_true", help="only measure cost.dp_step_overhead")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = Path(args.results)
    runs_dir = results / "fed"
    runs_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"runs": {}, "cost": {}}
    for name in [] if args.dp_overhead_only else args.presets.split(","):
        if name not in PRESETS:
            ap.error(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        ov = dict(PRESETS[name])
        if args.rounds:
            ov["num-server-rounds"] = args.rounds
        fig = run_preset(name, ov, runs_dir, args.nodes)
        fig["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        out["runs"][name] = fig
        log.info("%s: %s", name, json.dumps({k: v for k, v in fig.items() if k != "settings"}))
        if name == "fed":
            out["cost"]["upload_bytes_per_client_round"] = fig["upload_bytes_per_client_round"]
            out["cost"]["round_seconds"] = fig["round_seconds"]
        if not args.no_write:
            merge_summary({"runs": {name: fig}, "cost": out["cost"]}, results / "summary.json")
    ov = dp_step_overhead()
    out["cost"]["dp_step_overhead"] = ov["ratio"]
    out["cost"]["dp_step_seconds"] = ov["dp_step_seconds"]
    log.info("dp step overhead: %s", ov)
    if not args.no_write:
        merge_summary({"cost": out["cost"]}, results / "summary.json")
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
