"""Federated benchmark: the presets on ml-100k, one user per node, merged into results/summary.json.

Writes ``runs.fed*`` and ``cost.*`` (merged key by key; other keys are kept), with per-round logs
and plots in ``results/fed/<preset>/``. Another ``--dataset`` writes under ``datasets.<name>.``
(logs in ``results/fed/<name>-<preset>/``); ``--rounds`` or ``--num-nodes`` make an ad-hoc run, written
under ``runs/bench_fed/`` instead (:func:`simulations.results.output_for`).

Usage::

    fedxrec bench fed                                  # the summary presets (python -m simulations.bench_fed)
    fedxrec bench fed --presets fed --rounds 20        # ad hoc: a shorter run, under runs/bench_fed/

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
from simulations import options
from simulations.presets import PRESETS
from simulations.runner import run_config, simulate

log = logging.getLogger(__name__)


def run_preset(
    name: str, overrides: dict[str, Any], runs_dir: Path, num_nodes: int, *, run_name: str = ""
) -> dict[str, Any]:
    """One simulation (logs in ``runs_dir/<run_name or name>``); returns its summary figures."""
    run_name = run_name or name
    ov = {**overrides, "fed.run-name": run_name, "fed.out-dir": str(runs_dir.resolve()), "fed.resume": False}
    shutil.rmtree(runs_dir / run_name, ignore_errors=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    simulate(ov, num_supernodes=num_nodes)
    seconds = time.time() - t0
    log_path = runs_dir / run_name / "rounds.jsonl"
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    cfg = run_config(ov)
    user_dp = cfg["fed.user-dp"] != "off"
    private = bool(cfg["dp.enabled"]) or user_dp or bool(cfg["fed.secagg"])
    # under any DP or SecAgg no node sends evaluation figures: the experimenter's central evaluation picks
    source = "central" if private else "fed"
    best = best_round(rows, source=source)
    if best is None:
        raise RuntimeError(f"{name}: no round has {source} validation figures ({log_path})")
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


def dp_step_overhead(
    data: dict[str, Any], *, num_partitions: int, num_users: int = 60, seed: int = 0
) -> dict[str, float]:
    """Time of one DP-SGD step over the same step without DP (same model, batch and per-sample path).

    Measured on the first ``num_users`` of ``num_partitions`` nodes of the dataset in ``data``
    (``data.*`` run-config overrides).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from client.config import NodeSpec, parse_run_config
    from client.data import load_node_data
    from client.train import build_model
    from shared.training import Sequences, make_batch, sample_losses

    torch.set_num_threads(1)
    rc = parse_run_config(run_config({**data, "dp.enabled": True, "dp.train-tower": True, "dp.train-personal": True}))
    rng = np.random.default_rng(seed)
    t_dp = t_plain = 0.0
    num_users = min(num_users, num_partitions)
    for pid in range(num_users):
        node = load_node_data(NodeSpec(pid, num_partitions), rc.core)
        seqs = Sequences.from_lists(node.split.train)
        users, steps = seqs.samples()
        idx = rng.permutation(len(users))[: rc.local.batch_size]
        b = make_batch(
            seqs,
            users[idx],
            steps[idx],
            history_len=None,
            negatives=rc.core.train.negatives,
            num_items=node.num_items,
            rng=rng,
        )
        for private in (False, True):
            model = build_model(rc.model, node)
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


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    users = options.num_users(args.dataset, args.data_dir)
    if args.num_nodes == users:  # the default, spelt out
        args.num_nodes = None
    out = options.output("fed", "bench_fed", args)
    data = {"data.dataset": args.dataset, **({"data.dir": args.data_dir} if args.data_dir else {})}
    nodes = args.num_nodes or users
    if nodes > users:
        raise SystemExit(f"bench_fed: error: --num-nodes {nodes} exceeds the {users} users of {args.dataset}")
    figures: dict[str, Any] = {"runs": {}, "cost": {}}
    for name in [] if args.dp_overhead_only else args.presets:
        ov = {**PRESETS[name], **data}
        if args.rounds:
            ov["num-server-rounds"] = args.rounds
        run_dir = out.run_dir(name)
        fig = run_preset(name, ov, run_dir.parent, nodes, run_name=run_dir.name)
        fig["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        figures["runs"][name] = fig
        log.info("%s: %s", name, json.dumps({k: v for k, v in fig.items() if k != "settings"}))
        if name == "fed":
            figures["cost"]["upload_bytes_per_client_round"] = fig["upload_bytes_per_client_round"]
            figures["cost"]["round_seconds"] = fig["round_seconds"]
        if name == "fed-k1":  # a round of the k = 1 recipe, and what each of its devices uploads
            figures["cost"]["fed_k1_round_seconds"] = fig["round_seconds"]
            figures["cost"]["fed_k1_upload_bytes_per_client_round"] = fig["upload_bytes_per_client_round"]
        out.merge({"runs": {name: fig}, "cost": figures["cost"]})
    ov = dp_step_overhead(data, num_partitions=nodes)
    figures["cost"]["dp_step_overhead"] = ov["ratio"]
    figures["cost"]["dp_step_seconds"] = ov["dp_step_seconds"]
    log.info("dp step overhead: %s", ov)
    out.merge({"cost": figures["cost"]})
    print(json.dumps(figures, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = options.parser("fed", "python -m simulations.bench_fed", (__doc__ or "").split("\n")[0]).parse_args(argv)
    with options.clean_errors("bench_fed"):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
