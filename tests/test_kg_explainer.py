"""The API's fast explainer gives exactly kg.explain_items' explanations (paths, scores, order, sentence)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from conftest import write_tiny_ml100k

import kg
from kg.explainer import PathExplainer
from server.api.routes.convert import explanation_dict
from shared.data import load_ml100k


def _compare(graph: nx.MultiDiGraph, px: PathExplainer, ids: list[int], rng: np.random.Generator, trials: int) -> int:
    vecs = {i: rng.normal(size=8) for i in ids}

    def sim(a: int, b: int) -> float:
        return float(vecs[a] @ vecs[b] / np.linalg.norm(vecs[a]) / np.linalg.norm(vecs[b]))

    checked = 0
    for n in range(trials):
        history = [int(x) for x in rng.choice(ids, size=int(rng.integers(1, 25)))]  # repeats allowed
        targets = [int(x) for x in rng.choice(ids, size=10, replace=False)]
        ts = rng.integers(0, 4, len(history)).astype(float).tolist() if n % 2 else None  # ties in time too
        for s in (None, sim):
            for max_paths in (1, 3, 7):
                want = kg.explain_items(graph, history, targets, timestamps=ts, sim=s, max_paths=max_paths)
                got = px.explain(history, targets, timestamps=ts, sim=s, max_paths=max_paths)
                assert got == want, (history, targets, ts, max_paths)
                data = px.explain_data(history, targets, timestamps=ts, sim=s, max_paths=max_paths)
                assert data == [explanation_dict(e) for e in want]
                checked += sum(len(e.paths) for e in got)
    return checked


def test_matches_kg_on_the_tiny_catalogue(tmp_path: Path) -> None:
    items = load_ml100k(write_tiny_ml100k(tmp_path / "data")).catalogue.items
    graph = kg.build_graph(items)
    px = PathExplainer(graph)
    assert _compare(graph, px, [it.id for it in items], np.random.default_rng(0), 40) > 100


def test_matches_kg_after_a_cold_item_and_refresh(tmp_path: Path) -> None:
    items = load_ml100k(write_tiny_ml100k(tmp_path / "data")).catalogue.items
    graph = kg.build_graph(items)
    px = PathExplainer(graph)
    kg.add_item(graph, {"id": 500, "title": "New", "year": 1985, "genres": ["Drama"], "entities": {"director": ["D"]}})
    kg.add_item(graph, {"id": 501, "title": "Newer", "year": 1999, "genres": [], "entities": {"director": ["D"]}})
    px.refresh()
    (e,) = px.explain([500], [501])
    assert e.best is not None and e.best.entity_label == "D"
    assert _compare(graph, px, [it.id for it in items] + [500, 501], np.random.default_rng(1), 10) > 0


def test_errors_match_kg(tmp_path: Path) -> None:
    items = load_ml100k(write_tiny_ml100k(tmp_path / "data")).catalogue.items
    px = PathExplainer(kg.build_graph(items))
    with pytest.raises(kg.UnknownItemError, match="9999"):
        px.explain([1], [9999])
    with pytest.raises(kg.UnknownItemError, match="8888"):
        px.explain([8888], [1])
    with pytest.raises(ValueError, match="timestamps"):
        px.explain([1, 2], [3], timestamps=[1.0])
    with pytest.raises(ValueError, match="max_paths"):
        px.explain([1], [3], max_paths=0)


@pytest.mark.slow
def test_matches_kg_on_real_ml100k(data_dir: Path) -> None:
    items = load_ml100k(data_dir).catalogue.items
    graph = kg.build_graph(items, unknown_relations="skip")
    assert _compare(graph, PathExplainer(graph), [it.id for it in items], np.random.default_rng(2), 15) > 500
