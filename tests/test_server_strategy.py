"""Server: update hygiene, uniform weights in private runs, metric aggregation, run logs, config errors.

User-level DP (accounting, calibration, skipped rounds) is in ``test_user_dp.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fedfixtures import task_identity
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from server.config import FedConfig, parse_server_config
from server.runlog import best_round, summary_table, write_summary
from server.strategy import build_strategy, check_update, sum_eval_metrics, train_stats
from shared.errors import ConfigError


@pytest.fixture(autouse=True)
def _identity() -> None:
    task_identity()


REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4, 5, 6]


FULL_METRICS = {"unit-weight": 1, "train-loss": 1.0, "delta": 1e-3, "noise-multiplier": 1.0, "upload-bytes": 100}


def _reply(arrays: dict[str, np.ndarray], n: int | None, src: int, metrics: dict | None = None) -> Message:
    """A training reply from node ``src``; ``metrics`` replaces the plain-run metrics (n, loss, ε, ...)."""
    task_identity()
    ins = Message(RecordDict(), dst_node_id=src, message_type=MessageType.TRAIN)
    ins.metadata.__dict__["_message_id"] = f"m{src}"
    if metrics is None:
        metrics = {**FULL_METRICS, "num-examples": n, "epsilon": float(src)}
    content = RecordDict(
        {
            "arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
        }
    )
    reply = Message(content, reply_to=ins)
    reply.metadata.__dict__["_src_node_id"] = src
    return reply


def test_bad_updates_are_dropped_and_the_global_model_stays_finite() -> None:
    strat = build_strategy(FedConfig(max_update_norm=10.0), record_dp=False)
    init = ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()})
    list(strat.configure_train(1, init, ConfigRecord(), _Grid()))
    good1 = {"w": np.ones((3, 2), np.float16), "b": np.ones(2, np.float16)}
    good2 = {"w": 3 * np.ones((3, 2), np.float16), "b": 3 * np.ones(2, np.float16)}
    nan = {"w": np.full((3, 2), np.nan, np.float32), "b": np.ones(2, np.float32)}
    shape = {"w": np.ones((2, 3), np.float32), "b": np.ones(2, np.float32)}
    huge = {"w": 100 * np.ones((3, 2), np.float32), "b": np.ones(2, np.float32)}
    extra = {**good1, "user.personal.weight": np.ones((1, 2), np.float32)}
    replies = [
        _reply(good1, 1, 1),
        _reply(good2, 3, 2),
        _reply(nan, 1, 3),
        _reply(shape, 1, 4),
        _reply(huge, 1, 5),
        _reply(extra, 1, 6),
    ]
    agg, metrics = strat.aggregate_train(1, replies)
    assert agg is not None and metrics is not None
    # weighted by num-examples: (1 * 1 + 3 * 3) / 4
    np.testing.assert_allclose(agg["w"].numpy(), 2.5 * np.ones((3, 2)))
    assert agg["w"].numpy().dtype == np.float32
    reasons = [d.reason for d in strat.report.dropped]
    assert len(reasons) == 4
    assert any("NaN" in r for r in reasons) and any("shape" in r for r in reasons)
    assert any("above the bound" in r for r in reasons) and any("names differ" in r for r in reasons)
    assert metrics["epsilon-max"] == 2.0 and metrics["upload-bytes-per-client"] == 100


def test_all_bad_updates_keep_the_previous_model() -> None:
    strat = build_strategy(FedConfig(), record_dp=False)
    list(
        strat.configure_train(1, ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()}), ConfigRecord(), _Grid())
    )
    agg, _ = strat.aggregate_train(1, [_reply({"w": np.full((3, 2), np.inf, np.float32), "b": REF["b"]}, 1, 1)])
    assert agg is None and strat.report.kept_previous


def test_check_update_accepts_a_scalar_sent_as_shape_one() -> None:
    clean, why = check_update({"s": np.ones(1, np.float16)}, {"s": np.zeros((), np.float32)}, 0.0)
    assert clean is not None and clean["s"].shape == () and why == ""


def test_federated_metrics_are_sums_over_counts() -> None:
    recs = [
        RecordDict(
            {
                "m": MetricRecord(
                    {
                        "val-hits": 1.0,
                        "val-ndcg": 0.5,
                        "val-count": 1.0,
                        "test-hits": 0.0,
                        "test-ndcg": 0.0,
                        "test-count": 1.0,
                        "num-examples": 1,
                    }
                )
            }
        ),
        RecordDict(
            {
                "m": MetricRecord(
                    {
                        "val-hits": 2.0,
                        "val-ndcg": 1.0,
                        "val-count": 3.0,
                        "test-hits": 3.0,
                        "test-ndcg": 2.0,
                        "test-count": 3.0,
                        "num-examples": 3,
                    }
                )
            }
        ),
    ]
    m = sum_eval_metrics(recs, "num-examples")
    assert m["val-hr@10"] == pytest.approx(0.75) and m["test-ndcg@10"] == pytest.approx(0.5)


def test_server_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="fed.strategy"):
        parse_server_config({"fed.strategy": "fedsgd"})
    with pytest.raises(ConfigError, match="fed.min-nodes"):
        parse_server_config({"fed.secagg": True, "fed.min-nodes": 2})
    assert parse_server_config({"dp.enabled": True}).model.user_mode == "personal"
    with pytest.raises(ConfigError, match="fed.user-dp.*cannot be accounted"):
        parse_server_config({"fed.user-dp": "adaptive"})


@pytest.mark.parametrize(
    ("flat", "private"),
    [
        ({}, False),
        ({"dp.enabled": True}, True),
        ({"fed.user-dp": "fixed"}, True),
        ({"fed.secagg": True, "fed.min-nodes": 3}, True),
    ],
)
def test_every_privacy_layer_weights_uniformly_and_sends_no_federated_evaluation(flat: dict, private: bool) -> None:
    rc = parse_server_config({"model.item-bias": False, "model.id-residual": False, **flat})
    assert rc.private is private
    strat = build_strategy(rc.fed, record_dp=rc.dp_enabled)
    assert strat.weight_key == strat.base.weighted_by_key == ("unit-weight" if private else "num-examples")
    assert (strat.base.fraction_evaluate == 0.0) is private
    init = ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()})
    assert (list(strat.configure_evaluate(1, init, ConfigRecord(), _Grid())) == []) is private


def test_record_level_dp_replies_carry_only_the_unit_weight_and_average_uniformly() -> None:
    strat = build_strategy(FedConfig(max_update_norm=0.0), record_dp=True)
    list(
        strat.configure_train(1, ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()}), ConfigRecord(), _Grid())
    )
    ups = [{"w": c * np.ones((3, 2), np.float32), "b": c * np.ones(2, np.float32)} for c in (1.0, 2.0, 6.0)]
    replies = [_reply(u, None, i + 1, metrics={"unit-weight": 1}) for i, u in enumerate(ups)]
    replies.append(_reply(ups[0], None, 4, metrics={"unit-weight": 50}))  # a node may not weigh more
    replies.append(_reply(ups[0], None, 5, metrics={"num-examples": 50}))
    agg, metrics = strat.aggregate_train(1, replies)
    assert agg is not None and metrics is not None
    np.testing.assert_allclose(agg["w"].numpy(), 3.0 * np.ones((3, 2)))  # (1 + 2 + 6) / 3, not by count
    assert dict(metrics) == {"nodes": 3.0}  # nothing made up: no loss, no ε
    assert sorted(d.node_id for d in strat.report.dropped) == [4, 5]
    assert all("unit-weight = 1" in d.reason for d in strat.report.dropped)


def test_train_stats_report_only_what_the_replies_carry() -> None:
    only_weight = [RecordDict({"m": MetricRecord({"unit-weight": 1})}) for _ in range(4)]
    assert dict(train_stats(only_weight, "unit-weight")) == {"nodes": 4.0}
    plain = [
        RecordDict({"m": MetricRecord({"num-examples": n, "train-loss": loss, "epsilon": 0.5})})
        for n, loss in ((1, 1.0), (3, 2.0))
    ]
    m = train_stats(plain, "num-examples")
    assert m["train-loss"] == pytest.approx(1.75) and m["epsilon-max"] == 0.5
    assert "upload-bytes-total" not in m


def _row(rnd: int, fed: float | None, central: float) -> dict:
    row = {
        "round": rnd,
        "train": {},
        "seconds": 1.0,
        "central": dict.fromkeys(("val-hr@10", "val-ndcg@10", "test-hr@10", "test-ndcg@10"), central),
    }
    if fed is not None:
        row["fed"] = dict.fromkeys(("val-hr@10", "val-ndcg@10", "test-hr@10", "test-ndcg@10"), fed)
    else:
        row["eval"] = "experimenter"
    return row


def test_a_private_run_picks_its_best_round_on_the_experimenters_validation(tmp_path) -> None:
    plain = [_row(1, 0.5, 0.1), _row(2, 0.2, 0.9)]
    assert best_round(plain)["round"] == 1 and best_round(plain, source="central")["round"] == 2
    private = [_row(1, None, 0.3), _row(2, None, 0.2)]
    assert best_round(private) is None  # no federated figures: nothing is chosen on them
    table = write_summary(private, tmp_path, "t", source="central")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best"]["round"] == 1 and summary["best-selected-by"].startswith("experimenter")
    assert "experimenter" in table and "experimenter" in summary_table(private, source="central")
    with pytest.raises(ValueError, match="source"):
        best_round(private, source="test")


@pytest.mark.parametrize("name", ["fedadam", "fedprox"])
def test_other_strategies_aggregate_through_the_guard(name: str) -> None:
    strat = build_strategy(FedConfig(strategy=name, server_lr=0.1), record_dp=False)
    init = ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()})
    msgs = list(strat.configure_train(1, init, ConfigRecord(), _Grid()))
    if name == "fedprox":
        assert msgs[0].content["config"]["proximal-mu"] == pytest.approx(0.01)
    up = {"w": np.ones((3, 2), np.float16), "b": np.ones(2, np.float16)}
    agg, _ = strat.aggregate_train(1, [_reply(up, 2, 1), _reply(up, 2, 2)])
    assert agg is not None
    w = agg["w"].numpy()
    assert np.isfinite(w).all() and (w > 0).all() and (w <= 1.0 + 1e-6).all()


def test_fedavgm_applies_server_momentum_and_a_rejected_aggregate_leaves_no_trace() -> None:
    strat = build_strategy(
        FedConfig(strategy="fedavgm", server_lr=1.0, server_momentum=0.5, max_update_norm=0.0), record_dp=False
    )
    arrays = ArrayRecord(array_dict={k: Array(v) for k, v in REF.items()})
    steps = []
    for rnd in (1, 2):
        list(strat.configure_train(rnd, arrays, ConfigRecord(), _Grid()))
        cur = arrays["w"].numpy()
        up = {"w": (cur + 1).astype(np.float16), "b": np.zeros(2, np.float16)}  # each node moves w by +1
        agg, _ = strat.aggregate_train(rnd, [_reply(up, 2, 1), _reply(up, 2, 2)])
        assert agg is not None
        steps.append(float((agg["w"].numpy() - cur).mean()))
        arrays = agg
    assert steps == pytest.approx([1.0, 1.5])  # second step: 0.5 * 1 (momentum) + 1
    # an aggregate that overflows is refused: the global model and the optimiser's state stay put
    list(strat.configure_train(3, arrays, ConfigRecord(), _Grid()))
    huge = {"w": np.full((3, 2), 6e4, np.float16), "b": np.zeros(2, np.float16)}
    strat.strategy.server_learning_rate = 1e35  # force a non-finite step
    agg, _ = strat.aggregate_train(3, [_reply(huge, 2, 1), _reply(huge, 2, 2)])
    assert agg is None and strat.report.kept_previous
    np.testing.assert_array_equal(strat.strategy.current_arrays["w"].numpy(), arrays["w"].numpy())
