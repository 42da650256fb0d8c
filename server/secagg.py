"""Federated training under secure aggregation (SecAgg+, Flower's legacy workflow; at least 3 nodes).

The server sees only the sum of the masked updates: per-update hygiene checks are impossible by
design; the aggregate is checked (finite) before it becomes a checkpoint. What travels in the clear
around the masked vector is nothing the server could learn a node's data from: a fit reply carries
``num_examples = 1`` (uniform weights) and no metrics (:func:`client.legacy.fit_reply`), and there is
no federated evaluation (``fraction_evaluate = 0``: per-node hit counts would travel unmasked). Each
round's row is therefore logged by the central evaluation function, whose figures are the
experimenter's (the whole dataset, in simulation, outside the protocol; rows say ``"eval":
"experimenter"``), and the best round is chosen on them. Central evaluation and checkpoints follow
:mod:`server.loop`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Context, MetricRecord, RecordDict
from flwr.common import Parameters, Scalar, ndarrays_to_parameters
from flwr.common.logger import log as flog
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.strategy import FedAvgM as LegacyFedAvgM
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from server.config import FedConfig, ServerRunConfig
from server.evaluation import central_p1
from server.loop import initial_model, wait_for_nodes
from server.runlog import EXPERIMENTER, append_log, progress_line, rewrite_log, write_summary
from server.strategy import UNIT_WEIGHT, train_stats
from shared.checkpoint import save_checkpoint
from shared.pipeline import prepare

#: every fit reply's weight (``num_examples``); SecAgg+ scales an update by ``num_examples / max_weight``
#: before quantising it, so ``max_weight`` equals it: the update is quantised at full resolution
SECAGG_WEIGHT = 1

MetricsFn = Callable[[list[tuple[int, dict[str, Scalar]]]], dict[str, Scalar]]
EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]


def _records(metrics: list[tuple[int, dict[str, Scalar]]]) -> list[RecordDict]:
    return [
        RecordDict({"m": MetricRecord({k: v for k, v in m.items() if isinstance(v, (int, float))})}) for _, m in metrics
    ]


def secagg_workflow(fed: FedConfig) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow with fedxrec's settings.

    Each node clips its parameters to ``[-fed.secagg-clip-range, fed.secagg-clip-range]`` and quantises
    them stochastically to ``2**22`` levels; with every weight 1 the unmasked mean is off by less than
    one level, ``2 * clip_range / 2**22``, per parameter (:func:`quantisation_step`).
    """
    return SecAggPlusWorkflow(
        num_shares=fed.secagg_shares,
        reconstruction_threshold=fed.secagg_threshold,
        clipping_range=fed.secagg_clip_range,
        max_weight=float(SECAGG_WEIGHT),
        timeout=fed.timeout,
    )


def quantisation_step(workflow: SecAggPlusWorkflow) -> float:
    """One quantisation level of ``workflow``: the bound on the error of the securely aggregated mean."""
    return 2.0 * workflow.clipping_range / workflow.quantization_range


def legacy_strategy(
    fed: FedConfig,
    *,
    initial_parameters: Parameters,
    evaluate_fn: EvaluateFn,
    fit_metrics: MetricsFn,
    on_fit_config_fn: Callable[[int], dict[str, Scalar]] | None = None,
) -> LegacyFedAvg:
    """The legacy FedAvg (or FedAvgM) the SecAgg+ workflow aggregates with; no federated evaluation."""
    momentum: dict[str, Any] = {}
    cls: type[LegacyFedAvg] = LegacyFedAvg
    if fed.strategy == "fedavgm":
        momentum = {"server_learning_rate": fed.server_lr, "server_momentum": fed.server_momentum}
        cls = LegacyFedAvgM
    return cls(
        **momentum,
        fraction_fit=fed.fraction_train,
        fraction_evaluate=0.0,  # per-node evaluation replies would travel in the clear
        min_fit_clients=fed.min_nodes,
        min_evaluate_clients=0,
        min_available_clients=fed.min_nodes,
        initial_parameters=initial_parameters,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=on_fit_config_fn,
        fit_metrics_aggregation_fn=fit_metrics,
    )


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
    state: dict[str, Any] = {"t0": time.time()}
    wait_for_nodes(grid, rc.fed.min_nodes, rc.fed.timeout)

    def fit_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
        # the replies carry no metrics: this counts them
        state["train"] = dict(train_stats(_records(metrics), UNIT_WEIGHT))
        return dict(state["train"])

    def central(
        server_round: int, arrays: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Called by the workflow after each round's aggregation (and once before round 1): log the row."""
        if server_round == 0:
            return None
        row: dict[str, Any] = {"round": server_round, "secagg": True}
        train = state.pop("train", None)
        if train is None:  # the workflow stopped before aggregating (too few nodes or shares)
            row["skipped"] = "secure aggregation did not complete"
        row["train"] = train or {}
        ref = model.shared_state()
        tensors = {
            n: torch.as_tensor(np.asarray(a, np.float32)).reshape(ref[n].shape)
            for n, a in zip(names, arrays, strict=True)
        }
        metrics: dict[str, Scalar] = {}
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            flog(WARNING, "round %d: the secure aggregate is not finite", server_round)
            row["error"] = "the secure aggregate is not finite"
        else:
            model.load_partial(tensors)
            save_checkpoint(
                model,
                prep.dataset.catalogue.ids,
                out / "checkpoint",
                meta={"round": server_round, "run-name": rc.fed.run_name, "secagg": True},
            )
            eval_round = server_round % rc.fed.eval_every == 0 or server_round == rc.num_rounds
            if rc.fed.central_eval and eval_round:
                row["central"] = {**central_p1(model, prep.split, "val"), **central_p1(model, prep.split, "test")}
                row["eval"] = EXPERIMENTER
                metrics = dict(row["central"])
        row["seconds"] = time.time() - state["t0"]
        state["t0"] = time.time()
        rows.append(row)
        append_log(log_path, row)
        flog(INFO, "%s", progress_line(row, rc.num_rounds))
        return (0.0, metrics) if metrics else None

    strategy = legacy_strategy(
        rc.fed,
        initial_parameters=ndarrays_to_parameters([np.atleast_1d(t.numpy()) for t in model.shared_state().values()]),
        evaluate_fn=central,
        fit_metrics=fit_metrics,
        on_fit_config_fn=lambda rnd: {"lr-scale": rc.fed.lr_scale(rnd, rc.num_rounds)},
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=rc.num_rounds, round_timeout=rc.fed.timeout), strategy=strategy
    )
    DefaultWorkflow(fit_workflow=secagg_workflow(rc.fed))(grid, legacy)
    for line in write_summary(rows, out, rc.fed.run_name, source="central").splitlines():
        flog(INFO, "%s", line)
    return rows
