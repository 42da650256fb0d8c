"""Cold-start items: normalised like the catalogue (cosine and dot), range-checked at start-up, deletable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from api_fixtures import TOKEN, env, make_checkpoint
from conftest import write_tiny_ml100k
from fastapi.testclient import TestClient

from kg.graph import item_node
from server.api.deps import get_service
from server.api.main import create_app
from server.api.service import Service, StartupError
from server.api.settings import Settings, get_settings
from server.api.store import ColdItemStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW_ITEM = {
    "title": "Movie Sequel",
    "year": 1999,
    "genres": ["Comedy"],
    "text": "The sequel nobody asked for.",
    "entities": {"director": ["http://dbpedia.org/resource/Director_1"], "starring": ["New Face"]},
}
UNRELATED = list(range(31, 121))  # items with no KG link to the new item (only 1..30 are enriched)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ml100k(tmp_path_factory.mktemp("cold") / "data")


@pytest.fixture(scope="module", params=["cosine", "dot"])
def ckpt(request: pytest.FixtureRequest, data: Path, tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a projection grown by training: raw text vectors far longer than the (cosine: unit) catalogue's
    out = tmp_path_factory.mktemp("ck") / "ckpt"
    return make_checkpoint(data, tiny_bert, out, score=request.param, proj_scale=300.0)


def _settings(data: Path, ckpt: Path, state: Path) -> Settings:
    e = env(data, ckpt, state)
    return Settings(**{k[len("FEDXREC_") :].lower(): v for k, v in e.items()})  # type: ignore[arg-type]


@pytest.fixture
def settings(data: Path, ckpt: Path, tmp_path: Path) -> Settings:
    return _settings(data, ckpt, tmp_path / "state")


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


def _register(client: TestClient, **change: object) -> int:
    r = client.post("/v1/items", json={**NEW_ITEM, **change}, headers=AUTH)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def _rank(client: TestClient, history: list[int], item_id: int) -> int:
    items = client.post("/v1/recommend", json={"history": history, "k": 30}).json()["items"]
    ids = [it["id"] for it in items]
    return ids.index(item_id) + 1 if item_id in ids else 31


def test_cold_vector_is_normalised_like_the_catalogue(client: TestClient, service: Service) -> None:
    m = service.model
    catalogue_norms = np.linalg.norm(m.vectors, axis=1)
    new = _register(client)
    v = m.vectors[m.row_of[new]]
    if m.cfg.score == "cosine":
        assert np.allclose(catalogue_norms, 1.0, atol=1e-5)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    else:  # dot: never longer than the longest catalogue vector
        assert np.linalg.norm(v) <= catalogue_norms.max() * (1 + 1e-6)
    lo, hi = m.bias_range
    assert lo <= m.bias[m.row_of[new]] <= hi
    # the raw text vector is normalised too (the no-neighbour path uses it alone)
    raw = m.text_vectors(["Some other film"])[0]
    assert m.out_of_range(raw, float(np.median(m.bias))) is None


def test_cold_item_ranks_plausibly_not_first_for_unrelated_histories(client: TestClient) -> None:
    new = _register(client)
    firsts = sum(_rank(client, [h], new) == 1 for h in UNRELATED)
    # one more item among 121: first for about 1 in 121 unrelated histories, not for every one
    assert firsts <= len(UNRELATED) // 10, f"the cold item ranks first for {firsts} of {len(UNRELATED)} histories"
    assert _rank(client, [31, 35, 40, 77], new) > 1


def test_stored_item_out_of_range_is_refused_at_start(client: TestClient, service: Service, settings: Settings) -> None:
    new = _register(client)
    store = ColdItemStore(settings.state_dir)
    rec = json.loads(store.path.read_text().splitlines()[0])
    assert Service.load(settings).cold_ids == [new]  # as stored, it loads
    # a vector 835 times the longest catalogue vector (norm 835 under cosine), as the unnormalised one was
    d = len(rec["vector"])
    rec["vector"] = [835.0 * service.model.max_norm / np.sqrt(d)] * d
    store.path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(StartupError) as e:
        Service.load(settings)
    msg = str(e.value)
    assert "\n" not in msg and f"item {new}" in msg and str(store.path) in msg and "vector norm" in msg
    rec["vector"], rec["bias"] = [1.0 / np.sqrt(d)] * d, 1e6  # in range, but a bias no catalogue item has
    store.path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(StartupError, match=rf"item {new}: bias"):
        Service.load(settings)


def test_delete_needs_the_token_and_refuses_catalogue_and_unknown_items(client: TestClient) -> None:
    new = _register(client)
    assert client.delete(f"/v1/items/{new}").status_code == 401
    assert client.delete(f"/v1/items/{new}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.delete("/v1/items/7", headers=AUTH)
    assert r.status_code == 409, r.text
    (d,) = r.json()["detail"]
    assert d["loc"] == ["path", "item_id"] and "catalogue item" in d["msg"]
    r = client.delete("/v1/items/99999", headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["path", "item_id"]
    assert client.get("/v1/items/7").status_code == 200 and client.get(f"/v1/items/{new}").status_code == 200


def test_delete_removes_the_item_everywhere_and_from_the_store(
    client: TestClient, service: Service, settings: Settings
) -> None:
    other = Service.load(settings)  # a second worker sharing the state dir
    a = _register(client)
    b = _register(client, title="Movie Threequel")
    other.sync()
    assert {a, b} <= set(other.model.row_of)
    before = service.model.vectors[service.model.row_of[b]].copy()
    edges = service.n_edges

    r = client.delete(f"/v1/items/{a}", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"/v1/items/{a}").status_code == 404
    assert client.delete(f"/v1/items/{a}", headers=AUTH).status_code == 404
    assert a not in service.model.row_of and item_node(a) not in service.graph and a not in service.cold_ids
    assert client.post("/v1/score", json={"history": [6], "item_ids": [a]}).status_code == 404
    ranked = client.post("/v1/recommend", json={"history": [6, 1], "k": 30, "explain": True}).json()["items"]
    assert a not in [it["id"] for it in ranked]
    assert client.get("/v1/items", params={"query": "sequel"}).json()["total"] == 0
    assert client.get("/health").json()["cold_items"] == 1 and service.n_edges < edges
    # the survivor keeps its vector (rows after the deleted one moved up)
    assert np.array_equal(service.model.vectors[service.model.row_of[b]], before)
    assert client.post("/v1/explain", json={"history": [6], "item_id": b}).json()["paths"]

    # the store: the item's data is gone (a tombstone keeps only its id), the file was replaced whole
    text = ColdItemStore(settings.state_dir).path.read_text()
    assert "Movie Sequel" not in text and "Movie Threequel" in text
    assert json.loads(text.splitlines()[0]) == {"id": a, "deleted": True}

    # the other worker follows the deletion; a restart does not bring it back; ids are not reused
    other.sync()
    assert a not in other.model.row_of and a not in other.catalogue and b in other.model.row_of
    again = Service.load(settings)
    assert again.cold_ids == [b] and a not in again.catalogue
    c = _register(client, title="Movie Fourquel")
    assert c == b + 1
    other.sync()
    assert c in other.model.row_of and other.catalogue.get(c).title == "Movie Fourquel"
