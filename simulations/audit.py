"""Privacy and fault audit (issue 6): ``python -m simulations.audit [--parts mia,leak,faults]``.

Writes ``privacy.*`` and ``faults.*`` into ``results/summary.json`` (merged, never clobbered) and
re-renders ``results/README.md``. The trained models of the privacy part are checkpointed under
``runs/audit/<run>-<half>/checkpoint`` and reused by later invocations (``--retrain`` to redo them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from simulations.runner import ENV

log = logging.getLogger("simulations.audit")

PARTS = ("mia", "leak", "faults")


def _runs_dir() -> Path:
    return Path(os.environ.get("FEDXREC_RUNS_DIR", "runs")).resolve() / "audit"


def replace_in_summary(section: str, entries: dict[str, Any]) -> None:
    """Set ``summary[section][key] = value`` for each entry, replacing (not merging) old values.

    Used for this audit's own keys, so that a re-run leaves no stale sub-keys behind; takes the same
    lock as :func:`simulations.results.merge_summary`.
    """
    import fcntl
    import json

    from shared.io import atomic_write_text
    from simulations.results import RESULTS

    path = RESULTS / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault(section, {}).update(entries)
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _privacy(parts: set[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from client.config import LocalConfig, parse_run_config
    from shared.checkpoint import load_checkpoint, save_checkpoint
    from shared.model import Recommender
    from shared.pipeline import prepare
    from simulations import audit_privacy as ap
    from simulations.presets import PRESETS
    from simulations.runner import run_config

    torch.set_num_threads(int(os.environ.get("FEDXREC_AUDIT_THREADS", "1")))
    overrides: dict[str, Any] = {"data.dir": args.data_dir} if args.data_dir else {}
    rc = parse_run_config(run_config(overrides))
    prep = prepare(rc.core, progress=False)
    run = ap.AuditRun(rounds=args.rounds, nodes_per_half=args.nodes_per_half, local=LocalConfig(batch_size=64))
    halves = tuple(h[: args.users_per_half] for h in ap.half_split(prep.split.num_users, run.seed))
    models: dict[str, dict[str, Recommender]] = {}
    train_stats: dict[str, dict[str, Any]] = {}
    for name in ap.RUNS:
        models[name] = {}
        for h, users in zip("AB", halves, strict=True):
            ck_dir = _runs_dir() / f"{name}-{h}" / "checkpoint"
            ck = load_checkpoint(ck_dir) if ck_dir.exists() and not args.retrain else None
            if ck is not None and ck.meta.get("audit") == run.settings() and ck.meta.get("users") == len(users):
                m = Recommender(ck.config, prep.cache, 1, prep.backbone)  # type: ignore[union-attr]
                m.load_partial({k: v.float() for k, v in ck.shared.items()})  # type: ignore[union-attr]
                stats = ck.meta.get("stats", {})  # type: ignore[union-attr]
            else:
                log.info("training %s on half %s (%d users)", name, h, len(users))
                m, stats = ap.fedavg_train(prep, users, rc, run, epsilon=ap.RUN_EPSILON[name])
                save_checkpoint(
                    m,
                    prep.dataset.catalogue.ids,
                    ck_dir,
                    meta={"stats": stats, "audit": run.settings(), "users": len(users)},
                )
            models[name][h] = m
            train_stats[f"{name}-{h}"] = stats
    out: dict[str, Any] = {"privacy": {"training": train_stats}}
    priv = out["privacy"]
    if "mia" in parts:
        for name in ap.RUNS:
            r = ap.membership_inference(prep, models[name], halves, seed=run.seed)
            log.info("MIA %s: %s", name, r)
            priv.setdefault("mia_auc", {})[name] = r["calibrated_auc"]
            priv.setdefault("mia_advantage", {})[name] = r["calibrated_advantage"]
            priv.setdefault("mia", {})[name] = r
    if "leak" in parts:
        rng = np.random.default_rng(run.seed + 1)
        users = rng.choice(halves[0], size=args.leak_users, replace=False)
        # a one-user device in the deployed configuration of its preset (local optimiser, rounds)
        for name in ap.RUNS:
            preset = parse_run_config(run_config({**overrides, **PRESETS[name]}))
            dev_local, dev_rounds = preset.local, preset.num_rounds
            for resid in (False, True):
                r = ap.upload_leakage(
                    prep,
                    models[name]["A"],
                    users,
                    rc,
                    epsilon=ap.RUN_EPSILON[name],
                    id_residual=resid,
                    lcfg=dev_local,
                    num_rounds=dev_rounds,
                    seed=run.seed,
                )
                log.info("leak %s id-residual=%s: %s", name, resid, r)
                key = "upload_leak_p10_id_residual" if resid else "upload_leak_p10"
                priv.setdefault(key, {})[name] = r["p10"]
                priv.setdefault("upload_leak", {})[f"{name}{'-id-residual' if resid else ''}"] = r
                priv["upload_leak_p10_random"] = r["random_p10"]
    settings = {
        "dataset": rc.core.data.dataset,
        "audit-training": run.settings()
        | {"users-per-half": [len(halves[0]), len(halves[1])], "model": dataclasses.asdict(rc.core.model)},
        "mia": {
            "users-per-half": "every trained user, up to 150",
            "items-per-user": 20,
            "attacker-knows": "recent: the user's val+test items; history: the user's other training items",
            "headline": "reference-model calibrated attack, strongest attacker knowledge",
        },
        "leak": {
            "users": args.leak_users,
            "device": "local optimiser and planned rounds of each run's preset (simulations/presets.py)",
        },
        "dp": {
            "delta": "min(dp.delta, 1/n) per node",
            "max-grad-norm": rc.dp.max_grad_norm,
            "accountant": "opacus rdp",
        },
    }
    return out, settings  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulations.audit", description=__doc__)
    p.add_argument("--parts", default="mia,leak,faults", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--data-dir", default=os.environ.get("FEDXREC_DATA_DIR", ""))
    p.add_argument("--rounds", type=int, default=5, help="FedAvg rounds of the audited models")
    p.add_argument("--users-per-half", type=int, default=60, help="users in each of the two disjoint training sets")
    p.add_argument("--nodes-per-half", type=int, default=2)
    p.add_argument("--leak-users", type=int, default=40)
    p.add_argument("--retrain", action="store_true", help="retrain the audited models even if checkpointed")
    p.add_argument("--fault-cases", default="corrupt_inputs,poisoned_update,supernode_killed,superlink_restart")
    args = p.parse_args(argv)
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    bad = parts - set(PARTS)
    if bad:
        p.error(f"unknown parts {sorted(bad)}; choose from {PARTS}")
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    from simulations.report import write_readme
    from simulations.results import provenance

    t0 = time.time()
    if parts & {"mia", "leak"}:
        figures, settings = _privacy(parts, args)
        figures["privacy"]["provenance"] = provenance(settings | {"seconds": round(time.time() - t0, 1)})
        replace_in_summary("privacy", figures["privacy"])
        write_readme()
    if "faults" in parts:
        from simulations.audit_faults import run_faults

        cases = [c.strip() for c in args.fault_cases.split(",") if c.strip()]
        results, settings = run_faults(cases, data_dir=args.data_dir)
        prov = provenance(settings)
        # faults.provenance = the latest invocation; each case keeps the one that produced it
        replace_in_summary(
            "faults", {case: r | {"provenance": prov} for case, r in results.items()} | {"provenance": prov}
        )
        write_readme()
        failed = [c for c, r in results.items() if r.get("status") != "pass"]
        if failed:
            log.error("fault cases failed: %s", failed)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
