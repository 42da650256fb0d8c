"""Federated training under secure aggregation (SecAgg+, Flower's legacy workflow; at least 3 nodes).

The server sees only the sum of the masked updates: per-update hygiene checks are impossible by
design; the aggregate is checked (finite) before it becomes the global model, and the nodes' own
replies are validated as usual. Logging, central evaluation and checkpoints match :mod:`server.loop`.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Context, MetricRecord, RecordDict
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.common.logger import log as flog
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.strategy import FedAvgM as LegacyFedAvgM
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from server.config import ServerRunConfig
from server.evaluation import central_p1
from server.loop import initial_model, wait_for_nodes
from server.runlog import append_log, best_round, plot, progress_line, rewrite_log, summary_table
from server.strategy import sum_eval_metrics, train_stats
from shared.checkpoint import save_checkpoint
from shared.pipeline import prepare


def _records(metrics: list[tuple[int, dict[str, Scalar]]]) -> list[RecordDict]:
    return [
        RecordDict({"m": MetricRecord({k: v for k, v in m.items() if isinstance(v, (int, float))})}) for _, m in metrics
    ]


def run_secagg(grid: Grid, context: Context, rc: ServerRunConfig) -> list[dict[str, Any]]:
    """Run the configured rounds with SecAgg+ over FedAvg; returns the per-round records."""
    torch.set_num_threads(1)
    out = rc.fed.runs_dir()
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(rc.core, progress=False)
    model = initial_model(rc, prep)
    names = list(model.shared_state())
    log_path = out / "rounds.jsonl"
    rewrite_log(log_path, [])
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {"t0": time.time(), "round": 0}
    wait_for_nodes(grid, rc.fed.min_nodes, rc.fed.timeout)

    def fit_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
        state["train"] = dict(train_stats(_records(metrics), "num-examples"))
        return dict(state["train"])

    def central(
        server_round: int, arrays: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]] | None:
        state["round"] = server_round
        if server_round == 0:
            return None
        ref = model.shared_state()
        tensors = {
            n: torch.as_tensor(np.asarray(a, np.float32)).reshape(ref[n].shape)
            for n, a in zip(names, arrays, strict=True)
        }
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            flog(WARNING, "round %d: the secure aggregate is not finite", server_round)
            return None
        model.load_partial(tensors)
        save_checkpoint(
            model,
            prep.dataset.catalogue.ids,
            out / "checkpoint",
            meta={"round": server_round, "run-name": rc.fed.run_name, "secagg": True},
        )
        state["central"] = (
            {**central_p1(model, prep.split, "val"), **central_p1(model, prep.split, "test")}
            if rc.fed.central_eval
            else {}
        )
        return 0.0, dict(state["central"])

    def eval_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
        fed = dict(sum_eval_metrics(_records(metrics), "num-examples"))
        row = {
            "round": state["round"],
            "train": state.get("train", {}),
            "fed": fed,
            "central": state.get("central", {}),
            "secagg": True,
            "seconds": time.time() - state["t0"],
            "failed": 0,
            "dropped": 0,
        }
        state["t0"] = time.time()
        rows.append(row)
        append_log(log_path, row)
        flog(INFO, "%s", progress_line(row, rc.num_rounds))
        return dict(fed.items())  # type: ignore[arg-type]

    momentum: dict[str, Any] = {}
    legacy_cls: type[LegacyFedAvg] = LegacyFedAvg
    if rc.fed.strategy == "fedavgm":
        momentum = {"server_learning_rate": rc.fed.server_lr, "server_momentum": rc.fed.server_momentum}
        legacy_cls = LegacyFedAvgM
    strategy = legacy_cls(
        **momentum,
        fraction_fit=rc.fed.fraction_train,
        fraction_evaluate=rc.fed.fraction_evaluate,
        min_fit_clients=rc.fed.min_nodes,
        min_evaluate_clients=rc.fed.min_nodes,
        min_available_clients=rc.fed.min_nodes,
        initial_parameters=ndarrays_to_parameters([np.atleast_1d(t.numpy()) for t in model.shared_state().values()]),
        evaluate_fn=central,
        on_fit_config_fn=lambda rnd: {"lr-scale": rc.fed.lr_scale(rnd, rc.num_rounds)},
        fit_metrics_aggregation_fn=fit_metrics,
        evaluate_metrics_aggregation_fn=eval_metrics,
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=rc.num_rounds, round_timeout=rc.fed.timeout), strategy=strategy
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=rc.fed.secagg_shares,
            reconstruction_threshold=rc.fed.secagg_threshold,
            clipping_range=rc.fed.secagg_clip_range,
            max_weight=10_000.0,
        )
    )
    workflow(grid, legacy)
    if rows:
        plot(rows, out / "rounds.png", rc.fed.run_name)
        (out / "summary.json").write_text(json.dumps({"best": best_round(rows), "last": rows[-1]}, indent=2))
        for line in summary_table(rows).splitlines():
            flog(INFO, "%s", line)
    return rows
