"""Simulation: a whole federated run in process (Ray backend) on tiny data, then a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedfixtures import fed_config  # noqa: F401

from simulations.runner import configured_apps


@pytest.mark.slow
def test_simulation_logs_metrics_checkpoints_and_resumes(fed_config: dict) -> None:  # noqa: F811
    from flwr.simulation import run_simulation

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    cfg = {**fed_config, "fed.run-name": "sim", "fed.min-nodes": 4}
    sapp, capp = configured_apps(cfg)
    run_simulation(sapp, capp, num_supernodes=4, backend_config=backend)
    out = Path(cfg["fed.out-dir"]) / "sim"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["failed"] == 0 and r["dropped"] == 0 and r["train"]["nodes"] == 4
        assert r["fed"]["val-count"] == 8 and 0 <= r["fed"]["test-hr@10"] <= 1
        assert 0 <= r["central"]["test-ndcg@10"] <= 1
        assert 0 < r["train"]["upload-bytes-per-client"]
    assert (out / "rounds.png").stat().st_size > 0
    assert json.loads((out / "checkpoint" / "fedxrec.json").read_text())["meta"]["round"] == 2

    # one more round resumes from the round-2 checkpoint instead of starting over
    sapp, capp = configured_apps({**cfg, "num-server-rounds": 3})
    run_simulation(sapp, capp, num_supernodes=4, backend_config=backend)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
