"""Client: the Flower handlers called directly with a built Context and Message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fedfixtures import fed_config, make_context, make_message  # noqa: F401
from flwr.app import Context, RecordDict

from client import app as capp
from client.config import parse_node_config, parse_run_config
from client.data import load_node_data
from client.train import build_model
from shared.errors import ConfigError, DataError


def _global(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    rc = parse_run_config(cfg)
    data = load_node_data(parse_node_config({"partition-id": 0, "num-partitions": 4}), rc.core)
    return {k: v.numpy().copy() for k, v in build_model(rc.model, data, seed=123).shared_state().items()}


def test_train_reply_has_shared_parameters_only_and_the_metrics(fed_config: dict) -> None:  # noqa: F811
    glob = _global(fed_config)
    ctx = make_context(fed_config, partition=1, partitions=4)
    reply = capp.train(make_message("train", glob), ctx)
    arrays = reply.content.array_records["arrays"]
    assert set(arrays) == set(glob)
    assert not any(k.startswith("user.personal") for k in arrays)
    m = reply.content.metric_records["metrics"]
    assert m["num-examples"] == 2 * 13  # 2 users of 15 interactions, 2 held out each
    assert set(m) == {"num-examples", "unit-weight", "train-loss", "local-steps", "upload-bytes"}
    assert m["upload-bytes"] == sum(a.numpy().nbytes for a in arrays.values())
    assert arrays["items.proj.weight"].numpy().dtype == np.float16
    assert "personal" in ctx.state.array_records  # the personal vector stays on the node


def test_evaluate_returns_sums_and_counts_only(fed_config: dict) -> None:  # noqa: F811
    glob = _global(fed_config)
    reply = capp.evaluate(make_message("evaluate", glob), make_context(fed_config, partition=0, partitions=4))
    m = reply.content.metric_records["metrics"]
    assert set(m) == {
        "val-hits",
        "val-ndcg",
        "val-count",
        "test-hits",
        "test-ndcg",
        "test-count",
        "num-examples",
        "unit-weight",
    }
    assert m["val-count"] == 2 and 0 <= m["test-hits"] <= 2


def _dp_cfg(base: dict, **kw: Any) -> dict[str, Any]:
    return {
        **base,
        "dp.enabled": True,
        "dp.target-epsilon": 8.0,
        "num-server-rounds": 3,
        "dp.sample-rate": 0.25,
        "dp.expected-batch": 4.0,
        "dp.local-steps": 0,  # one expected pass per round: 1 / sample-rate steps
        **kw,
    }


def _ledger_epsilon(cfg: dict, partition: int) -> float:
    from client.privacy import Ledger

    rc = parse_run_config(cfg)
    return Ledger(parse_node_config({"partition-id": partition, "num-partitions": 4}).ledger_path(rc)).epsilon(1e-5)


def _history(state: RecordDict) -> list:
    from client.state import load_privacy

    p = load_privacy(state)
    assert p is not None
    return p.history


def test_a_dp_reply_carries_the_noised_parameters_and_nothing_data_dependent(fed_config: dict) -> None:  # noqa: F811
    cfg = _dp_cfg(fed_config)
    glob = _global(cfg)
    reply = capp.train(make_message("train", glob), make_context(cfg, partition=1, partitions=4))
    assert dict(reply.content.metric_records["metrics"]) == {"unit-weight": 1}  # no n, loss, steps, σ or ε
    assert set(reply.content.array_records["arrays"]) == set(glob)
    # federated evaluation would send per-node hits computed from the raw history: refused under DP
    from client.privacy import PrivacyRefused

    with pytest.raises(PrivacyRefused, match="federated evaluation is refused"):
        capp.evaluate(make_message("evaluate", glob), make_context(cfg, partition=1, partitions=4))


def test_epsilon_grows_across_rounds_and_runs_and_the_server_cannot_reset_it(fed_config: dict) -> None:  # noqa: F811
    cfg = _dp_cfg(fed_config)
    glob = _global(cfg)
    state = RecordDict()
    eps = []
    for rnd in (1, 2):
        capp.train(make_message("train", glob, rnd), make_context(cfg, partition=2, partitions=4, state=state))
        eps.append(_ledger_epsilon(cfg, 2))
    assert 0 < eps[0] < eps[1] <= 8.0
    assert sum(h[2] for h in _history(state)) == 2 * 4  # 4 public steps per round (1 / sample-rate)
    # a resubmitted run of the same name (fresh context.state) continues the accountant from disk
    ctx = make_context(cfg, partition=2, partitions=4)
    capp.train(make_message("train", glob, 3), ctx)
    assert sum(h[2] for h in _history(ctx.state)) == 3 * 4
    assert eps[1] < _ledger_epsilon(cfg, 2)


def test_a_device_refuses_a_run_weaker_than_its_floor(fed_config: dict, tmp_path) -> None:  # noqa: F811
    from flwr.app import Context

    from client.privacy import PrivacyBudgetExhausted, PrivacyRefused

    cfg = _dp_cfg(fed_config)
    glob = _global(cfg)

    def ctx(run: dict, **floor: Any) -> Context:
        node = {"partition-id": 0, "num-partitions": 4, "state-dir": str(tmp_path / "dev"), **floor}
        return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run)

    with pytest.raises(PrivacyRefused, match="dp-required"):
        capp.train(make_message("train", glob), ctx(fed_config, **{"dp-required": True}))
    with pytest.raises(PrivacyRefused, match="dp-min-noise"):
        capp.train(make_message("train", glob), ctx(cfg, **{"dp-min-noise": 50.0}))
    with pytest.raises(PrivacyRefused, match="dp-max-epsilon"):
        capp.train(make_message("train", glob), ctx(cfg, **{"dp-max-epsilon": 4.0}))
    with pytest.raises(PrivacyRefused, match="dp-max-delta"):
        capp.train(make_message("train", glob), ctx({**cfg, "dp.delta": 1e-3}))
    # the device's ceiling holds over all runs: renaming the run does not reset the device's ledger
    one_round = {**cfg, "num-server-rounds": 1, "dp.target-epsilon": 3.9}
    capp.train(make_message("train", glob), ctx(one_round, **{"dp-max-epsilon": 4.0}))
    with pytest.raises(PrivacyBudgetExhausted, match="over all runs"):
        renamed = {**one_round, "fed.run-name": "fresh-start"}
        capp.train(make_message("train", glob), ctx(renamed, **{"dp-max-epsilon": 4.0}))


def test_node_state_survives_a_new_run_and_a_corrupt_file_is_an_error(fed_config: dict) -> None:  # noqa: F811
    from client.config import parse_node_config as pnc
    from client.state import PERSONAL_KEY

    glob = _global(fed_config)
    state = RecordDict()
    capp.train(make_message("train", glob, 1), make_context(fed_config, partition=1, partitions=4, state=state))
    personal = state.array_records[PERSONAL_KEY]["user.personal.weight"].numpy()
    path = pnc({"partition-id": 1, "num-partitions": 4}).state_path(parse_run_config(fed_config))
    assert path.is_file() and path.is_relative_to(fed_config["fed.out-dir"])
    # a new run (empty context.state) ranks with the personal vector the node kept on disk
    ctx = make_context(fed_config, partition=1, partitions=4)
    capp.evaluate(make_message("evaluate", glob), ctx)
    np.testing.assert_array_equal(ctx.state.array_records[PERSONAL_KEY]["user.personal.weight"].numpy(), personal)
    path.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="unreadable node state"):
        capp.train(make_message("train", glob, 1), make_context(fed_config, partition=1, partitions=4))


def test_per_item_parameters_need_dp_in_a_federated_run(fed_config: dict) -> None:  # noqa: F811
    from server.config import parse_server_config

    for key in ("model.item-bias", "model.id-residual"):
        with pytest.raises(ConfigError, match=key):
            parse_run_config({**fed_config, key: True})
        with pytest.raises(ConfigError, match=key):
            parse_server_config({**fed_config, key: True})
    dp = {**fed_config, "model.item-bias": True, "dp.enabled": True}
    glob = _global(dp)
    assert "items.bias.weight" in glob
    assert "items.bias.weight" not in _global(fed_config)  # without DP it is not even trained


def test_missing_device_data_is_a_clear_error(fed_config: dict, tmp_path) -> None:  # noqa: F811
    glob = _global(fed_config)
    ctx = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(tmp_path / "nope.data"), "catalog-path": str(tmp_path), "dp-required": False},
        state=RecordDict(),
        run_config=fed_config,
    )
    with pytest.raises(DataError, match="nope.data"):
        capp.train(make_message("train", glob), ctx)
    bad = tmp_path / "bad.data"
    bad.write_text("1\t2\t3\n")
    ctx2 = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(bad), "catalog-path": fed_config["data.dir"], "dp-required": False},
        state=RecordDict(),
        run_config=fed_config,
    )
    with pytest.raises(DataError, match=r"bad.data:1: expected 4 tab-separated fields"):
        capp.train(make_message("train", glob), ctx2)
    with pytest.raises(ConfigError, match="catalog-path"):
        parse_node_config({"data-path": "x"})


def test_device_node_trains_on_its_own_file(fed_config: dict, tmp_path) -> None:  # noqa: F811
    src = (tmp_path / "data" / "ml-100k" / "u.data").read_text().splitlines()
    mine = tmp_path / "device.data"
    mine.write_text("\n".join(line for line in src if line.split("\t")[0] == "3") + "\n")
    glob = _global(fed_config)
    ctx = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(mine), "catalog-path": fed_config["data.dir"], "dp-required": False},
        state=RecordDict(),
        run_config=fed_config,
    )
    m = capp.train(make_message("train", glob), ctx).content.metric_records["metrics"]
    assert m["num-examples"] == 13
    e = capp.evaluate(make_message("evaluate", glob), ctx).content.metric_records["metrics"]
    assert e["test-count"] == 1
    # a real device requires DP unless its own node_config says otherwise
    from client.privacy import PrivacyRefused

    strict = Context(
        run_id=1,
        node_id=9,
        node_config={"data-path": str(mine), "catalog-path": fed_config["data.dir"]},
        state=RecordDict(),
        run_config=fed_config,
    )
    with pytest.raises(PrivacyRefused, match="requires record-level DP"):
        capp.train(make_message("train", glob), strict)


def test_a_node_stops_training_when_its_budget_is_spent(fed_config: dict) -> None:  # noqa: F811
    from client.privacy import PrivacyBudgetExhausted

    cfg = _dp_cfg(fed_config, **{"dp.target-epsilon": 2.0, "num-server-rounds": 1})
    glob = _global(cfg)
    state = RecordDict()
    capp.train(make_message("train", glob, 1), make_context(cfg, partition=2, partitions=4, state=state))
    assert 0 < _ledger_epsilon(cfg, 2) <= 2.0
    with pytest.raises(PrivacyBudgetExhausted, match="dp.target-epsilon"):
        capp.train(make_message("train", glob, 2), make_context(cfg, partition=2, partitions=4, state=state))


def test_the_servers_learning_rate_schedule_reaches_the_local_optimiser(fed_config: dict) -> None:  # noqa: F811
    from flwr.app import ConfigRecord

    from server.config import FedConfig

    fc = FedConfig(lr_decay="cosine", lr_floor=0.1)
    assert fc.lr_scale(1, 11) == pytest.approx(1.0)
    assert fc.lr_scale(6, 11) == pytest.approx(0.55)
    assert fc.lr_scale(11, 11) == pytest.approx(0.1)
    assert FedConfig().lr_scale(7, 11) == 1.0
    glob = _global(fed_config)
    moved = {}
    for scale in (1.0, 1e-4):
        msg = make_message("train", glob)
        msg.content["config"] = ConfigRecord({"server-round": 1, "lr-scale": scale})
        reply = capp.train(msg, make_context(fed_config, partition=1, partitions=4))
        up = reply.content.array_records["arrays"]["items.proj.weight"].numpy().astype(np.float32)
        moved[scale] = float(np.abs(up - glob["items.proj.weight"]).max())
    assert moved[1e-4] < 0.01 * moved[1.0]


def test_a_frozen_tower_is_the_same_public_start_on_every_device_and_the_server(fed_config: dict) -> None:  # noqa: F811
    from server.config import parse_server_config
    from server.loop import initial_model
    from shared.pipeline import prepare

    cfg = _dp_cfg(fed_config)
    srv = initial_model(parse_server_config(cfg), prepare(parse_run_config(cfg).core, progress=False))
    assert set(srv.shared_state()) == {"items.bias.weight"}  # only the bias is trained and uploaded
    for part in (0, 3):
        ctx = make_context(cfg, partition=part, partitions=4)
        reply = capp.train(make_message("train", {"items.bias.weight": srv.items.bias.weight.detach().numpy()}), ctx)
        assert set(reply.content.array_records["arrays"]) == {"items.bias.weight"}
    from client.handlers import _setup

    dev = _setup(make_context(cfg, partition=2, partitions=4))[-1]
    torch.testing.assert_close(dev.items.proj.weight, srv.items.proj.weight)
