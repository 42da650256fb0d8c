"""The served order: the model's top-50 re-ranked toward items explained through a person or a company
(FEDXREC_ENTITY_RERANK); 0 gives the model's order. Scores stay the model's; the order does not depend on
whether explanations are asked for."""

from __future__ import annotations

import pytest
from api_fixtures import env, make_checkpoint
from conftest import write_tiny_ml100k
from fastapi.testclient import TestClient

from kg.schema import ENTITY_KINDS, RELATION_KINDS
from server.api.deps import get_service
from server.api.main import create_app
from server.api.service import Service
from server.api.settings import Settings, get_settings
from shared.config import ENTITY_RERANK

HISTORY = [6, 1, 11, 31, 32, 33]  # 6, 1 and 11 share Director_1 with other items


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("rerank")
    data = write_tiny_ml100k(root / "data")
    ckpt = make_checkpoint(data, "unused-backbone", root / "ckpt")
    e = env(data, ckpt, root / "state")
    return Settings(**{k[len("FEDXREC_") :].lower(): v for k, v in e.items()})  # type: ignore[arg-type]


def _recommend(s: Settings, explain: bool, k: int = 10) -> list[dict]:
    service = Service.load(s)
    app = create_app()
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_settings] = lambda: s
    with TestClient(app) as c:
        r = c.post("/v1/recommend", json={"history": HISTORY, "k": k, "explain": explain})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        ids = [it["id"] for it in items]
        scores = c.post("/v1/score", json={"history": HISTORY, "item_ids": ids}).json()["scores"]
    assert [it["score"] for it in items] == pytest.approx([s["score"] for s in scores])  # the model's scores
    return items


def _through_entity(item: dict) -> bool:
    paths = item["explanation"]["paths"]
    return bool(paths) and RELATION_KINDS[paths[0]["triples"][1]["relation"]] in ENTITY_KINDS


def test_the_default_weight_is_the_documented_one(base: Settings) -> None:
    assert Settings.model_fields["entity_rerank"].default == ENTITY_RERANK > 0
    assert base.rerank_pool == 50


def test_weight_zero_is_the_models_order(base: Settings) -> None:
    items = _recommend(base.model_copy(update={"entity_rerank": 0.0}), explain=True)
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)


def test_reranking_lifts_entity_explained_items_and_ignores_the_explain_flag(base: Settings) -> None:
    model = _recommend(base.model_copy(update={"entity_rerank": 0.0}), explain=True, k=5)
    full = base.model_copy(update={"entity_rerank": 1.0})
    served = _recommend(full, explain=True, k=5)
    assert [it["id"] for it in _recommend(full, explain=False, k=5)] == [it["id"] for it in served]
    flags = [_through_entity(it) for it in served]
    assert flags == sorted(flags, reverse=True)  # at weight 1 every entity-explained item comes first
    assert sum(flags) > sum(_through_entity(it) for it in model)  # and the pool held more than the top-5 had
    # within each group the model's order is kept
    for group in (True, False):
        part = [it["score"] for it in served if _through_entity(it) == group]
        assert part == sorted(part, reverse=True)


def test_explaining_only_the_items_that_can_enter_the_top_k_changes_nothing(base: Settings) -> None:
    """The service explains only the pool items that could reach the top k; the result equals kg.rerank
    over the whole explained pool (what bench kg measures)."""
    import numpy as np

    import kg

    service = Service.load(base.model_copy(update={"entity_rerank": 0.3}))
    rng = np.random.default_rng(0)
    for _ in range(20):
        history = [int(i) for i in rng.choice(np.arange(1, 121), size=6, replace=False)]
        rows = service.model.rows(history)
        top, scores = service.model.top_k(rows, 50, rows)
        ids = [service.model.item_ids[r] for r in top]
        full = {e.item_id: e for e in service.explainer.explain(history, ids, sim=service._sim(history, ids))}
        want = kg.rerank(
            ids,
            scores,
            full,
            history=history,
            sep_values={},
            weight=0.3,
            lir_weight=0.0,
            sep_weight=0.0,
            etd_weight=0.0,
            entity_weight=1.0,
        )[:5]
        got, _ = service._toward_entities(history, ids, scores, 0.3, 5)
        assert got == want
