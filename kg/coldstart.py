"""Cold-start items: insert a new item at run time and give it a collaborative prior from the KG.

A cold item has text (embedded by the text tower elsewhere) and metadata. Its KG neighbours, the
items sharing a director, star, writer, category, ... with it, give a prior vector: the weighted
mean of their item vectors. The caller combines that prior with the text vector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import networkx as nx
import numpy as np

from kg.errors import NoNeighboursError
from kg.graph import ItemLike, UnknownRelations, entity_degree, insert_item, item_record, require_item
from kg.schema import CROSS_ROLE_DISCOUNT, RELATION_WEIGHTS, is_allowed

log = logging.getLogger(__name__)

DEFAULT_MAX_NEIGHBOURS = 50


def add_item(graph: nx.MultiDiGraph, item: ItemLike, *, unknown_relations: UnknownRelations = "error") -> str:
    """Insert a new item (id, title, year, genres, entity links) and return its node id.

    The item is explainable and has neighbours at once. The graph's catalogue fingerprint
    changes with it, as the caller's catalogue should.

    Raises
    ------
    DuplicateItemError
        If the id is already in the graph.
    InvalidItemError
        If a field is ill-formed or (by default) a relation is outside the schema.
    """
    rec = item_record(item)
    insert_item(graph, rec, unknown_relations=unknown_relations)
    node = require_item(graph, rec.id)
    log.info("KG: added item %d with %d links", rec.id, graph.out_degree(node))
    return node


def _pattern_weight(r_h: str, r_t: str, weights: Mapping[str, float]) -> float:
    if not is_allowed(r_h, r_t):
        return 0.0
    if r_h == r_t:
        return weights.get(r_h, 0.0)
    return CROSS_ROLE_DISCOUNT * math.sqrt(weights.get(r_h, 0.0) * weights.get(r_t, 0.0))


def neighbours(
    graph: nx.MultiDiGraph, item_id: int, *, weights: Mapping[str, float] = RELATION_WEIGHTS
) -> list[tuple[int, float]]:
    """Items sharing an entity with ``item_id``, with weights, strongest first (ties by id).

    A neighbour's weight sums, over the entities it shares with the item, the best allowed
    pattern weight through that entity (``weights[r]`` for the same relation, a discounted
    geometric mean for a cross-role person) divided by ``ln(degree)``, the degree being the number
    of items linked to the entity (at least 2, the item and its neighbour). A relation missing
    from ``weights`` counts 0.

    Raises
    ------
    UnknownItemError
        If ``item_id`` is not in the graph.
    ValueError
        If a weight is negative.
    """
    bad = {r: w for r, w in weights.items() if w < 0}
    if bad:
        raise ValueError(f"relation weights must be >= 0, got {bad}")
    node = require_item(graph, item_id)
    totals: dict[str, float] = {}
    for entity, rels_t in graph.succ[node].items():
        degree = entity_degree(graph, entity)
        if degree < 2:
            continue
        for other, rels_h in graph.pred[entity].items():
            if other == node:
                continue
            w = max(_pattern_weight(r_h, r_t, weights) for r_h in rels_h for r_t in rels_t)
            if w > 0:
                totals[other] = totals.get(other, 0.0) + w / math.log(degree)
    out = [(graph.nodes[n]["item_id"], w) for n, w in totals.items()]
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


def neighbour_prior(
    graph: nx.MultiDiGraph,
    item_id: int,
    item_vectors: np.ndarray,
    row_of: Mapping[int, int],
    *,
    weights: Mapping[str, float] = RELATION_WEIGHTS,
    max_neighbours: int | None = DEFAULT_MAX_NEIGHBOURS,
) -> np.ndarray:
    """Collaborative prior of an item: the weighted mean of its KG neighbours' vectors.

    Parameters
    ----------
    graph
        The knowledge graph (the item must be in it, e.g. after :func:`add_item`).
    item_id
        The (cold) item.
    item_vectors
        ``(N, D)`` vectors of known items.
    row_of
        Item id -> row of ``item_vectors``; neighbours without a row are left out.
    weights
        Relation informativeness (see :func:`neighbours`).
    max_neighbours
        Keep only the strongest neighbours (``None``: all). Without a cap, an entity linked to
        many items (a genre, "American films") would pull the mean towards its own average, as its
        total weight grows like ``degree / ln(degree)``.

    Returns
    -------
    np.ndarray
        ``(D,)`` prior vector, dtype of ``item_vectors``.

    Raises
    ------
    UnknownItemError
        If ``item_id`` is not in the graph.
    NoNeighboursError
        If no neighbour has a vector (the caller then uses the text vector alone).
    ValueError
        If ``item_vectors`` is not 2-D, a row is out of range, or ``max_neighbours < 1``.
    """
    if item_vectors.ndim != 2:
        raise ValueError(f"item_vectors must be (N, D), got shape {item_vectors.shape}")
    if max_neighbours is not None and max_neighbours < 1:
        raise ValueError(f"max_neighbours must be >= 1 or None, got {max_neighbours}")
    found = [(i, w) for i, w in neighbours(graph, item_id, weights=weights) if i in row_of]
    if max_neighbours is not None:
        found = found[:max_neighbours]
    if not found:
        raise NoNeighboursError(item_id)
    rows = np.array([row_of[i] for i, _ in found])
    out_of_range = [(i, row_of[i]) for i, _ in found if not 0 <= row_of[i] < item_vectors.shape[0]]
    if out_of_range:
        raise ValueError(f"rows out of range for {item_vectors.shape[0]} vectors: {out_of_range[:5]}")
    w = np.array([wt for _, wt in found])  # (M,)
    prior = (w[:, None] * item_vectors[rows]).sum(axis=0) / w.sum()  # (D,)
    return prior.astype(item_vectors.dtype, copy=False)
