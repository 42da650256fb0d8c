"""Explanation kinds on a hand-built 10-item graph: specific entities first, coarse links last, metrics by hand."""

from __future__ import annotations

from itertools import combinations

import networkx as nx
import pytest

from kg.explainer import PathExplainer
from kg.graph import build_graph
from kg.metrics import entity_share, explanation_metrics, faithfulness, fidelity, fidelity_specific, first_path_kinds
from kg.paths import PathScoring, explain, explain_items, find_paths
from kg.schema import PERSON_RELATIONS, RELATION_KINDS, RELATIONS

R = "http://dbpedia.org/resource/"
D1, S1 = R + "Director_One", R + "Star_One"
BIGCO, SMALLCO = R + "Big_Pictures", R + "Small_Films"
Y1995, WRITERS, ARIZONA = (
    R + "Category:1995_films",
    R + "Category:Films_about_writers",
    R + "Category:Films_shot_in_Arizona",
)


@pytest.fixture
def graph() -> nx.MultiDiGraph:
    # N = 10 items: an entity linking more than sqrt(2 N) = 4.47 of them is coarse (Big Pictures, 5 films)
    def item(i: int, title: str, year: int | None, genres: list[str], **entities: list[str]) -> dict:
        return {"id": i, "title": title, "year": year, "genres": genres, "entities": entities}

    return build_graph(
        [
            item(1, "Alpha", 1995, ["Drama"], director=[D1], distributor=[BIGCO], subject=[Y1995, WRITERS]),
            item(2, "Beta", 1995, ["Drama"], director=[D1], distributor=[BIGCO], subject=[Y1995]),
            item(3, "Gamma", 1996, ["Drama", "War"], distributor=[SMALLCO], subject=[WRITERS, ARIZONA]),
            item(4, "Delta", 1996, ["War"], distributor=[SMALLCO], subject=[ARIZONA]),
            item(5, "Epsilon", 1997, ["Drama"], distributor=[BIGCO]),
            item(6, "Zeta", 1980, ["Comedy"], distributor=[BIGCO]),
            item(7, "Eta", 1981, ["Comedy"], distributor=[BIGCO], starring=[S1]),
            item(8, "Theta", 1985, ["Horror"], starring=[S1]),
            item(9, "Iota", None, ["Documentary"]),
            item(10, "Kappa", 1970, ["Western"], subject=[WRITERS]),
        ]
    )


def test_relation_kinds_cover_the_schema() -> None:
    assert set(RELATION_KINDS) == set(RELATIONS)
    assert all(RELATION_KINDS[r] == "person" for r in PERSON_RELATIONS)
    assert (RELATION_KINDS["distributor"], RELATION_KINDS["subject"]) == ("company", "category")
    assert RELATION_KINDS["has_genre"] == RELATION_KINDS["released_in_decade"] == "coarse"


def test_person_path_first_even_when_a_genre_path_scores_higher(graph: nx.MultiDiGraph) -> None:
    def sim(history_item: int, item: int) -> float:
        return 1.0 if history_item == 5 else 0.1  # the model finds Epsilon (a fellow Drama) closest to Beta

    # Alpha shares a director with Beta; Epsilon, newer and more similar, shares only coarse links
    ex = explain(graph, [1, 5], 2, sim=sim, scoring=PathScoring(similarity_weight=1.0))
    best = ex.best
    assert best is not None and (best.kind, best.entity_label, best.history_item) == ("person", "Director One", 1)
    assert ex.sentence == "Because you watched Alpha (1995), also directed by Director One."
    assert all(p.kind == "coarse" for p in ex.paths[1:])
    assert max(p.score for p in ex.paths[1:]) > best.score  # the ordering is by kind, not by score
    by_score = explain(graph, [1, 5], 2, sim=sim, scoring=PathScoring(similarity_weight=1.0, rank_by_kind=False))
    assert by_score.best is not None and by_score.best.kind == "coarse"  # what it was before kinds


def test_company_first_and_categories_named_after_a_year_or_location_are_coarse(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [3], 4, max_paths=None)  # Small Films, Films shot in Arizona, War, 1990s
    assert [(p.kind, p.entity_label) for p in ex.paths][0] == ("company", "Small Films")
    kinds = {p.entity_label: p.kind for p in ex.paths}
    assert kinds == {"Small Films": "company", "Films shot in Arizona": "coarse", "War": "coarse", "1990s": "coarse"}
    ex = explain(graph, [2], 1, max_paths=None)  # '1995 films' links 2 items only, but names a year
    assert {p.entity_label: p.kind for p in ex.paths}["1995 films"] == "coarse"
    assert [p.kind for p in ex.paths] == ["person", "coarse", "coarse", "coarse", "coarse"]


def test_a_distributor_of_half_the_catalogue_is_coarse(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [7], 6, max_paths=None)  # Big Pictures (5 of 10 films), Comedy, 1980s
    assert {p.entity_label: p.kind for p in ex.paths} == {
        "Big Pictures": "coarse",
        "Comedy": "coarse",
        "1980s": "coarse",
    }
    loose = explain(graph, [7], 6, max_paths=None, scoring=PathScoring(coarse_specificity=0.0))
    assert {p.entity_label: p.kind for p in loose.paths}["Big Pictures"] == "company"
    assert loose.paths[0].entity_label == "Big Pictures"
    with pytest.raises(ValueError, match="coarse_specificity"):
        PathScoring(coarse_specificity=1.5)


def test_specific_category_before_genre_and_genre_when_nothing_else(graph: nx.MultiDiGraph) -> None:
    ex = explain(graph, [3], 1)  # Films about writers, Drama, 1990s (Alpha's director is not in this history)
    assert ex.best is not None and (ex.best.kind, ex.best.entity_label) == ("category", "Films about writers")
    ex = explain(graph, [6], 8)  # only the decade links Zeta and Theta
    assert ex.best is not None and (ex.best.kind, ex.best.entity_label) == ("coarse", "1980s")
    assert ex.sentence == "Because you watched Zeta (1980), another film from the 1980s."
    assert len(ex.paths) == 1


def test_kind_metrics_by_hand(graph: nx.MultiDiGraph) -> None:
    history = [2, 3, 7]
    exs = explain_items(graph, history, [1, 4, 8, 9, 5, 10])
    # 1: Director One (person, via 2); 4: Small Films (company, via 3); 8: Star One (person, via 7);
    # 9: nothing; 5: Big Pictures / Drama / 1990s only (coarse); 10: Films about writers (category, via 3)
    assert [e.best.kind if e.best else None for e in exs] == ["person", "company", "person", None, "coarse", "category"]
    assert entity_share(exs) == pytest.approx(3 / 6)
    assert fidelity(exs) == pytest.approx(5 / 6)
    assert fidelity_specific(exs) == pytest.approx(4 / 6)
    assert first_path_kinds(exs) == pytest.approx(
        {"person": 2 / 6, "company": 1 / 6, "category": 1 / 6, "coarse": 1 / 6, "none": 1 / 6}
    )
    assert entity_share(exs, k=3) == 1.0 and fidelity_specific(exs, k=4) == pytest.approx(3 / 4)
    assert entity_share([]) == fidelity_specific([]) == 0.0
    m = explanation_metrics(graph, exs, history)
    assert (m["entity_share"], m["fidelity_specific"], m["faithfulness"]) == (
        pytest.approx(0.5),
        pytest.approx(2 / 3),
        1.0,
    )


def test_every_ranked_path_is_real_and_the_fast_explainer_agrees(graph: nx.MultiDiGraph) -> None:
    ids = list(range(1, 11))
    px = PathExplainer(graph)
    for n in (1, 2, 3):
        for history in combinations(ids, n):
            want = explain_items(graph, list(history), ids, max_paths=3)
            assert faithfulness(graph, want) == 1.0
            assert px.explain(list(history), ids, max_paths=3) == want
            for e in want:
                ranks = [("person", "company", "category", "coarse").index(p.kind) for p in e.paths]
                assert ranks == sorted(ranks)
    by_score = PathExplainer(graph, PathScoring(rank_by_kind=False))
    for history in combinations(ids, 2):
        want = explain_items(graph, list(history), ids, scoring=PathScoring(rank_by_kind=False))
        assert by_score.explain(list(history), ids) == want
        for e in want:
            assert [p.score for p in e.paths] == sorted((p.score for p in e.paths), reverse=True)
    every = find_paths(graph, [1, 3, 5, 7], 2)  # all allowed paths, not only the kept ones
    assert every and all(graph.has_edge(t.head, t.tail, key=t.relation) for p in every for t in p.triples)
