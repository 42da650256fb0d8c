"""The real ml-100k knowledge graph (DBpedia enrichment), built through shared.data."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from kg.graph import build_graph, item_ids, load_graph, save_graph
from kg.metrics import explanation_metrics, sep_table
from kg.paths import explain_items, find_paths
from kg.schema import RELATIONS

DATA_DIR = Path(os.environ.get("FEDXREC_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
LASSETER = "person:http://dbpedia.org/resource/John_Lasseter"
HANKS = "person:http://dbpedia.org/resource/Tom_Hanks"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset():
    if not (DATA_DIR / "ml-100k" / "u.data").exists():
        pytest.skip(f"no ml-100k data under {DATA_DIR}")
    from shared.data import load_ml100k

    return load_ml100k(DATA_DIR)


@pytest.fixture(scope="module")
def graph(dataset) -> nx.MultiDiGraph:
    return build_graph(dataset.catalogue.items)


def test_counts_are_plausible(dataset, graph: nx.MultiDiGraph) -> None:
    assert len(item_ids(graph)) == len(dataset.catalogue) == 1682
    types = Counter(d["type"] for _, d in graph.nodes(data=True))
    assert types["genre"] == 18 and 5 <= types["decade"] <= 10
    assert types["person"] > 3000 and types["category"] > 3000 and types["company"] > 50
    relations = Counter(k for _, _, k in graph.edges(keys=True))
    assert set(relations) == set(RELATIONS) - {"composer", "editor"}  # FranKGraphBench has neither
    assert 30_000 < graph.number_of_edges() < 100_000
    assert graph.nodes["item:1"]["label"] == "Toy Story (1995)"


def test_toy_story_director_or_star_paths(graph: nx.MultiDiGraph) -> None:
    assert graph.has_edge("item:1", LASSETER, key="director")
    other_lasseter = [int(n.split(":")[1]) for n, rels in graph.pred[LASSETER].items() if n != "item:1"]
    if any("director" in graph[f"item:{i}"][LASSETER] for i in other_lasseter):  # e.g. A Bug's Life
        paths = find_paths(graph, other_lasseter, 1)
        assert any(p.entity == LASSETER and p.path_type == "director" for p in paths)
    # Toy Story and Apollo 13 share Tom Hanks; That Thing You Do! is also directed by him (cross-role)
    assert any(p.entity == HANKS and p.path_type == "starring" for p in find_paths(graph, [28], 1))
    assert any(
        p.entity == HANKS and (p.history_relation, p.path_type) == ("director", "starring")
        for p in find_paths(graph, [845], 1)
    )


def test_real_explanations_are_faithful(dataset, graph: nx.MultiDiGraph, tmp_path) -> None:
    inter, ids = dataset.interactions, np.array(dataset.catalogue.ids)
    table = sep_table(graph)
    for user in (1, 2, 3):
        mask = inter.users == user
        order = np.argsort(inter.timestamps[mask], kind="stable")
        history = ids[inter.items[mask][order]][-20:].tolist()
        candidates = [i for i in range(1, 60) if i not in history][:10]
        exs = explain_items(graph, history, candidates)
        out = explanation_metrics(graph, exs, history, sep_values=table)
        assert out["faithfulness"] == 1.0 and out["fidelity"] > 0.5
    loaded = load_graph(save_graph(graph, tmp_path / "kg.json"), catalogue=dataset.catalogue.items)
    assert loaded.number_of_edges() == graph.number_of_edges()
