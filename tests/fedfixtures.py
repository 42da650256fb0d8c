"""Fixtures for the federated tests: a tiny run config over tiny data, and Flower messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_tiny_ml100k
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.state import record_of
from simulations.runner import run_config


def tiny_overrides(tmp_path: Path, tiny_bert: str) -> dict[str, Any]:
    """Run-config overrides for a tiny ml-100k-format dataset and a tiny BERT (data written under ``tmp_path``)."""
    return {
        "data.dir": str(write_tiny_ml100k(tmp_path / "data", users=8, per_user=15)),
        "data.cache-dir": str(tmp_path / "cache"),
        "model.backbone": tiny_bert,
        "model.dim": 16,
        "model.bottleneck": 8,
        "model.history-len": 8,
        "train.negatives": 8,
    }


@pytest.fixture
def fed_config(tmp_path: Path, tiny_bert: str) -> dict[str, Any]:
    """A full run config (pyproject defaults) over a tiny ml-100k-format dataset and a tiny BERT."""
    return run_config(
        {
            **tiny_overrides(tmp_path, tiny_bert),
            "local.batch-size": 4,
            "num-server-rounds": 2,
            "fed.out-dir": str(tmp_path / "runs"),
            "fed.max-update-norm": 0.0,
            "fed.fraction-train": 1.0,
            "fed.eval-every": 1,
            # the non-private mode (the pyproject default is private; DP tests switch it on themselves)
            "dp.enabled": False,
            "local.optimizer": "adam",
            "local.lr": 0.01,
        }
    )


def task_identity() -> None:
    """Flower messages built outside a running app need a task identity."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 1


def make_context(cfg: dict[str, Any], *, partition: int, partitions: int, state: RecordDict | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": partitions},
        state=state if state is not None else RecordDict(),
        run_config=cfg,
    )


def make_message(kind: str, arrays: dict[str, np.ndarray], server_round: int = 1) -> Message:
    task_identity()
    content = RecordDict({"arrays": record_of(arrays), "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN if kind == "train" else MessageType.EVALUATE)
