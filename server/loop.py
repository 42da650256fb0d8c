"""The server's round loop: train, aggregate, evaluate (federated and central), log, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.logger import log as flog
from flwr.serverapp import Grid
from opacus.accountants import RDPAccountant

from server.config import ServerRunConfig
from server.evaluation import central_p1
from server.runlog import append_log, best_round, plot, progress_line, read_log, rewrite_log, summary_table
from server.strategy import GuardedStrategy, build_strategy
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import to_flat
from shared.errors import CheckpointError, ConfigError
from shared.model import Recommender, pca_init_projection
from shared.pipeline import Prepared, build_model, prepare

log = logging.getLogger(__name__)


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """float32 arrays for the wire (0-d parameters as shape (1,): Flower's Array is at least 1-d)."""
    return ArrayRecord(
        array_dict={k: Array(np.atleast_1d(v.detach().numpy().astype(np.float32))) for k, v in state.items()}
    )


def from_record(record: ArrayRecord, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v.numpy().astype(np.float32)).reshape(reference[k].shape) for k, v in record.items()}


def user_dp_epsilon(noise: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of user-level DP after ``rounds`` releases at client sampling rate ``sample_rate`` (RDP)."""
    if noise <= 0 or rounds == 0:
        return float("inf") if rounds else 0.0
    acc = RDPAccountant()
    acc.history = [(noise, sample_rate, rounds)]
    return float(acc.get_epsilon(delta))


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    t0 = time.time()
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= minimum:
            return ids
        if time.time() - t0 > timeout:
            raise TimeoutError(f"only {len(ids)} of the {minimum} nodes needed connected within {timeout:.0f}s")
        time.sleep(1.0)


def initial_model(rc: ServerRunConfig, prep: Prepared) -> Recommender:
    """The round-0 global model.

    A ``dot`` model starts with logit scale ``fed.init-scale``; with ``fed.proj-init = pca`` the item
    projection starts from the catalogue's principal directions.
    """
    model = build_model(rc.model, prep, prep.split.num_users)
    if rc.fed.init_scale > 0 and rc.model.score == "dot":
        with torch.no_grad():
            model.scale.fill_(rc.fed.init_scale)
    if rc.fed.proj_init == "pca" and rc.model.top_layers == 0:
        pca_init_projection(model)
    return model


def _resume(rc: ServerRunConfig, model: Recommender, ckpt_dir: Path) -> int:
    """Load the last checkpoint of this run name; returns the round it finished (0: fresh start)."""
    if not (rc.fed.resume and (ckpt_dir / "fedxrec.json").exists()):
        return 0
    try:
        ck = load_checkpoint(ckpt_dir)
    except CheckpointError as e:
        flog(WARNING, "cannot resume from %s (%s); starting fresh", ckpt_dir, e)
        return 0
    if dataclasses.asdict(ck.config) != dataclasses.asdict(model.cfg):
        raise ConfigError(
            "fed.run-name", f"checkpoint {ckpt_dir} was made with another model config; use a new run name"
        )
    model.load_partial({k: v.float() for k, v in ck.shared.items()})
    return int(ck.meta.get("round", 0))


def run_federated(grid: Grid, rc: ServerRunConfig, prep: Prepared | None = None) -> list[dict[str, Any]]:
    """Run the configured rounds; returns the per-round records (also in ``<runs>/<name>/rounds.jsonl``)."""
    torch.set_num_threads(1)
    out = rc.fed.runs_dir()
    out.mkdir(parents=True, exist_ok=True)
    prep = prep or prepare(rc.core, progress=False)
    model = initial_model(rc, prep)
    ckpt_dir = out / "checkpoint"
    start = _resume(rc, model, ckpt_dir)
    log_path = out / "rounds.jsonl"
    rows = read_log(log_path, upto_round=start) if start else []
    rewrite_log(log_path, rows)
    settings = {"num-server-rounds": rc.num_rounds, **to_flat(rc.fed, "fed"), **to_flat(rc.model, "model")}
    (out / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    if start >= rc.num_rounds:
        flog(INFO, "run %s already finished %d rounds (checkpoint %s)", rc.fed.run_name, start, ckpt_dir)
        return rows
    if start:
        flog(INFO, "resuming run %s after round %d from %s", rc.fed.run_name, start, ckpt_dir)

    nodes = wait_for_nodes(grid, rc.fed.min_nodes, rc.fed.timeout)
    strategy = build_strategy(rc.fed, num_nodes_hint=len(nodes), local_lr=rc.local_lr)
    assert isinstance(strategy, GuardedStrategy)
    arrays = to_record(model.shared_state())
    item_ids = prep.dataset.catalogue.ids
    flog(
        INFO,
        "fedxrec: %d nodes, %d rounds, strategy %s, outputs in %s",
        len(nodes),
        rc.num_rounds,
        rc.fed.strategy,
        out,
    )
    for rnd in range(start + 1, rc.num_rounds + 1):
        t0 = time.time()
        replies = grid.send_and_receive(
            strategy.configure_train(
                rnd, arrays, ConfigRecord({"lr-scale": rc.fed.lr_scale(rnd, rc.num_rounds)}), grid
            ),
            timeout=rc.fed.timeout,
        )
        agg, tmetrics = strategy.aggregate_train(rnd, replies)
        if agg is not None:
            arrays = to_record(from_record(agg, model.shared_state()))
        rep = strategy.report
        row: dict[str, Any] = {
            "round": rnd,
            "train": dict(tmetrics or {}),
            "replies": rep.replies,
            "failed": len(rep.errors),
            "dropped": len(rep.dropped),
        }
        if rep.errors:
            row["errors"] = [e.reason[:300] for e in rep.errors[:3]]
        if rc.fed.user_dp != "off":
            row["user-dp-epsilon"] = user_dp_epsilon(
                rc.fed.user_dp_noise, rc.fed.fraction_train, rnd, rc.fed.user_dp_delta
            )
        eval_round = rnd % rc.fed.eval_every == 0 or rnd == rc.num_rounds
        if rc.fed.fraction_evaluate > 0 and eval_round:
            ereplies = grid.send_and_receive(
                strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid), timeout=rc.fed.timeout
            )
            em = strategy.aggregate_evaluate(rnd, ereplies)
            row["fed"] = dict(em or {})
        model.load_partial(from_record(arrays, model.shared_state()))
        if rc.fed.central_eval and eval_round:
            row["central"] = {**central_p1(model, prep.split, "val"), **central_p1(model, prep.split, "test")}
        row["seconds"] = time.time() - t0
        save_checkpoint(
            model, item_ids, ckpt_dir, meta={"round": rnd, "run-name": rc.fed.run_name, "settings": settings}
        )
        rows.append(row)
        append_log(log_path, row)
        flog(INFO, "%s", progress_line(row, rc.num_rounds))
    plot(rows, out / "rounds.png", rc.fed.run_name)
    best = best_round(rows)
    (out / "summary.json").write_text(json.dumps({"best": best, "last": rows[-1] if rows else None}, indent=2))
    for line in summary_table(rows).splitlines():
        flog(INFO, "%s", line)
    return rows
