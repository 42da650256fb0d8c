"""Long histories: accepted up to FEDXREC_MAX_HISTORY (5000); the model reads the latest history-len items,
the whole history is left out of the ranking, explanations link from the latest FEDXREC_EXPLAIN_WINDOW items."""

from __future__ import annotations

import numpy as np
import pytest
from api_fixtures import env, make_checkpoint
from conftest import write_tiny_ml100k
from fastapi.testclient import TestClient

from server.api.deps import get_service
from server.api.main import create_app
from server.api.service import Service
from server.api.settings import Settings, get_settings

OLD = [6, 1, 11]  # share Director_1 with item 16 (and each other)
RECENT = list(range(31, 43))  # 12 items with no KG link; the checkpoint reads the latest 10


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("hist")
    data = write_tiny_ml100k(root / "data")
    ckpt = make_checkpoint(data, "unused-backbone", root / "ckpt")
    e = {k: v for k, v in env(data, ckpt, root / "state").items() if k != "FEDXREC_MAX_HISTORY"}
    return Settings(**{k[len("FEDXREC_") :].lower(): v for k, v in e.items()})  # type: ignore[arg-type]


def _client(s: Settings) -> TestClient:
    service = Service.load(s)
    app = create_app()
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_settings] = lambda: s
    return TestClient(app)


def test_up_to_5000_items_are_accepted_and_more_is_a_422_naming_the_limit(base: Settings) -> None:
    assert base.max_history == 5000
    with _client(base) as c:
        long = [int(i) for i in np.random.default_rng(0).integers(1, 121, size=5000)]
        r = c.post("/v1/recommend", json={"history": long, "k": 5, "explain": True})
        assert r.status_code == 200 and len(r.json()["items"]) <= 5
        r = c.post("/v1/score", json={"history": [*long, 1], "item_ids": [2]})
        assert r.status_code == 422
        (d,) = r.json()["detail"]
        assert d["loc"] == ["body", "history"] and "at most 5000" in d["msg"] and "FEDXREC_MAX_HISTORY" in d["msg"]


def test_the_model_reads_the_latest_history_len_items(base: Settings) -> None:
    with _client(base) as c:
        history = OLD + RECENT
        full = c.post("/v1/score", json={"history": history, "item_ids": [16, 50, 100]}).json()
        latest = c.post("/v1/score", json={"history": history[-10:], "item_ids": [16, 50, 100]}).json()
        assert full == latest
        # with timestamps, "latest" is by time: the same ten items sent out of order score the same
        shuffled = history[::-1]
        ts = [float(len(history) - i) for i in range(len(history))]
        assert (
            c.post("/v1/score", json={"history": shuffled, "timestamps": ts, "item_ids": [16, 50, 100]}).json() == full
        )


def test_the_whole_history_is_excluded_and_old_items_explain(base: Settings) -> None:
    with _client(base) as c:
        history = OLD + RECENT
        items = c.post("/v1/recommend", json={"history": history, "k": 30}).json()["items"]
        assert len(items) == 30 and not {it["id"] for it in items} & set(history)  # old items too
        e = c.post("/v1/explain", json={"history": history, "item_id": 16}).json()
        # the best path comes from an item older than the model's history-len (a shared director)
        assert e["paths"][0]["history_item"] in OLD and e["paths"][0]["entity_label"] == "Director 1"
    narrow = base.model_copy(update={"explain_window": len(RECENT)})
    with _client(narrow) as c:  # the old items are now outside the explain window: paths start from recent ones
        e = c.post("/v1/explain", json={"history": OLD + RECENT, "item_id": 16}).json()
        assert {p["history_item"] for p in e["paths"]} <= set(RECENT)
