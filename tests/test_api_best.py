"""The server loop saves its best validation round to ``<runs>/<run-name>/best``, which the API serves by default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedfixtures import fed_config, task_identity  # noqa: F401
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from server.api.service import Service
from server.api.settings import Settings
from shared.checkpoint import load_checkpoint

#: scripted central validation HR@10 per round: the best round (2) is not the last (3)
VAL_HR = {1: 0.30, 2: 0.80, 3: 0.50}


class _Grid:
    """Answers every training instruction with the global arrays nudged (a round changes the model)."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        out = []
        for ins in messages:
            arrays = {k: Array((v.numpy() + 0.05).astype(np.float16)) for k, v in ins.content["arrays"].items()}
            body = RecordDict({"arrays": ArrayRecord(array_dict=arrays), "metrics": MetricRecord({"unit-weight": 1})})
            out.append(Message(body, reply_to=ins))
        return out


def test_the_best_round_is_saved_and_served_by_default(
    fed_config: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import server.loop
    from server.config import parse_server_config

    task_identity()
    rounds = iter([1, 1, 2, 2, 3, 3])  # central_p1 runs for val then test, each evaluated round

    def scripted(model: object, split: object, which: str, k: int = 10) -> dict[str, float]:
        rnd = next(rounds)
        hr = VAL_HR[rnd] if which == "val" else VAL_HR[rnd] - 0.1
        return {f"{which}-hr@{k}": hr, f"{which}-ndcg@{k}": hr / 2}

    monkeypatch.setattr(server.loop, "central_p1", scripted)
    runs = Path(fed_config["fed.out-dir"])
    cfg = {
        **fed_config,
        "dp.enabled": True,  # the main job's mode: private, best round chosen on the experimenter's central figures
        "fed.fraction-train": 0.5,
        "num-server-rounds": 3,
        "fed.eval-every": 1,
        "fed.run-name": "fed",
    }
    rows = server.loop.run_federated(_Grid(4), parse_server_config(cfg))  # type: ignore[arg-type]
    assert [r["central"]["val-hr@10"] for r in rows] == [0.30, 0.80, 0.50]
    out = runs / "fed"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["round"] == 2

    best, last = load_checkpoint(out / "best"), load_checkpoint(out / "checkpoint")
    assert best.meta["round"] == 2 and last.meta["round"] == 3
    assert best.meta["best"]["val-hr@10"] == 0.80 and best.meta["best"]["test-hr@10"] == pytest.approx(0.70)
    assert best.meta["best"]["selected-by"] == summary["best-selected-by"]
    # another round's model (the grid nudges every shared parameter up each round; here the item biases)
    assert (last.item_bias.numpy() > best.item_bias.numpy() + 0.01).all()

    # the API's default checkpoint: $FEDXREC_RUNS_DIR/fed/best
    monkeypatch.setenv("FEDXREC_RUNS_DIR", str(runs))
    monkeypatch.delenv("FEDXREC_CHECKPOINT", raising=False)
    s = Settings(data_dir=Path(fed_config["data.dir"]), state_dir=runs / "api-state")
    assert s.checkpoint == (out / "best").resolve()
    service = Service.load(s)
    assert service.model.ckpt.meta["round"] == 2
    assert np.array_equal(service.model.bias, best.item_bias.float().numpy())

    # a fresh start of the run name drops the earlier run's best round before its own rounds
    rounds2 = iter([1, 1])
    monkeypatch.setattr(server.loop, "central_p1", lambda m, sp, which, k=10: scripted_one(next(rounds2), which, k))
    server.loop.run_federated(_Grid(4), parse_server_config({**cfg, "fed.resume": False, "num-server-rounds": 1}))  # type: ignore[arg-type]
    assert load_checkpoint(out / "best").meta["round"] == 1


def scripted_one(rnd: int, which: str, k: int) -> dict[str, float]:
    return {f"{which}-hr@{k}": 0.1, f"{which}-ndcg@{k}": 0.05}
