"""SecAgg+: the server sees sums only.

The securely aggregated model equals the plain mean of the same updates within one quantisation level
(Flower's real SecAggPlusWorkflow and client mod, 4 simulated nodes), and what travels in the clear
beside the masked vector is weight 1 and no metrics. Under distributed DP the secure mean of the noise
shares becomes one server step, and a round with fewer shares than ``dp.min-shares`` is not unmasked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedfixtures import task_identity
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.serverapp import Grid, ServerApp

from client.legacy import LegacyEvaluationRefused, evaluate_reply, fit_reply, legacy_inputs, secagg_when_asked
from server.config import FedConfig, parse_server_config
from server.secagg import (
    SECAGG_WEIGHT,
    DistributedDPFedAvg,
    DistributedDPWorkflow,
    legacy_strategy,
    quantisation_step,
    secagg_workflow,
    share_range,
)
from shared.errors import ConfigError
from shared.privacy import PrivacyConfig, max_examples

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


def _flower_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for k, v in {
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        monkeypatch.setenv(k, v)
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


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

    backend = _flower_env(tmp_path, monkeypatch)
    seen: dict[str, Any] = {}
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


# --- distributed DP: the secure mean of noise shares is one server step -------------------------------

DP_NODES = 3
DP = PrivacyConfig(enabled=True, mode="distributed", delta=1e-3, expected_batch=4.0, min_shares=3)
LR = 0.05


def node_share(partition: int) -> dict[str, np.ndarray]:
    """A fixed 'noisy gradient sum' per partition, far outside the parameters' range (±8); 0 for ``s``."""
    rng = np.random.default_rng(200 + partition)
    share = {k: rng.uniform(-40.0, 40.0, shape).astype(np.float32) for k, shape in SHAPES.items()}
    share["s"][:] = 0.0  # a parameter no node trains (the logit scale)
    return share


def initial_global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in SHAPES.items()}


share_app = ClientApp(mods=[secagg_when_asked])


@share_app.train()
def _share(msg: Message, context: Context) -> Message:
    p = int(context.node_config["partition-id"])
    _, cfg = legacy_inputs(msg, list(SHAPES), train=True)
    if int(cfg["rnd"]) == 2 and p == DP_NODES - 1:
        raise RuntimeError("this node drops out of round 2")
    return fit_reply(msg, node_share(p), 1, {"unit-weight": 1})


def _dp_server_app(seen: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        fed = FedConfig(secagg=True, min_nodes=DP_NODES, fraction_train=1.0, strategy="fedavg", timeout=120.0)
        seen["global"] = {}

        def evaluate_fn(rnd: int, arrays: list[np.ndarray], config: dict) -> None:
            seen["global"][rnd] = [np.asarray(a, np.float64) for a in arrays]

        strategy = legacy_strategy(
            fed,
            initial_parameters=ndarrays_to_parameters(list(initial_global().values())),
            evaluate_fn=evaluate_fn,  # type: ignore[arg-type]
            fit_metrics=lambda m: {},
            on_fit_config_fn=lambda rnd: {"rnd": rnd},
            dp=DP,
            local_lr=LR,
            num_rounds=2,
        )
        workflow = secagg_workflow(fed, clipping_range=share_range(fed, DP, 1.0), min_shares=DP.min_shares)
        assert isinstance(strategy, DistributedDPFedAvg) and isinstance(workflow, DistributedDPWorkflow)
        seen["step"] = quantisation_step(workflow)
        seen["notes"] = []
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=2), strategy=strategy)
        from flwr.server.workflow import DefaultWorkflow

        original = strategy.aggregate_fit

        def aggregate_fit(rnd, results, failures):  # type: ignore[no-untyped-def]
            seen["notes"].append((rnd, len(results)))
            return original(rnd, results, failures)

        strategy.aggregate_fit = aggregate_fit  # type: ignore[method-assign]
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
        seen["skipped"], seen["shares"] = strategy.skipped, strategy.shares
        seen["participation"] = dict(strategy.participation)

    return app


@pytest.mark.slow
def test_distributed_dp_takes_one_step_on_the_secure_mean_and_does_not_unmask_a_short_sum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.simulation import run_simulation

    seen: dict[str, Any] = {}
    run_simulation(
        _dp_server_app(seen), share_app, num_supernodes=DP_NODES, backend_config=_flower_env(tmp_path, monkeypatch)
    )
    shares = [node_share(p) for p in range(DP_NODES)]
    mean = [np.mean([u[k] for u in shares], axis=0, dtype=np.float64) for k in SHAPES]
    w0 = [a.astype(np.float64) for a in initial_global().values()]
    # round 1: w - lr * (mean / expected-batch), within one quantisation level of the mean
    assert seen["step"] == pytest.approx(2 * share_range(FedConfig(), DP, 1.0) / 2**22)
    assert max(np.abs(u).max() for s in shares for u in s.values()) > 8.0  # the parameters' range would clip
    for got, w, m in zip(seen["global"][1], w0, mean, strict=True):
        want = w - LR * m / DP.expected_batch
        assert np.abs(got - want).max() <= LR * seen["step"] / DP.expected_batch
        assert np.abs(got - w).max() > 100 * LR * seen["step"] or not m.any()  # the step is real
    np.testing.assert_array_equal(seen["global"][1][2], w0[2])  # the untrained scale does not move
    # round 2: one node dropped out, 2 < dp.min-shares = 3 masked vectors: the sum is never unmasked
    assert seen["notes"] == [(1, DP_NODES)]  # aggregate_fit ran in round 1 only
    assert "2 shares reached the secure sum" in seen["skipped"] and seen["shares"] == 2
    for a, b in zip(seen["global"][2], seen["global"][1], strict=True):
        np.testing.assert_array_equal(a, b)
    # every node was sampled in both rounds: both count towards its ε
    assert sorted(seen["participation"].values()) == [2] * DP_NODES


class _Proxy:
    """A stand-in for Flower's ClientProxy: the strategy only reads ``cid`` and ``node_id``."""

    def __init__(self, nid: int) -> None:
        self.cid, self.node_id = str(nid), nid


class _Clients:
    def __init__(self, n: int) -> None:
        self.proxies = [_Proxy(i + 1) for i in range(n)]

    def num_available(self) -> int:
        return len(self.proxies)

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion: Any = None) -> list:
        return self.proxies[:num_clients]


def _fitres(arrays: list[np.ndarray]) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 1, {})


def _results(clients: _Clients, shares: list[list[np.ndarray]]) -> list:
    return [(clients.proxies[i], _fitres(s)) for i, s in enumerate(shares)]


def _step_strategy(fed: FedConfig, w: list[np.ndarray], num_rounds: int) -> DistributedDPFedAvg:
    strategy = legacy_strategy(
        fed,
        initial_parameters=ndarrays_to_parameters(w),
        evaluate_fn=lambda *a: None,
        fit_metrics=lambda m: {"nodes": float(len(m))},
        dp=DP,
        local_lr=LR,
        num_rounds=num_rounds,
    )
    assert isinstance(strategy, DistributedDPFedAvg)
    return strategy


def test_the_distributed_step_follows_server_momentum_and_the_schedule_and_skips_short_sums() -> None:
    fed = FedConfig(secagg=True, min_nodes=3, strategy="fedavgm", server_momentum=0.5, lr_decay="cosine")
    w = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    strategy = _step_strategy(fed, w, num_rounds=3)
    clients = _Clients(4)
    rng = np.random.default_rng(0)
    v: list[np.ndarray] | None = None
    for rnd in (1, 2, 3):
        sampled = strategy.configure_fit(rnd, ndarrays_to_parameters(w), clients)  # type: ignore[arg-type]
        assert len(sampled) == 4 and strategy.max_participation == rnd
        shares = [[rng.normal(0, 3, a.shape).astype(np.float32) for a in w] for _ in range(4)]
        if rnd == 2:  # fewer than dp.min-shares arrived: skipped, nothing moves (momentum included)
            agg, metrics = strategy.aggregate_fit(rnd, _results(clients, shares[:2]), [])
            assert agg is None and metrics == {} and "2 shares" in strategy.skipped and strategy.shares == 2
            continue
        agg, metrics = strategy.aggregate_fit(rnd, _results(clients, shares), [])
        assert agg is not None and metrics == {"nodes": 4.0} and not strategy.skipped
        g = [np.mean([s[i] for s in shares], axis=0, dtype=np.float64) / DP.expected_batch for i in range(len(w))]
        v = g if v is None else [0.5 * a + b for a, b in zip(v, g, strict=True)]
        lr = LR * fed.server_lr * fed.lr_scale(rnd, 3)
        want = [a - lr * b for a, b in zip(w, v, strict=True)]
        got = parameters_to_ndarrays(agg)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        w = [a.astype(np.float32) for a in got]
    # a non-finite sum is refused before it reaches the momentum
    before = [a.copy() for a in strategy.velocity or []]
    strategy.configure_fit(4, ndarrays_to_parameters(w), clients)  # type: ignore[arg-type]
    bad = [[np.full(a.shape, np.nan, np.float32) for a in w]] * 4
    agg, _ = strategy.aggregate_fit(4, _results(clients, bad), [])
    assert agg is None and "not finite" in strategy.skipped
    for a, b in zip(strategy.velocity or [], before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_share_range_holds_every_clipped_sum_and_ten_noise_stds() -> None:
    fed = FedConfig(secagg=True, min_nodes=3)
    sigma = 2.0
    r = share_range(fed, DP, sigma)
    assert r == pytest.approx(max_examples(DP.delta) * DP.total_clip() + 10 * sigma * DP.total_clip() / np.sqrt(3))
    assert share_range(FedConfig(secagg=True, min_nodes=3, secagg_clip_range=1e6), DP, sigma) == 1e6  # wider: as given
    assert secagg_workflow(fed, clipping_range=r).clipping_range == r


def test_the_server_refuses_distributed_dp_without_secagg_or_with_cohorts_below_min_shares() -> None:
    base = {"dp.enabled": True, "dp.mode": "distributed"}
    with pytest.raises(ConfigError, match="dp.mode"):
        parse_server_config(base)
    with pytest.raises(ConfigError, match="fed.min-nodes"):
        parse_server_config({**base, "fed.secagg": True, "fed.min-nodes": 3, "dp.min-shares": 4})
    rc = parse_server_config({**base, "fed.secagg": True, "fed.min-nodes": 3, "dp.min-shares": 3})
    assert rc.distributed and rc.noise_multiplier() == rc.dp.noise_multiplier
    assert not parse_server_config({"dp.mode": "distributed", "model.item-bias": False}).distributed  # DP off: moot
