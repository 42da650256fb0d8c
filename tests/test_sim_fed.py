"""Simulation: a whole federated run in process (Ray backend) on tiny data, then a resumed run; and a
distributed-DP run under SecAgg+ (record-level ε from public settings, no federated evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedfixtures import fed_config  # noqa: F401
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.legacy import secagg_when_asked
from server.loop import record_dp_epsilon
from shared.checkpoint import load_checkpoint
from shared.privacy import PrivacyConfig, epsilon_of, plan_noise
from simulations.runner import configured_apps

BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}


def secagg_client_app(cfg: dict) -> ClientApp:
    """The fedxrec ClientApp with ``cfg`` as its run config and the SecAgg+ mod (as :mod:`client.app` has it).

    ``simulations.runner.configured_apps`` builds its ClientApp without the mod, so its SecAgg+ stage
    messages would reach the train handler.
    """
    from client import handlers

    app = ClientApp(mods=[secagg_when_asked])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        ctx = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config=dict(cfg),
        )
        return handlers.train(msg, ctx)

    return app


@pytest.mark.slow
def test_simulation_logs_metrics_checkpoints_and_resumes(fed_config: dict) -> None:  # noqa: F811
    from flwr.simulation import run_simulation

    cfg = {**fed_config, "fed.run-name": "sim", "fed.min-nodes": 4}
    assert not cfg["dp.enabled"] and not cfg["fed.secagg"]  # plain mode: exact replies, federated evaluation
    sapp, capp = configured_apps(cfg)
    run_simulation(sapp, capp, num_supernodes=4, backend_config=BACKEND)
    out = Path(cfg["fed.out-dir"]) / "sim"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["failed"] == 0 and r["dropped"] == 0 and r["train"]["nodes"] == 4
        assert r["fed"]["val-count"] == 8 and 0 <= r["fed"]["test-hr@10"] <= 1
        assert 0 <= r["central"]["test-ndcg@10"] <= 1 and "eval" not in r and "epsilon" not in r
        assert 0 < r["train"]["upload-bytes-per-client"]
    assert (out / "rounds.png").stat().st_size > 0
    meta = json.loads((out / "checkpoint" / "fedxrec.json").read_text())["meta"]
    assert meta["round"] == 2
    assert meta["settings"]["data.cold-fraction"] == 0.0 and "data.dir" not in meta["settings"]  # the split it saw
    assert json.loads((out / "summary.json").read_text())["best-selected-by"].startswith("federated")

    # one more round resumes from the round-2 checkpoint instead of starting over
    sapp, capp = configured_apps({**cfg, "num-server-rounds": 3})
    run_simulation(sapp, capp, num_supernodes=4, backend_config=BACKEND)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_distributed_dp_under_secagg_in_simulation(fed_config: dict) -> None:  # noqa: F811
    from flwr.simulation import run_simulation

    cfg = {
        **fed_config,
        "fed.run-name": "dsim",
        "fed.min-nodes": 3,
        "fed.secagg": True,
        "dp.enabled": True,
        "dp.mode": "distributed",
        "dp.target-epsilon": 4.0,
    }
    sapp, _ = configured_apps(cfg)
    run_simulation(sapp, secagg_client_app(cfg), num_supernodes=3, backend_config=BACKEND)
    out = Path(cfg["fed.out-dir"]) / "dsim"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    dp = PrivacyConfig(enabled=True, mode="distributed", target_epsilon=4.0, delta=cfg["dp.delta"])
    sigma = plan_noise(dp, num_rounds=2, fraction=1.0)
    for r in rows:
        assert r["dp-mode"] == "distributed" and not r.get("skipped") and r["shares"] == 3, r
        assert r["train"] == {"nodes": 3.0}  # the replies carry nothing but the masked share
        assert "fed" not in r and r["eval"] == "experimenter" and 0 <= r["central"]["test-hr@10"] <= 1
        assert r["noise-multiplier"] == pytest.approx(sigma) and r["delta"] == dp.delta
        assert r["epsilon"] == pytest.approx(record_dp_epsilon(dp, noise_multiplier=sigma, participations=r["round"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best-selected-by"].startswith("experimenter") and summary["best"]["round"] in (1, 2)
    # the DP-trained part (the per-item bias, dp.item-bias; the tower keeps its start) took the steps
    assert load_checkpoint(out / "checkpoint").shared["items.bias.weight"].abs().max() > 0
    # each simulated node's own accountant reached the ε the server logged
    ledgers = sorted((out / "nodes").glob("*.ledger.json"))
    assert len(ledgers) == 3
    for f in ledgers:
        history = [tuple(h) for h in json.loads(f.read_text())["runs"]["dsim"]]
        assert epsilon_of(history, dp.delta) == pytest.approx(rows[-1]["epsilon"], rel=1e-6)
