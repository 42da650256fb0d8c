"""Explanation-quality metrics and re-ranking on hand-computed cases."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from kg.graph import build_graph
from kg.metrics import (
    etd,
    explanation_metrics,
    faithfulness,
    fidelity,
    lir,
    pn_rank,
    pn_score,
    rerank,
    sep,
    sep_table,
)
from kg.paths import Explanation, Path, Triple, explain_items
from kg.recency import lir_weights, order_by_time

R = "http://dbpedia.org/resource/"
LASSETER, HANKS = R + "John_Lasseter", R + "Tom_Hanks"
P_LASSETER, P_HANKS = "person:" + LASSETER, "person:" + HANKS


@pytest.fixture
def graph() -> nx.MultiDiGraph:
    return build_graph(
        [
            {"id": 1, "title": "Toy Story", "year": 1995, "genres": ["Animation", "Comedy"]},
            {"id": 2, "title": "A Bug's Life", "year": 1998, "genres": ["Animation"]},
            {"id": 3, "title": "Big", "year": 1988, "genres": ["Comedy"]},
            {"id": 4, "title": "Heat", "year": 1995, "genres": ["Crime"]},
            {"id": 5, "title": "Orphan", "year": None, "genres": ["Documentary"]},
        ]
    )


def _path(history_item: int, item: int, entity: str, relation: str = "director", kind: str = "person") -> Path:
    triples = (
        Triple(f"item:{history_item}", relation, entity, "h", "e"),
        Triple(f"item:{item}", relation, entity, "t", "e"),
    )
    return Path(triples, history_item, item, entity, "e", "person", relation, relation, 1.0, kind)


def _ex(item: int, *paths: Path) -> Explanation:
    return Explanation(item, tuple(paths), "s")


# ------------------------------------------------------------------------------------ recency


def test_lir_weights_by_hand() -> None:
    # s = [0, 0.5*1, 0.5*2 + 0.5*0.5] = [0, 0.5, 1.25] -> / 1.25
    np.testing.assert_allclose(lir_weights(3, beta=0.5), [0.0, 0.4, 1.0])
    np.testing.assert_allclose(lir_weights(2), [0.0, 1.0])
    assert lir_weights(1).tolist() == [0.0]  # a single interaction has no recency, as in the paper's code
    with pytest.raises(ValueError, match="beta"):
        lir_weights(3, beta=0.0)


def test_order_by_time() -> None:
    assert order_by_time([10, 20, 30]) == [10, 20, 30]
    assert order_by_time([10, 20, 30], [3, 1, 2]) == [20, 30, 10]
    assert order_by_time([10, 20, 10]) == [20, 10]  # a repeat keeps its latest position


def test_lir_by_hand() -> None:
    exs = [_ex(1, _path(20, 1, P_LASSETER)), _ex(2), _ex(3, _path(30, 3, P_HANKS))]
    assert lir(exs, [10, 20, 30], beta=0.5) == pytest.approx((0.4 + 1.0) / 2)
    assert lir(exs, [10, 20, 30], timestamps=[3, 2, 1], beta=0.5) == pytest.approx((0.4 + 0.0) / 2)
    assert lir([_ex(2)], [10, 20]) == 0.0
    with pytest.raises(ValueError, match="linking item 20 is not in the history"):
        lir(exs, [10, 30])


# ----------------------------------------------------------------------------------------- SEP


def test_sep_table_by_hand() -> None:
    g = build_graph(
        [
            {
                "id": 1,
                "title": "A",
                "genres": ["Animation", "Comedy"],
                "entities": {"director": [LASSETER], "starring": [HANKS]},
            },
            {"id": 2, "title": "B", "genres": ["Animation"], "entities": {"director": [LASSETER]}},
            {"id": 3, "title": "C", "genres": ["Comedy"], "entities": {"starring": [LASSETER]}},
            {"id": 4, "title": "D", "genres": ["Crime"]},
            {"id": 5, "title": "E", "genres": ["Documentary"]},
        ]
    )
    table = sep_table(g, beta=0.5)
    # persons by degree: Hanks 1, Lasseter 3 -> positions 0, 1 -> 0, 1
    assert table[P_HANKS] == 0.0 and table[P_LASSETER] == 1.0
    # genres by degree: Crime 1, Documentary 1, Animation 2, Comedy 2 -> EWMA [0, .5, 1.25, 2.125] / 2.125;
    # equal degrees share the value of their group's first position
    assert table["genre:Crime"] == table["genre:Documentary"] == 0.0
    assert table["genre:Animation"] == table["genre:Comedy"] == pytest.approx(1.25 / 2.125)
    exs = [_ex(1, _path(2, 1, P_LASSETER)), _ex(3, _path(1, 3, P_HANKS)), _ex(4)]
    assert sep(exs, table) == pytest.approx(0.5)
    assert sep([_ex(4)], table) == 0.0
    with pytest.raises(ValueError, match="not in the SEP table"):
        sep([_ex(1, _path(2, 1, "person:nobody"))], table)


# ----------------------------------------------------------------------------------------- ETD


def test_etd_by_hand() -> None:
    exs = [
        _ex(1, _path(9, 1, "a", "director")),
        _ex(2, _path(9, 2, "b", "director")),
        _ex(3, _path(9, 3, "c", "starring")),
        _ex(4),
    ]
    assert etd(exs, k=10, n_path_types=9) == pytest.approx(2 / 9)  # 2 types over min(10, 9 path types)
    assert etd(exs, k=10) == pytest.approx(2 / 10)  # default: every schema relation, 11 > k
    assert etd(exs, k=2, n_path_types=9) == pytest.approx(1 / 2)  # top-2: one type over min(2, 9)
    assert etd([_ex(1)], k=10) == 0.0


# ----------------------------------------------------------------------- fidelity, faithfulness


def test_fidelity_by_hand() -> None:
    exs = [_ex(1, _path(9, 1, "a")), _ex(2), _ex(3, _path(9, 3, "a")), _ex(4, _path(9, 4, "a"))]
    assert fidelity(exs) == 0.75
    assert fidelity(exs, k=2) == 0.5
    assert fidelity([]) == 0.0


def test_faithfulness(graph: nx.MultiDiGraph) -> None:
    exs = explain_items(graph, [2, 3, 4], [1, 2, 3, 4, 5], max_paths=None)
    assert sum(len(e.paths) for e in exs) > 0
    assert faithfulness(graph, exs) == 1.0
    invented = _ex(1, _path(2, 1, "genre:Comedy", "has_genre"))  # Bug's Life is no Comedy
    cited = sum(len(p.triples) for e in exs for p in e.paths) + 2
    assert faithfulness(graph, [*exs, invented]) == pytest.approx((cited - 1) / cited)
    assert faithfulness(graph, [_ex(1)]) == 1.0  # nothing cited, nothing false


# -------------------------------------------------------------------- counterfactual necessity

# score(history, items) = sum over the history of M[h][item]
M = {
    "h1": {"A": 1.0, "B": 0.0, "C": 0.9, "D": 0.0},
    "h2": {"A": 1.0, "B": 1.6, "C": 0.0, "D": 0.0},
}
IDS = {"h1": 11, "h2": 12, "A": 1, "B": 2, "C": 3, "D": 4}
NAME = {v: k for k, v in IDS.items()}


def toy_score(history: list[int], items: list[int]) -> np.ndarray:
    return np.array([sum(M[NAME[h]][NAME[i]] for h in history) for i in items])


def _toy_explanations() -> list[Explanation]:
    return [
        _ex(1, _path(11, 1, "x")),  # A via h1: 2 -> 1 (lower), stays in the top-2
        _ex(2, _path(12, 2, "x")),  # B via h2: 1.6 -> 0 (lower), drops out of the top-2
        _ex(3, _path(11, 3, "x")),  # C via h1: 0.9 -> 0 (lower), not in the top-2
        _ex(4, _path(12, 4, "x")),  # D via h2: 0 -> 0 (unchanged)
    ]


def test_pn_score_by_hand() -> None:
    assert pn_score(_toy_explanations(), [11, 12], toy_score) == pytest.approx(3 / 4)
    assert pn_score([_ex(1)], [11, 12], toy_score) == 0.0


def test_pn_rank_by_hand() -> None:
    # base: A 2, B 1.6, C 0.9, D 0 -> top-2 {A, B}; without h1: {B, A}; without h2: {A, C}
    assert pn_rank(_toy_explanations(), [11, 12], toy_score, [1, 2, 3, 4], k=2) == pytest.approx(1 / 2)
    assert pn_rank(_toy_explanations(), [11, 12], toy_score, [1, 2, 3, 4], k=4) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------- re-ranking


def test_rerank_changes_order_only_with_weight() -> None:
    items = [1, 2, 3]
    scores = np.array([1.0, 0.9, 0.8])
    table = {"e_pop": 1.0, "e_rare": 0.0}
    exs = {2: _ex(2, _path(20, 2, "e_rare")), 3: _ex(3, _path(30, 3, "e_pop", "starring"))}
    history = [20, 30]  # 30 newest: LIR 1
    assert rerank(items, scores, exs, history=history, sep_values=table, weight=0.0) == [1, 2, 3]
    reranked = rerank(items, scores, exs, history=history, sep_values=table, weight=0.8)
    assert reranked[0] == 3 and sorted(reranked) == items
    with pytest.raises(ValueError, match="weight"):
        rerank(items, scores, exs, history=history, sep_values=table, weight=1.5)
    with pytest.raises(ValueError, match="shape"):
        rerank(items, scores[:2], exs, history=history, sep_values=table)


def test_rerank_etd_bonus_prefers_a_new_path_type() -> None:
    items = [1, 2, 3]
    scores = np.array([1.0, 0.99, 0.98])
    exs = {
        i: _ex(i, _path(20, i, f"e{i}", rel))
        for i, rel in zip(items, ["director", "director", "starring"], strict=True)
    }
    order = rerank(items, scores, exs, history=[20], sep_values={}, weight=0.5, lir_weight=0, sep_weight=0)
    assert order == [1, 3, 2]


def test_rerank_entity_term_lifts_a_person_explained_item() -> None:
    items = [1, 2, 3]
    scores = np.array([1.0, 0.95, 0.9])  # normalised: 1, 0.5, 0
    exs = {1: _ex(1, _path(20, 1, "g", "has_genre", "coarse")), 2: _ex(2, _path(20, 2, "p", kind="person"))}
    kw = {"history": [20], "sep_values": {}, "lir_weight": 0, "sep_weight": 0, "etd_weight": 0, "entity_weight": 1}
    # gain = (1 - w) * norm + w * [person]: item 2 overtakes item 1 when 0.5 + 0.5 w > 1 - w, i.e. w > 1/3
    assert rerank(items, scores, exs, weight=0.3, **kw) == [1, 2, 3]
    assert rerank(items, scores, exs, weight=0.4, **kw) == [2, 1, 3]
    with pytest.raises(ValueError, match="entity"):
        rerank(items, scores, exs, history=[20], sep_values={}, entity_weight=-1.0)


def test_explanation_metrics_summary(graph: nx.MultiDiGraph) -> None:
    exs = explain_items(graph, [2, 3], [1, 4, 5])
    out = explanation_metrics(graph, exs, [2, 3])
    assert set(out) == {"fidelity", "fidelity_specific", "entity_share", "faithfulness", "lir", "sep", "etd"}
    # Toy Story links by genre (Animation, Comedy) and decade, Heat by decade (1990s), Orphan not at all
    assert out["fidelity"] == pytest.approx(2 / 3)
    assert out["faithfulness"] == 1.0
    assert [e.best.path_type for e in exs[:2]] == ["has_genre", "released_in_decade"]
    assert out["etd"] == pytest.approx(2 / 2)  # both path types this graph has (genre, decade)
    assert 0.0 <= out["lir"] <= 1.0 and 0.0 <= out["sep"] <= 1.0
