"""Federated training under secure aggregation (SecAgg+, Flower's legacy workflow; at least 3 nodes).

The server sees only the sum of the masked updates: per-update hygiene checks are impossible by
design; the aggregate is checked (finite) before it becomes the global model. What travels in the clear
around the masked vector is nothing the server could learn a node's data from: a fit reply carries
``num_examples = 1`` (uniform weights) and no metrics (:func:`client.legacy.fit_reply`), and there is
no federated evaluation (``fraction_evaluate = 0``: per-node hit counts would travel unmasked). Each
round's row is therefore logged by the central evaluation function, whose figures are the
experimenter's (the whole dataset, in simulation, outside the protocol; rows say ``"eval":
"experimenter"``), and the best round is chosen on them. Central evaluation and checkpoints follow
:mod:`server.loop`.

Under ``dp.mode = distributed`` the nodes do not upload models but noise shares: each node's clipped
per-sample gradient sum plus N(0, (σ·C)² / ``dp.min-shares``) (:func:`client.train.dp_share`). Only the
secure sum of at least ``dp.min-shares`` of them carries the whole noise; :class:`DistributedDPFedAvg`
turns their mean into one server step and :class:`DistributedDPWorkflow` stops a round before its sum
is unmasked when fewer shares arrived. Under record-level DP (either mode) each row carries the ε of
the most-sampled node, computed from public settings (:func:`server.loop.record_dp_epsilon`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Context, MetricRecord, RecordDict
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log as flog
from flwr.server import ClientManager, LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.strategy import FedAvgM as LegacyFedAvgM
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from server.best import clear_best, save_if_best
from server.config import FedConfig, ServerRunConfig
from server.evaluation import central_p1
from server.loop import initial_model, record_dp_fields, wait_for_nodes
from server.runlog import EXPERIMENTER, append_log, progress_line, rewrite_log, write_summary
from server.strategy import UNIT_WEIGHT, train_stats
from shared.checkpoint import save_checkpoint
from shared.pipeline import prepare
from shared.privacy import PrivacyConfig, max_examples

#: every fit reply's weight (``num_examples``); SecAgg+ scales an update by ``num_examples / max_weight``
#: before quantising it, so ``max_weight`` equals it: the update is quantised at full resolution
SECAGG_WEIGHT = 1

#: noise-share standard deviations between the largest clipped gradient sum and the edge of a
#: distributed-DP share's clipping range (:func:`share_range`): P(|N(0, 1)| > 10) < 1.6e-23
SHARE_MARGIN = 10.0

MetricsFn = Callable[[list[tuple[int, dict[str, Scalar]]]], dict[str, Scalar]]
EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]
FitResults = list[tuple[ClientProxy, FitRes]]
Failures = list[tuple[ClientProxy, FitRes] | BaseException]


def _records(metrics: list[tuple[int, dict[str, Scalar]]]) -> list[RecordDict]:
    return [
        RecordDict({"m": MetricRecord({k: v for k, v in m.items() if isinstance(v, (int, float))})}) for _, m in metrics
    ]


def share_range(fed: FedConfig, dp: PrivacyConfig, noise_multiplier: float) -> float:
    """The SecAgg+ clipping range of a distributed-DP share: ``fed.secagg-clip-range`` or wider.

    A share's value is a clipped per-sample gradient sum plus a noise share of std
    s = σ·C / sqrt(``dp.min-shares``) (C: :meth:`~shared.privacy.PrivacyConfig.total_clip`). A device
    trains on at most :func:`~shared.privacy.max_examples` (δ) interactions, so the sum part of any value
    is within ``max_examples(δ)·C``; the range adds :data:`SHARE_MARGIN` noise stds to that. From
    public settings only.

    Beyond the range a node clips a value before quantising it (Flower's ``quantize``). That is a
    bias (the step shrinks toward zero), and clipping is applied per share, before the sum: it is not
    post-processing of the DP release, so the Gaussian-sum guarantee covers the unclipped sum only. With
    this range the gradient part can never be clipped, and a value is clipped only when its noise share
    exceeds 10 stds, with probability below 1.6e-23 whatever the data; on that event alone the
    released sum differs from the analysed one, which adds at most (1 + e^ε)·1.6e-23 per value sent
    to δ (negligible). A wider ``fed.secagg-clip-range`` is taken as given. Stochastic rounding to the
    quantisation grid is likewise per share and outside the real-valued analysis; it moves each value
    by under one level, ``2·range / 2**22`` (:func:`quantisation_step`).
    """
    c = dp.total_clip()
    auto = max_examples(dp.delta) * c + SHARE_MARGIN * noise_multiplier * c / math.sqrt(dp.min_shares)
    return max(fed.secagg_clip_range, auto)


class DistributedDPWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that does not unmask a sum of fewer than ``min_shares`` noise shares (``dp.mode = distributed``).

    Each share carries 1/``min_shares`` of the noise variance: a sum of fewer would be under-noised.
    The count is the masked vectors that reached the server in stage 2 (every one of them is in the sum);
    below it the round stops before stage 3, so the honest server never learns that sum, and the round
    is logged as skipped. (An honest-but-curious server is assumed: a server that lied about which nodes
    are alive could still unmask a short sum; only a check on the nodes could stop that.)
    """

    def __init__(self, *, min_shares: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_shares = min_shares

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        m = len(state.active_node_ids)
        if m < self.min_shares:
            reason = f"{m} shares reached the secure sum, dp.min-shares = {self.min_shares}: not unmasked"
            flog(WARNING, "distributed DP: %s", reason)
            if isinstance(context.strategy, DistributedDPFedAvg):
                context.strategy.skipped, context.strategy.shares = reason, m
            return False
        return bool(super().unmask_stage(grid, context, state))


def secagg_workflow(fed: FedConfig, *, clipping_range: float | None = None, min_shares: int = 0) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow with fedxrec's settings.

    Each node clips every value to ``[-range, range]`` (``fed.secagg-clip-range`` unless
    ``clipping_range`` is given: :func:`share_range` under distributed DP) and quantises it
    stochastically to ``2**22`` levels; with every weight 1 the unmasked mean is off by less than one
    level, ``2 * range / 2**22``, per value (:func:`quantisation_step`). ``min_shares > 0`` gives the
    :class:`DistributedDPWorkflow`.
    """
    kwargs: dict[str, Any] = {
        "num_shares": fed.secagg_shares,
        "reconstruction_threshold": fed.secagg_threshold,
        "clipping_range": fed.secagg_clip_range if clipping_range is None else clipping_range,
        "max_weight": float(SECAGG_WEIGHT),
        "timeout": fed.timeout,
    }
    if min_shares > 0:
        return DistributedDPWorkflow(min_shares=min_shares, **kwargs)
    return SecAggPlusWorkflow(**kwargs)


def quantisation_step(workflow: SecAggPlusWorkflow) -> float:
    """One quantisation level of ``workflow``: the bound on the error of the securely aggregated mean."""
    return 2.0 * workflow.clipping_range / workflow.quantization_range


def _finite(results: FitResults) -> bool:
    return all(np.isfinite(a).all() for _, res in results for a in parameters_to_ndarrays(res.parameters))


class CountedFedAvg(LegacyFedAvg):
    """Legacy FedAvg that counts the rounds each node id was sampled in (the SecAgg+ workflow's strategy).

    The counts give the record-level ε (:func:`server.loop.record_dp_epsilon`). It also resets the
    round's notes and refuses a non-finite secure aggregate before the strategy (and a server
    optimiser's state) sees it.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.participation: Counter[int] = Counter()
        self.skipped: str = ""
        self.shares: int | None = None

    @property
    def max_participation(self) -> int:
        """The most rounds any one node has been sampled for."""
        return max(self.participation.values(), default=0)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        sampled = super().configure_fit(server_round, parameters, client_manager)
        self.participation.update({int(proxy.node_id) for proxy, _ in sampled})
        self.skipped, self.shares = "", None
        return sampled

    def _refuse(self, server_round: int, results: FitResults) -> bool:
        self.shares = len(results)
        if results and not _finite(results):
            self.skipped = "the secure aggregate is not finite"
            flog(WARNING, "round %d: %s; keeping the global model", server_round, self.skipped)
            return True
        return False

    def _strategy_round(self, server_round: int) -> int:
        """The round number handed to the inner aggregation."""
        return server_round

    def aggregate_fit(
        self, server_round: int, results: FitResults, failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if self._refuse(server_round, results):
            return None, {}
        return super().aggregate_fit(self._strategy_round(server_round), results, failures)


class CountedFedAvgM(CountedFedAvg, LegacyFedAvgM):
    """Legacy FedAvgM with cohort counts."""

    def _strategy_round(self, server_round: int) -> int:
        # Flower's FedAvgM starts its momentum only in round 1: after a skipped first round, start it now
        return server_round if self.momentum_vector else 1


class DistributedDPFedAvg(CountedFedAvg):
    """One central DP-SGD step per round from the secure mean of the nodes' noise shares.

    The workflow hands over M, the plain mean of the m shares in the secure sum (weights 1). With
    m < ``dp.min-shares`` the round is skipped (the global model and the momentum stay). Else the
    step direction is g = M / ``dp.expected-batch``, i.e. the sum over nodes divided by
    m·``dp.expected-batch``: the arithmetic of FedAvg over nodes that each took one local SGD step
    lr·(sum + noise)/``dp.expected-batch``. With server momentum β (``fed.server-momentum`` for
    ``fedavgm``, 0 for ``fedavg``): v ← β·v + g; w ← w − η·``local.lr``·lr-scale(round)·v, with η
    ``fed.server-lr`` for ``fedavgm`` (1 for ``fedavg``) and lr-scale the schedule the nodes' local
    steps follow on the other route (:meth:`~server.config.FedConfig.lr_scale`). The momentum is
    post-processing of DP releases. A parameter no node trains (the logit scale) has zero shares and
    does not move.
    """

    def __init__(
        self,
        *,
        lr: float,
        lr_scale: Callable[[int], float],
        expected_batch: float,
        min_shares: int,
        momentum: float = 0.0,
        server_lr: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lr, self.lr_scale, self.momentum, self.server_lr = lr, lr_scale, momentum, server_lr
        self.expected_batch, self.min_shares = expected_batch, min_shares
        self.current: list[np.ndarray] = []
        self.velocity: list[np.ndarray] | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        self.current = [np.asarray(a, np.float64) for a in parameters_to_ndarrays(parameters)]
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self, server_round: int, results: FitResults, failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        m = len(results)
        self.shares = m
        if m < self.min_shares:
            self.skipped = f"{m} shares in the secure sum, dp.min-shares = {self.min_shares}: under-noised"
            flog(WARNING, "round %d: skipped (distributed DP): %s", server_round, self.skipped)
            return None, {}
        if self._refuse(server_round, results):
            return None, {}
        # every result carries the same unmasked mean; a plain mean also serves hand-built results
        means: list[np.ndarray] = [
            np.asarray(np.mean(np.stack(arrays), axis=0, dtype=np.float64))
            for arrays in zip(*(parameters_to_ndarrays(res.parameters) for _, res in results), strict=True)
        ]
        if [a.shape for a in means] != [a.shape for a in self.current]:
            self.skipped = "the secure aggregate does not match the global model's shapes"
            flog(WARNING, "round %d: %s; keeping the global model", server_round, self.skipped)
            return None, {}
        g: list[np.ndarray] = [a / self.expected_batch for a in means]
        prev = self.velocity
        velocity = (
            g if prev is None or self.momentum == 0 else [self.momentum * v + d for v, d in zip(prev, g, strict=True)]
        )
        self.velocity = velocity
        step = self.server_lr * self.lr * self.lr_scale(server_round)
        new = [(w - step * v).astype(np.float32) for w, v in zip(self.current, velocity, strict=True)]
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        return ndarrays_to_parameters(new), metrics


def legacy_strategy(
    fed: FedConfig,
    *,
    initial_parameters: Parameters,
    evaluate_fn: EvaluateFn,
    fit_metrics: MetricsFn,
    on_fit_config_fn: Callable[[int], dict[str, Scalar]] | None = None,
    dp: PrivacyConfig | None = None,
    local_lr: float = 0.0,
    num_rounds: int = 1,
) -> CountedFedAvg | CountedFedAvgM:
    """The legacy FedAvg (or FedAvgM) the SecAgg+ workflow aggregates with; no federated evaluation.

    Under ``dp`` with ``mode = distributed`` the strategy is :class:`DistributedDPFedAvg` (one step of
    ``local_lr`` per round on the shares' mean, scheduled by ``fed.lr_scale(round, num_rounds)``).
    """
    common: dict[str, Any] = {
        "fraction_fit": fed.fraction_train,
        "fraction_evaluate": 0.0,  # per-node evaluation replies would travel in the clear
        "min_fit_clients": fed.min_nodes,
        "min_evaluate_clients": 0,
        "min_available_clients": fed.min_nodes,
        "initial_parameters": initial_parameters,
        "evaluate_fn": evaluate_fn,
        "on_fit_config_fn": on_fit_config_fn,
        "fit_metrics_aggregation_fn": fit_metrics,
    }
    if dp is not None and dp.enabled and dp.mode == "distributed":
        fedavgm = fed.strategy == "fedavgm"
        return DistributedDPFedAvg(
            lr=local_lr,
            lr_scale=lambda rnd: fed.lr_scale(rnd, num_rounds),
            expected_batch=dp.expected_batch,
            min_shares=dp.min_shares,
            momentum=fed.server_momentum if fedavgm else 0.0,
            server_lr=fed.server_lr if fedavgm else 1.0,
            **common,
        )
    if fed.strategy == "fedavgm":
        return CountedFedAvgM(server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum, **common)
    return CountedFedAvg(**common)


def run_secagg(grid: Grid, context: Context, rc: ServerRunConfig) -> list[dict[str, Any]]:
    """Run the configured rounds with SecAgg+ over FedAvg (or distributed DP-SGD); returns the per-round records."""
    torch.set_num_threads(1)
    out = rc.fed.runs_dir()
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(rc.core, progress=False)
    model = initial_model(rc, prep)
    names = list(model.shared_state())
    log_path = out / "rounds.jsonl"
    rewrite_log(log_path, [])
    clear_best(out)
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {"t0": time.time()}
    sigma = rc.noise_multiplier() if rc.dp_enabled else 0.0
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
        if rc.distributed:
            row["dp-mode"] = "distributed"
        train = state.pop("train", None)
        if strategy.shares is not None:
            row["shares"] = strategy.shares
        if strategy.skipped:
            row["skipped"] = strategy.skipped
        elif train is None:  # the workflow stopped before aggregating (too few nodes or shares)
            row["skipped"] = "secure aggregation did not complete"
        row["train"] = train or {}
        if rc.dp_enabled:  # the most-sampled node's ε, from public settings: no node sent it
            row.update(record_dp_fields(rc.dp, noise_multiplier=sigma, participations=strategy.max_participation))
        ref = model.shared_state()
        tensors = {
            n: torch.as_tensor(np.asarray(a, np.float32)).reshape(ref[n].shape)
            for n, a in zip(names, arrays, strict=True)
        }
        metrics: dict[str, Scalar] = {}
        if not all(torch.isfinite(t).all() for t in tensors.values()):  # unreachable: aggregates are checked
            flog(WARNING, "round %d: the global model is not finite", server_round)
            row["error"] = "the global model is not finite"
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
        meta = {"round": server_round, "run-name": rc.fed.run_name, "secagg": True}
        save_if_best(model, prep.dataset.catalogue.ids, out, rows, source="central", meta=meta)
        flog(INFO, "%s", progress_line(row, rc.num_rounds))
        return (0.0, metrics) if metrics else None

    strategy = legacy_strategy(
        rc.fed,
        initial_parameters=ndarrays_to_parameters([np.atleast_1d(t.numpy()) for t in model.shared_state().values()]),
        evaluate_fn=central,
        fit_metrics=fit_metrics,
        on_fit_config_fn=lambda rnd: {"lr-scale": rc.fed.lr_scale(rnd, rc.num_rounds)},
        dp=rc.dp,
        local_lr=rc.local_lr,
        num_rounds=rc.num_rounds,
    )
    if rc.distributed:
        workflow = secagg_workflow(
            rc.fed, clipping_range=share_range(rc.fed, rc.dp, sigma), min_shares=rc.dp.min_shares
        )
        flog(INFO, "distributed DP: σ = %.4g, shares clipped to ±%.4g", sigma, workflow.clipping_range)
    else:
        workflow = secagg_workflow(rc.fed)
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=rc.num_rounds, round_timeout=rc.fed.timeout), strategy=strategy
    )
    DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    for line in write_summary(rows, out, rc.fed.run_name, source="central").splitlines():
        flog(INFO, "%s", line)
    return rows
