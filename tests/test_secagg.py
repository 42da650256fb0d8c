"""SecAgg+: the server sees sums only.

The securely aggregated model equals the plain mean of the same updates within one quantisation level
(Flower's real SecAggPlusWorkflow and client mod, 4 simulated nodes), and what travels in the clear
beside the masked vector is weight 1 and no metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedfixtures import task_identity
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.serverapp import Grid, ServerApp

from client.legacy import LegacyEvaluationRefused, evaluate_reply, fit_reply, legacy_inputs, secagg_when_asked
from server.config import FedConfig
from server.secagg import SECAGG_WEIGHT, legacy_strategy, quantisation_step, secagg_workflow

NODES = 4
SHAPES = {"w": (3, 5), "b": (5,), "s": (1,)}


def node_update(partition: int) -> dict[str, np.ndarray]:
    """A fixed update per partition, inside the clipping range (±8)."""
    rng = np.random.default_rng(100 + partition)
    return {k: rng.uniform(-6.0, 6.0, shape).astype(np.float32) for k, shape in SHAPES.items()}


def private_count(partition: int) -> int:
    return 10 * (partition + 1) ** 2  # distinct, so weighting by it would move the mean far


client_app = ClientApp(mods=[secagg_when_asked])


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    p = int(context.node_config["partition-id"])
    legacy_inputs(msg, list(SHAPES), train=True)  # the global model arrives in the legacy format
    n = private_count(p)
    return fit_reply(msg, node_update(p), n, {"num-examples": n, "train-loss": 0.1 * p, "epsilon": 1.0})


def _server_app(seen: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        fed = FedConfig(secagg=True, min_nodes=NODES, fraction_train=1.0, timeout=120.0)

        def evaluate_fn(rnd: int, arrays: list[np.ndarray], config: dict) -> None:
            if rnd == 1:
                seen["global"] = [np.asarray(a, np.float64) for a in arrays]

        def fit_metrics(metrics: list[tuple[int, dict]]) -> dict:
            seen["clear"] = metrics  # what the server got in the clear beside the masked vectors
            return {}

        strategy = legacy_strategy(
            fed,
            initial_parameters=ndarrays_to_parameters([np.zeros(s, np.float32) for s in SHAPES.values()]),
            evaluate_fn=evaluate_fn,  # type: ignore[arg-type]
            fit_metrics=fit_metrics,
        )
        workflow = secagg_workflow(fed)
        seen["step"] = quantisation_step(workflow)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        from flwr.server.workflow import DefaultWorkflow

        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        seen["history"] = legacy.history

    return app


@pytest.mark.slow
def test_the_secure_aggregate_is_the_plain_mean_within_one_quantisation_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.simulation import run_simulation

    for k, v in {
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        monkeypatch.setenv(k, v)
    seen: dict[str, Any] = {}
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}
    run_simulation(_server_app(seen), client_app, num_supernodes=NODES, backend_config=backend)

    ups = [node_update(p) for p in range(NODES)]
    mean = [np.mean([u[k] for u in ups], axis=0, dtype=np.float64) for k in SHAPES]
    step = seen["step"]
    assert step == pytest.approx(16.0 / 2**22)
    for got, want in zip(seen["global"], mean, strict=True):
        assert got.shape == want.shape
        assert np.abs(got - want).max() < step  # stochastic rounding: each node off by under one level
    # the weights were uniform: the count-weighted mean is far from the result
    n = np.array([private_count(p) for p in range(NODES)], np.float64)
    weighted = np.tensordot(n / n.sum(), np.stack([u["w"] for u in ups]), axes=1)
    assert np.abs(seen["global"][0] - weighted).max() > 100 * step
    # in the clear: weight 1 and no metrics from every node; no federated evaluation round
    assert seen["clear"] == [(SECAGG_WEIGHT, {})] * NODES
    assert not seen["history"].losses_distributed and not seen["history"].metrics_distributed


def _fit_instruction() -> Message:
    task_identity()
    ins = FitIns(ndarrays_to_parameters([np.zeros(s, np.float32) for s in SHAPES.values()]), {"lr-scale": 1.0})
    return Message(compat.fitins_to_recorddict(ins, keep_input=True), dst_node_id=3, message_type=MessageType.TRAIN)


def test_a_legacy_fit_reply_carries_the_upload_weight_one_and_no_metrics() -> None:
    up = node_update(0)
    reply = fit_reply(_fit_instruction(), up, 37, {"num-examples": 37, "train-loss": 0.5, "epsilon": 2.0})
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    assert res.num_examples == 1 and res.metrics == {}
    records = {k: dict(v) for k, v in reply.content.config_records.items()}
    assert records == {"fitres.metrics": {}, "fitres.status": {"code": 0, "message": ""}}
    assert [dict(r) for r in reply.content.metric_records.values()] == [{"num_examples": 1}]
    got = compat.parameters_to_arrayrecord(res.parameters, keep_input=True).to_numpy_ndarrays()
    for a, b in zip(got, up.values(), strict=True):
        np.testing.assert_array_equal(a.reshape(b.shape), b)


def test_a_legacy_evaluation_is_refused_and_the_secagg_server_asks_for_none() -> None:
    with pytest.raises(LegacyEvaluationRefused, match="no federated evaluation"):
        evaluate_reply(_fit_instruction(), 5, {"val-hits": 1.0, "val-count": 5})
    fed = FedConfig(secagg=True, min_nodes=3, fraction_evaluate=1.0)
    strategy = legacy_strategy(
        fed, initial_parameters=ndarrays_to_parameters([]), evaluate_fn=lambda *a: None, fit_metrics=lambda m: {}
    )
    assert strategy.fraction_evaluate == 0.0
    workflow = secagg_workflow(fed)
    assert workflow.max_weight == SECAGG_WEIGHT == 1 and workflow.clipping_range == fed.secagg_clip_range
