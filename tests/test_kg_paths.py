"""Explanation paths on a hand-built 6-item graph: found, real, ranked, worded, or explicitly absent."""

from __future__ import annotations

import networkx as nx
import pytest

from kg.errors import UnknownItemError
from kg.graph import build_graph
from kg.paths import PathScoring, explain, explain_items, find_paths, sentence

R = "http://dbpedia.org/resource/"
LASSETER, HANKS, FILMS_1995 = R + "John_Lasseter", R + "Tom_Hanks", R + "Category:1995_films"
P_LASSETER = "person:" + LASSETER


@pytest.fixture
def graph() -> nx.MultiDiGraph:
    return build_graph(
        [
            {
                "id": 1,
                "title": "Toy Story",
                "year": 1995,
                "genres": ["Animation", "Comedy"],
                "entities": {"director": [LASSETER], "starring": [HANKS], "subject": [FILMS_1995]},
            },
            {
                "id": 2,
                "title": "A Bug's Life",
                "year": 1998,
                "genres": ["Animation"],
                "entities": {"director": [LASSETER]},
            },
            {"id": 3, "title": "Big", "year": 1988, "genres": ["Comedy"], "entities": {"starring": [HANKS]}},
            {"id": 4, "title": "Heat", "year": 1995, "genres": ["Crime"], "entities": {"subject": [FILMS_1995]}},
            {"id": 5, "title": "Luxo Jr.", "year": 1986, "genres": [], "entities": {"writer": [LASSETER]}},
            {"id": 6, "title": "Orphan", "year": None, "genres": ["Documentary"], "entities": {}},
        ]
    )


def _assert_real(graph: nx.MultiDiGraph, paths) -> None:
    for p in paths:
        for t in p.triples:
            assert graph.has_edge(t.head, t.tail, key=t.relation), t
            assert t.head_label == graph.nodes[t.head]["label"] and t.tail_label == graph.nodes[t.tail]["label"]
        assert p.triples[0].head == f"item:{p.history_item}" and p.triples[1].head == f"item:{p.target_item}"
        assert p.triples[0].tail == p.triples[1].tail == p.entity


def test_known_director_path(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [2], 1)
    best = ex.best
    assert best is not None and ex.item_id == 1
    assert [t.as_tuple() for t in best.triples] == [
        ("item:2", "director", P_LASSETER),
        ("item:1", "director", P_LASSETER),
    ]
    assert (best.history_item, best.entity_label, best.path_type) == (2, "John Lasseter", "director")
    assert ex.sentence == "Because you watched A Bug's Life (1998), also directed by John Lasseter."
    _assert_real(graph, ex.paths)


def test_every_path_is_real_for_every_pair(graph: nx.MultiDiGraph) -> None:
    for h in range(1, 7):
        for t in range(1, 7):
            paths = find_paths(graph, [h], t)
            _assert_real(graph, paths)
            if h == t:
                assert paths == []  # an item never explains itself


def test_no_path_is_explicit_and_invents_nothing(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [6], 1)  # Orphan shares nothing with Toy Story
    assert not ex.found and ex.paths == () and ex.best is None
    assert ex.sentence == "No link was found between your history and Toy Story (1995)."
    assert explain(graph, [1, 2, 3, 4, 5], 6).paths == ()
    assert explain(graph, [], 1).paths == ()  # empty history: nothing to link
    assert explain(graph, [1], 1).paths == ()  # the item itself is no evidence


def test_director_ranks_above_genre_even_when_older(graph: nx.MultiDiGraph) -> None:
    paths = find_paths(graph, [2, 3], 1)  # 3 (newest) shares a star and a genre; 2 a director and a genre
    by_relation = {}
    for p in paths:
        by_relation.setdefault(p.target_relation, []).append(p.score)
    assert set(by_relation) == {"director", "starring", "has_genre", "released_in_decade"}
    assert min(by_relation["director"]) > max(by_relation["has_genre"] + by_relation["released_in_decade"])
    assert [p.kind for p in paths] == ["person"] * 2 + ["coarse"] * (len(paths) - 2)
    assert [p.score for p in paths] == sorted((p.score for p in paths), reverse=True)
    ex = explain(graph, [2, 3], 1)
    assert ex.sentence == "Because you watched Big (1988), which also stars Tom Hanks."


def test_cross_role_path_and_sentence(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [5], 1)
    assert [t.as_tuple() for t in ex.paths[0].triples] == [
        ("item:5", "writer", P_LASSETER),
        ("item:1", "director", P_LASSETER),
    ]
    assert ex.sentence == "Because you watched Luxo Jr. (1986), written by John Lasseter, who also directed this one."


def test_sentence_templates(graph: nx.MultiDiGraph) -> None:
    assert explain(graph, [4], 1).sentence == "Because you watched Heat (1995), also in the category '1995 films'."
    genre = next(p for p in find_paths(graph, [3], 1) if p.path_type == "has_genre")
    assert genre.entity_label == "Comedy"
    assert sentence(genre) == "Because you watched Big (1988), another Comedy."


def test_recency_and_timestamps(graph: nx.MultiDiGraph) -> None:
    def score_via(history, timestamps=None, linking=3):
        paths = find_paths(graph, history, 1, timestamps=timestamps)
        return max(p.score for p in paths if p.history_item == linking)

    newest = score_via([4, 3])
    oldest = score_via([3, 4])
    assert newest > oldest
    assert score_via([3, 4], timestamps=[200, 100]) == pytest.approx(newest)  # times override list order
    with pytest.raises(ValueError, match="timestamps has 1 entries for 2"):
        explain(graph, [3, 4], 1, timestamps=[1])


def test_similarity_callable_reorders_within_a_kind(graph: nx.MultiDiGraph) -> None:
    def sim(history_item: int, item: int) -> float:
        return 1.0 if history_item in (2, 4) else 0.0

    default = explain(graph, [2, 3], 1)  # two person paths: Tom Hanks (newest) before John Lasseter
    assert default.best is not None and default.best.history_item == 3
    steered = explain(graph, [2, 3], 1, sim=sim, scoring=PathScoring(similarity_weight=1.0))
    assert steered.best is not None and steered.best.history_item == 2
    # but similarity never lifts a coarse link ("1995 films", via Heat) above a person (Tom Hanks, via Big)
    steered = explain(graph, [4, 3], 1, sim=sim, scoring=PathScoring(similarity_weight=1.0))
    assert steered.best is not None and (steered.best.history_item, steered.best.kind) == (3, "person")
    assert [p.kind for p in steered.paths] == ["person", "coarse", "coarse"]


def test_explain_items_keeps_order_and_limits(graph: nx.MultiDiGraph) -> None:
    out = explain_items(graph, [2, 3, 4], [6, 1, 5], max_paths=2)
    assert [e.item_id for e in out] == [6, 1, 5]
    assert [e.found for e in out] == [False, True, True]
    assert len(out[1].paths) == 2
    assert len({p.entity for p in out[1].paths}) == 2  # one path per shared entity


def test_unknown_ids_are_named(graph: nx.MultiDiGraph) -> None:
    with pytest.raises(UnknownItemError, match="item 99"):
        explain(graph, [1], 99)
    with pytest.raises(nx.NodeNotFound, match="item 42"):
        explain(graph, [1, 42], 2)
    with pytest.raises(ValueError, match="max_paths"):
        explain(graph, [1], 2, max_paths=0)
    with pytest.raises(ValueError, match="recency_weight"):
        PathScoring(recency_weight=2.0)
