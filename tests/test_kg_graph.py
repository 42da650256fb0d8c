"""KG schema, labels, building, save/load and cold-start items, on a hand-built 6-item catalogue."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pytest

from kg import schema
from kg.coldstart import add_item, neighbour_prior, neighbours
from kg.errors import (
    CatalogueMismatchError,
    DuplicateItemError,
    InvalidItemError,
    KGFileError,
    KGVersionError,
    NoNeighboursError,
    UnknownItemError,
)
from kg.graph import (
    build_graph,
    catalogue_fingerprint,
    graph_fingerprint,
    item_ids,
    load_graph,
    require_item,
    save_graph,
)
from kg.paths import explain
from kg.schema import entity_label

R = "http://dbpedia.org/resource/"
LASSETER, HANKS, FILMS_1995 = R + "John_Lasseter", R + "Tom_Hanks", R + "Category:1995_films"
P_LASSETER, P_HANKS = "person:" + LASSETER, "person:" + HANKS


def toy_items() -> list[dict]:
    return [
        {
            "id": 1,
            "title": "Toy Story",
            "year": 1995,
            "genres": ["Animation", "Comedy"],
            "entities": {"director": [LASSETER], "starring": [HANKS], "subject": [FILMS_1995]},
        },
        {"id": 2, "title": "A Bug's Life", "year": 1998, "genres": ["Animation"], "entities": {"director": [LASSETER]}},
        {"id": 3, "title": "Big", "year": 1988, "genres": ["Comedy"], "entities": {"starring": [HANKS]}},
        {"id": 4, "title": "Heat", "year": 1995, "genres": ["Crime"], "entities": {"subject": [FILMS_1995]}},
        {"id": 5, "title": "Luxo Jr.", "year": 1986, "genres": [], "entities": {"writer": [LASSETER]}},
        {"id": 6, "title": "Orphan", "year": None, "genres": ["Documentary"], "entities": {}},
    ]


@pytest.fixture
def graph() -> nx.MultiDiGraph:
    return build_graph(toy_items())


# ------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    ("entity", "label"),
    [
        (LASSETER, "John Lasseter"),
        (FILMS_1995, "1995 films"),
        (R + "Y%3FN-Vee", "Y?N-Vee"),
        (R + "Gary_%22Litefoot%22_Davis", 'Gary "Litefoot" Davis'),
        (R + "Joel_Cohen_(writer)", "Joel Cohen (writer)"),
        ("  Film   noir ", "Film noir"),
        ("Category:1990s_buddy_comedy_films", "1990s buddy comedy films"),
    ],
)
def test_entity_label(entity: str, label: str) -> None:
    assert entity_label(entity) == label


def test_entity_label_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        entity_label(R + "Category:")


def test_schema_patterns_and_weights() -> None:
    assert schema.is_allowed("director", "director")
    assert schema.is_allowed("writer", "director")  # same person, two roles
    assert not schema.is_allowed("subject", "director")
    assert not schema.is_allowed("distributor", "producer")
    assert all(r in schema.RELATIONS for pattern in schema.PATH_PATTERNS for r in pattern)
    w = schema.RELATION_WEIGHTS
    assert w["director"] >= w["writer"] > w["starring"] > w["cinematography"] == w["producer"]
    assert w["producer"] > w["subject"] > w["has_genre"] >= w["released_in_decade"] > w["distributor"]
    assert schema.pattern_weight("writer", "director") < schema.pattern_weight("director", "director")
    with pytest.raises(ValueError, match="subject"):
        schema.pattern_weight("subject", "director")


# ------------------------------------------------------------------------------------- build


def test_build_nodes_edges_and_labels(graph: nx.MultiDiGraph) -> None:
    assert item_ids(graph) == [1, 2, 3, 4, 5, 6]
    assert graph.nodes["item:1"] == {
        "type": "item",
        "label": "Toy Story (1995)",
        "item_id": 1,
        "title": "Toy Story",
        "year": 1995,
    }
    assert graph.nodes[P_LASSETER] == {"type": "person", "label": "John Lasseter"}
    assert graph.nodes["category:" + FILMS_1995]["label"] == "1995 films"
    assert graph.nodes["decade:1990s"]["type"] == "decade"
    assert graph.has_edge("item:1", P_LASSETER, key="director")
    assert graph.has_edge("item:5", P_LASSETER, key="writer")
    assert graph.has_edge("item:1", "genre:Comedy", key="has_genre")
    assert graph.has_edge("item:2", "decade:1990s", key="released_in_decade")
    assert graph.nodes["item:6"]["label"] == "Orphan"  # no year: no decade node, no "(None)"
    assert list(graph.successors("item:6")) == ["genre:Documentary"]
    types = {d["type"] for _, d in graph.nodes(data=True)}
    assert types <= set(schema.ENTITY_TYPES) and "user" not in types
    for head, tail, rel in graph.edges(keys=True):  # every edge item -> entity, typed by the schema
        assert (graph.nodes[head]["type"], graph.nodes[tail]["type"]) == tuple(schema.RELATIONS[rel])


def test_build_accepts_objects_with_attributes() -> None:
    @dataclass
    class Item:
        id: int
        title: str
        year: int | None = None
        genres: list[str] = field(default_factory=list)
        entities: dict[str, list[str]] = field(default_factory=dict)

    g = build_graph([Item(7, "Mirror Has Two Faces, The", 1996, ["Comedy"], {"director": [R + "Barbra_Streisand"]})])
    assert g.nodes["item:7"]["label"] == "The Mirror Has Two Faces (1996)"
    assert g.nodes["item:7"]["title"] == "Mirror Has Two Faces, The"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"id": "7", "title": "X"}, "id must be an int"),
        ({"id": 7, "title": ""}, "item 7: title"),
        ({"id": 7, "title": "X", "year": "1995"}, "item 7: year"),
        ({"id": 7, "title": "X", "genres": "Comedy"}, "item 7: genres"),
        ({"id": 7, "title": "X", "entities": {"director": [""]}}, "item 7: entities"),
        ({"id": 7, "title": "X", "entities": {"lyricist": ["Randy_Newman"]}}, "item 7: relation 'lyricist'"),
    ],
)
def test_build_rejects_bad_items(bad: dict, match: str) -> None:
    with pytest.raises(InvalidItemError, match=match):
        build_graph([bad])


def test_build_rejects_duplicate_ids() -> None:
    with pytest.raises(DuplicateItemError, match="item 1"):
        build_graph(toy_items() + [{"id": 1, "title": "Again"}])


def test_build_can_skip_unknown_relations_loudly(caplog: pytest.LogCaptureFixture) -> None:
    items = [{"id": 7, "title": "X", "entities": {"tag": ["funny", "pixar"], "director": [LASSETER]}}]
    with caplog.at_level(logging.WARNING, logger="kg.graph"):
        g = build_graph(items, unknown_relations="skip")
    assert list(g.successors("item:7")) == [P_LASSETER]
    assert "'tag': 2" in caplog.text


def test_unknown_item_error_names_the_id(graph: nx.MultiDiGraph) -> None:
    with pytest.raises(UnknownItemError) as info:
        require_item(graph, 99)
    assert isinstance(info.value, KeyError) and isinstance(info.value, nx.NodeNotFound)
    assert str(info.value) == "item 99 is not in the knowledge graph"
    assert info.value.item_id == 99


# ---------------------------------------------------------------------------------- save/load


def test_save_load_roundtrip(graph: nx.MultiDiGraph, tmp_path) -> None:
    path = save_graph(graph, tmp_path / "kg" / "graph.json")
    assert [p.name for p in path.parent.iterdir()] == ["graph.json"]  # no temp file left behind
    loaded = load_graph(path, catalogue=toy_items())
    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert sorted(loaded.edges(keys=True)) == sorted(graph.edges(keys=True))
    assert graph_fingerprint(loaded) == catalogue_fingerprint(toy_items())
    assert load_graph(path, fingerprint=catalogue_fingerprint(toy_items())).number_of_edges() == 18


def _rewrite(path, edit) -> None:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload, indent=1))


def test_load_rejects_malformed_json(graph: nx.MultiDiGraph, tmp_path) -> None:
    path = tmp_path / "g.json"
    path.write_text('{\n  "format": "fedxrec-kg",\n  "graph": [1, 2,\n')
    with pytest.raises(KGFileError, match=r"g\.json:4: not valid JSON"):
        load_graph(path)
    with pytest.raises(KGFileError, match="cannot read"):
        load_graph(tmp_path / "missing.json")
    path.write_text('{"format": "something-else"}')
    with pytest.raises(KGFileError, match="not a fedxrec-kg file"):
        load_graph(path)


def test_load_rejects_wrong_version(graph: nx.MultiDiGraph, tmp_path) -> None:
    path = save_graph(graph, tmp_path / "g.json")
    _rewrite(path, lambda p: p.update(format_version=99))
    with pytest.raises(KGVersionError, match="format version 99"):
        load_graph(path)


def test_load_rejects_other_catalogue(graph: nx.MultiDiGraph, tmp_path) -> None:
    path = save_graph(graph, tmp_path / "g.json")
    other = toy_items()[:-1]
    with pytest.raises(CatalogueMismatchError, match="another catalogue"):
        load_graph(path, catalogue=other)
    renamed = toy_items()
    renamed[0]["title"] = "Toy Story (renamed)"
    with pytest.raises(CatalogueMismatchError):
        load_graph(path, catalogue=renamed)


def test_load_rejects_edited_graph(graph: nx.MultiDiGraph, tmp_path) -> None:
    path = save_graph(graph, tmp_path / "g.json")

    def retitle(p: dict) -> None:
        p["graph"]["nodes"][0]["title"] = "Edited"

    _rewrite(path, retitle)
    with pytest.raises(KGFileError, match="fingerprint does not match"):
        load_graph(path)

    path = save_graph(graph, tmp_path / "g2.json")

    def bad_relation(p: dict) -> None:
        p["graph"]["edges"][0]["key"] = "likes"

    _rewrite(path, bad_relation)
    with pytest.raises(KGFileError, match="'likes'.*does not fit the schema"):
        load_graph(path)


# ---------------------------------------------------------------------------------- cold start

COLD = {
    "id": 7,
    "title": "Toy Story 2",
    "year": 1999,
    "genres": ["Animation"],
    "entities": {"director": [LASSETER], "starring": [HANKS]},
}


def test_cold_item_becomes_explainable(graph: nx.MultiDiGraph) -> None:
    assert add_item(graph, COLD) == "item:7"
    ex = explain(graph, [2], 7)
    assert ex.found and ex.best is not None
    assert ex.best.triples[0].as_tuple() == ("item:2", "director", P_LASSETER)
    assert ex.best.triples[1].as_tuple() == ("item:7", "director", P_LASSETER)
    assert graph_fingerprint(graph) == catalogue_fingerprint(toy_items() + [COLD])
    with pytest.raises(DuplicateItemError, match="item 7"):
        add_item(graph, COLD)


def _expected_neighbour_weights() -> dict[int, float]:
    # after insertion: Lasseter links 1, 2, 5, 7 (d=4); Hanks 1, 3, 7 (d=3);
    # Animation 1, 2, 7 (d=3); 1990s 1, 2, 4, 7 (d=4)
    w = schema.RELATION_WEIGHTS
    cross = schema.CROSS_ROLE_DISCOUNT * math.sqrt(w["writer"] * w["director"])
    ln3, ln4 = math.log(3), math.log(4)
    return {
        1: w["director"] / ln4 + w["starring"] / ln3 + w["has_genre"] / ln3 + w["released_in_decade"] / ln4,
        2: w["director"] / ln4 + w["has_genre"] / ln3 + w["released_in_decade"] / ln4,
        3: w["starring"] / ln3,
        4: w["released_in_decade"] / ln4,
        5: cross / ln4,  # Lasseter wrote 5 and directed 7
    }


def test_neighbours_weights_by_hand(graph: nx.MultiDiGraph) -> None:
    add_item(graph, COLD)
    found = neighbours(graph, 7)
    expected = _expected_neighbour_weights()
    assert [i for i, _ in found] == sorted(expected, key=lambda i: -expected[i])
    for i, w in found:
        assert w == pytest.approx(expected[i])


def test_neighbour_prior_is_the_weighted_mean(graph: nx.MultiDiGraph) -> None:
    add_item(graph, COLD)
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2) ** 1.5  # rows 0..5 = items 1..6
    row_of = {i: i - 1 for i in range(1, 7)}
    w = _expected_neighbour_weights()
    expected = sum(w[i] * vectors[row_of[i]] for i in w) / sum(w.values())
    prior = neighbour_prior(graph, 7, vectors, row_of)
    assert prior.shape == (2,) and prior.dtype == np.float32
    np.testing.assert_allclose(prior, expected, rtol=1e-5)
    np.testing.assert_allclose(neighbour_prior(graph, 7, vectors, row_of, max_neighbours=1), vectors[0])
    only_3 = neighbour_prior(graph, 7, vectors, {3: 2})  # neighbours without a vector are left out
    np.testing.assert_allclose(only_3, vectors[2])


def test_neighbour_prior_errors(graph: nx.MultiDiGraph) -> None:
    vectors = np.zeros((6, 2))
    row_of = {i: i - 1 for i in range(1, 7)}
    with pytest.raises(NoNeighboursError, match="item 6"):  # its only genre links nothing else
        neighbour_prior(graph, 6, vectors, row_of)
    with pytest.raises(UnknownItemError, match="item 42"):
        neighbour_prior(graph, 42, vectors, row_of)
    with pytest.raises(ValueError, match="rows out of range"):
        neighbour_prior(graph, 1, vectors, {2: 10})
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        neighbour_prior(graph, 1, np.zeros(6), row_of)
