"""The explanation API through TestClient with dependency overrides (tiny catalogue, random checkpoint)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from api_fixtures import TOKEN, env, make_checkpoint
from conftest import write_tiny_ml100k
from fastapi.testclient import TestClient

from kg.graph import item_node
from server.api import schemas
from server.api.deps import get_service
from server.api.main import create_app
from server.api.service import Service
from server.api.settings import Settings, get_settings

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW_ITEM = {
    "title": "Movie Sequel",
    "year": 1999,
    "genres": ["Comedy"],
    "text": "The sequel nobody asked for.",
    "entities": {"director": ["http://dbpedia.org/resource/Director_1"], "starring": ["New Face"]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("api")
    data = write_tiny_ml100k(root / "data")
    return data, make_checkpoint(data, tiny_bert, root / "ckpt")


def _settings(world: tuple[Path, Path], state: Path) -> Settings:
    data, ckpt = world
    e = env(data, ckpt, state, entity_rerank=0)  # the model's own order (the re-ranking: test_api_rerank.py)
    return Settings(**{k[len("FEDXREC_") :].lower(): v for k, v in e.items()})  # type: ignore[arg-type]


@pytest.fixture
def settings(world: tuple[Path, Path], tmp_path: Path) -> Settings:
    return _settings(world, tmp_path / "state")


@pytest.fixture
def service(settings: Settings) -> Service:
    return Service.load(settings)


@pytest.fixture
def client(service: Service, settings: Settings) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as c:
        yield c


def _err(r, status: int) -> dict:
    assert r.status_code == status, r.text
    (d,) = r.json()["detail"]
    return d


def test_health_names_model_and_checkpoint(client: TestClient, service: Service) -> None:
    h = schemas.Health.model_validate(client.get("/health").json())
    assert h.items == 120 and h.cold_items == 0 and h.model.dim == 16
    assert h.checkpoint.id == service.checkpoint_id and h.checkpoint.meta == {"source": "tests"}


def test_recommend_ranks_excludes_seen_and_explains_with_real_edges(client: TestClient, service: Service) -> None:
    history = [1, 6, 11, 2]
    r = client.post("/v1/recommend", json={"history": history, "k": 8, "explain": True})
    assert r.status_code == 200, r.text
    body = schemas.RecommendResponse.model_validate(r.json())
    ids = [it.id for it in body.items]
    scores = [it.score for it in body.items]
    assert len(ids) == 8 and not set(ids) & set(history) and scores == sorted(scores, reverse=True)
    # the scores are the model's: the same as /v1/score and as ServingModel over all items
    s = client.post("/v1/score", json={"history": history, "item_ids": ids}).json()["scores"]
    assert [x["id"] for x in s] == ids and np.allclose([x["score"] for x in s], scores, atol=1e-5)
    full = service.model.scores(service.model.rows(history))
    full[service.model.rows(history)] = -np.inf
    assert ids == [service.model.item_ids[i] for i in np.argsort(-full, kind="stable")[:8]]
    explained = [it.explanation for it in body.items if it.explanation and it.explanation.paths]
    assert explained, "items 1..30 share directors/stars: some path must exist"
    for e in explained:
        assert e.sentence.startswith("Because you watched")
        for p in e.paths:
            assert p.history_item in history
            for t in p.triples:
                assert service.graph.has_edge(t.head, t.tail, key=t.relation)
    no_explain = client.post("/v1/recommend", json={"history": history, "k": 8}).json()
    assert all(it["explanation"] is None for it in no_explain["items"])


def test_exclude_seen_false_and_timestamps_order_the_history(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"history": [3, 1, 2], "k": 120, "exclude_seen": False})
    assert r.status_code == 422  # k above FEDXREC_MAX_K=30
    a = client.post("/v1/score", json={"history": [1, 2, 3], "item_ids": [5]}).json()
    b = client.post("/v1/score", json={"history": [3, 1, 2], "timestamps": [30.0, 10, 20], "item_ids": [5]}).json()
    c = client.post("/v1/score", json={"history": [3, 1, 2], "item_ids": [5]}).json()
    assert a == b and a != c
    r = client.post("/v1/recommend", json={"history": [1, 2], "k": 30, "exclude_seen": False}).json()
    assert len(r["items"]) == 30


def test_explain_one_item(client: TestClient) -> None:
    r = client.post("/v1/explain", json={"history": [6, 2, 3], "item_id": 1, "max_paths": 5})
    body = schemas.ExplainResponse.model_validate(r.json())
    assert body.item_id == 1 and body.paths and len(body.paths) <= 5
    assert len({p.entity for p in body.paths}) == len(body.paths)  # one path per shared entity
    lonely = client.post("/v1/explain", json={"history": [1], "item_id": 50}).json()
    assert lonely["paths"] == [] and lonely["sentence"].startswith("No link was found")


@pytest.mark.parametrize(
    ("path", "payload", "status", "loc"),
    [
        ("/v1/recommend", {"history": [1, 99999]}, 404, ["body", "history", 1]),
        ("/v1/recommend", {"history": []}, 422, ["body", "history"]),
        ("/v1/recommend", {"history": list(range(1, 52))}, 422, ["body", "history"]),
        ("/v1/recommend", {"history": [1], "k": 0}, 422, ["body", "k"]),
        ("/v1/recommend", {"history": [1], "k": 31}, 422, ["body", "k"]),
        ("/v1/recommend", {"history": ["1"]}, 422, ["body", "history", 0]),
        ("/v1/recommend", {"history": [1], "explain": "yes"}, 422, ["body", "explain"]),
        ("/v1/recommend", {"history": [1], "kk": 3}, 422, ["body", "kk"]),
        ("/v1/recommend", {"history": [1, 2], "timestamps": [1.0]}, 422, ["body", "timestamps"]),
        ("/v1/recommend", {"history": [-1]}, 422, ["body", "history", 0]),
        ("/v1/explain", {"history": [1], "item_id": 5000}, 404, ["body", "item_id"]),
        ("/v1/explain", {"history": [1]}, 422, ["body", "item_id"]),
        ("/v1/score", {"history": [1], "item_ids": [2, 77777]}, 404, ["body", "item_ids", 1]),
        ("/v1/score", {"history": [1], "item_ids": list(range(1, 42))}, 422, ["body", "item_ids"]),
        ("/v1/score", {"history": [1], "item_ids": []}, 422, ["body", "item_ids"]),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    client: TestClient, path: str, payload: dict, status: int, loc: list
) -> None:
    d = _err(client.post(path, json=payload), status)
    assert d["loc"] == loc and d["msg"]
    assert "input" not in d  # request values are not echoed back


def test_malformed_json_and_wrong_body_type(client: TestClient) -> None:
    hdr = {"Content-Type": "application/json"}
    d = _err(client.post("/v1/recommend", content=b'{"history": [1,', headers=hdr), 422)
    assert d["loc"][0] == "body" and d["type"] == "json_invalid"
    assert client.post("/v1/recommend", json=[1, 2]).status_code == 422
    assert client.post("/v1/recommend", content=b"NaN", headers=hdr).status_code == 422
    r = client.post("/v1/recommend", content=b'{"history": [1], "timestamps": [Infinity]}', headers=hdr)
    assert r.status_code == 422


def test_items_lookup_and_paged_title_search(client: TestClient) -> None:
    it = schemas.ItemOut.model_validate(client.get("/v1/items/7").json())
    assert it.title == "Misérables, Les" and it.display_title == "Les Misérables" and it.recommendable and not it.cold
    assert it.entities["director"] == ["http://dbpedia.org/resource/Director_2"]
    assert _err(client.get("/v1/items/4242"), 404)["loc"] == ["path", "item_id"]
    assert _err(client.get("/v1/items/abc"), 422)["loc"] == ["path", "item_id"]
    assert client.get("/v1/items", params={"query": "les mis"}).json()["items"][0]["id"] == 7
    page = client.get("/v1/items", params={"query": "movie 1", "offset": 2, "limit": 5}).json()
    assert page["total"] == 32 and len(page["items"]) == 5  # "Movie 1", "Movie 10".."19", "Movie 100".."120"
    assert page["items"][0]["id"] == 11
    assert client.get("/v1/items", params={"limit": 0}).status_code == 422
    assert client.get("/v1/items").json()["total"] == 120


def test_write_needs_the_bearer_token(client: TestClient) -> None:
    assert client.post("/v1/items", json=NEW_ITEM).status_code == 401
    r = client.post("/v1/items", json=NEW_ITEM, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").json()["cold_items"] == 0


def test_write_refused_when_no_token_is_configured(service: Service, settings: Settings) -> None:
    app = create_app()
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"token": None})
    with TestClient(app) as c:
        r = c.post("/v1/items", json=NEW_ITEM, headers=AUTH)
    assert r.status_code == 401 and "no token" in r.json()["detail"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"genres": ["Western"]}, ["body", "genres", 0]),
        ({"entities": {"friend": ["X"]}}, ["body", "entities", "friend", "[key]"]),
        ({"entities": {"director": ["Category:"]}}, ["body", "entities", "director", 0]),
        ({"title": "  "}, ["body", "title"]),
        ({"year": 3000}, ["body", "year"]),
    ],
)
def test_invalid_new_item_is_a_422(client: TestClient, change: dict, loc: list) -> None:
    d = _err(client.post("/v1/items", json={**NEW_ITEM, **change}, headers=AUTH), 422)
    assert d["loc"] == loc


def test_cold_item_is_recommendable_explainable_and_survives_a_restart(
    client: TestClient, service: Service, settings: Settings
) -> None:
    r = client.post("/v1/items", json=NEW_ITEM, headers=AUTH)
    assert r.status_code == 201, r.text
    body = schemas.NewItemResponse.model_validate(r.json())
    new = body.id
    assert new == 121 and body.item.cold and body.item.recommendable and body.neighbours > 0
    # explainable at once: it shares Director_1 with items 1, 6, 11, ...
    e = client.post("/v1/explain", json={"history": [6], "item_id": new}).json()
    assert e["paths"][0]["entity_label"] == "Director 1" and "also directed by Director 1" in e["sentence"]
    # recommendable at once: scored, and ranked among all items
    assert client.post("/v1/score", json={"history": [6], "item_ids": [new]}).status_code == 200
    ranked = client.post("/v1/recommend", json={"history": [6, 1], "k": 30}).json()["items"]
    assert len(ranked) == 30
    assert client.get("/v1/items", params={"query": "sequel"}).json()["items"][0]["id"] == new
    # a restart (a fresh process) replays it from the store with the same vector
    again = Service.load(settings)
    assert again.cold_ids == [new] and again.catalogue.get(new).title == "Movie Sequel"
    assert np.allclose(again.model.vectors[again.model.row_of[new]], service.model.vectors[service.model.row_of[new]])
    assert item_node(new) in again.graph
    # and a second worker sharing the state dir picks up the next registration from the store
    other = Service.load(settings)
    r2 = client.post("/v1/items", json={**NEW_ITEM, "title": "Movie Threequel"}, headers=AUTH)
    assert r2.json()["id"] == 122
    other.sync()
    assert other.catalogue.get(122).title == "Movie Threequel" and 122 in other.model.row_of


def test_logs_hold_request_ids_and_timings_only(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = client.post("/v1/recommend", json={"history": [17, 23, 29], "k": 3}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("server.api")]
    assert lines == ["request_id=abc-123 method=POST route=/v1/recommend status=200 ms=" + lines[0].rsplit("=", 1)[1]]
    assert re.fullmatch(r"\d+\.\d\d", lines[0].rsplit("=", 1)[1])
    r = client.get("/health", headers={"X-Request-ID": "bad id\nforged"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])


def test_lifespan_loads_from_settings(world: tuple[Path, Path], tmp_path: Path) -> None:
    s = _settings(world, tmp_path / "state")
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: s
    with TestClient(app) as c:
        assert c.get("/health").json()["items"] == 120
        spec = c.get("/openapi.json").json()
    props = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert props["history"]["maxItems"] == 50 and props["k"]["maximum"] == 30
    assert spec["paths"]["/v1/items"]["post"]["security"]


def test_serve_names_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.api.cli import serve

    monkeypatch.setenv("FEDXREC_WORKERS", "0")
    monkeypatch.setenv("FEDXREC_PORT", "8000")  # serve() writes --port here; monkeypatch restores it
    with pytest.raises(SystemExit, match="FEDXREC_WORKERS"):
        serve(["--port", "8123"])
    get_settings.cache_clear()
