"""Explanation-quality metrics and an explanation-aware re-ranking.

LIR, SEP and ETD follow Balloccu, Boratto, Fenu and Marras, "Post Processing Recommender Systems
with Knowledge Graphs for Recency, Popularity, and Diversity of Explanations", SIGIR 2022, and the
authors' code (github.com/giacoballoccu/explanation-quality-recsys: ``metrics.py``,
``path_data_loader.py``, ``myutils.py``):

* LIR (linking interaction recency): the EWMA-of-positions value of the linking history item
  (:mod:`kg.recency`), averaged over the explained items of a list (0 if none is explained).
* SEP (shared entity popularity): per entity type, entities are sorted by degree (number of linked
  items) and the same normalised EWMA runs over their positions; a path's SEP is the value of its
  shared entity (the node before the recommended item), averaged over the explained items. Entities
  of equal degree share the value at their group's first position (the authors' code breaks ties
  by input order).
* ETD (explanation type diversity): distinct path types in the top-k over ``min(k, number of
  path types)``, counting the types the graph has edges of; a path's type is the relation arriving at the recommended item (``get_path_type``
  in the authors' code; their code divides by the number of types only).

Each explained item counts with its best (first) path, as ``uid_pid_explanation`` holds one path per
item there. Fidelity, faithfulness and counterfactual necessity (``pn_score``/``pn_rank``) follow
the definitions in DESIGN.md ("Explanations").

Fidelity@k counts any path, and every film has a genre and a decade, so it mostly says that. Two
figures say how telling the explanations are (kinds: :data:`kg.schema.EXPLANATION_KINDS`, see
:func:`kg.paths.path_kind`):

* ``fidelity_specific``: share of the top-k items with at least one path that is not coarse (through
  a person, a company or a specific category, not a genre, a decade or a broad category);
* ``entity_share``: share of the top-k items whose first path goes through a person or a company
  (one that is not coarse, e.g. not a distributor of a large share of the catalogue).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import networkx as nx
import numpy as np

from kg.graph import graph_stats
from kg.paths import Explanation, Path
from kg.recency import DEFAULT_BETA, lir_by_item, lir_weights
from kg.schema import ENTITY_KINDS, EXPLANATION_KINDS, ITEM, KIND_COARSE, PATH_TYPES

Scorer = Callable[[list[int], list[int]], np.ndarray]

DEFAULT_K = 10


def _explained(explanations: Sequence[Explanation]) -> list[Explanation]:
    return [e for e in explanations if e.found]


# ------------------------------------------------------------------------------- LIR / SEP / ETD


def lir(
    explanations: Sequence[Explanation],
    history: Sequence[int],
    timestamps: Sequence[float] | None = None,
    *,
    beta: float = DEFAULT_BETA,
) -> float:
    """Mean linking-interaction recency of the explained items (0 when none is explained).

    Raises
    ------
    ValueError
        If a linking item is not in ``history`` (the explanations came from another history).
    """
    values = lir_by_item(history, timestamps, beta)
    out = []
    for e in _explained(explanations):
        linking = e.paths[0].history_item
        if linking not in values:
            raise ValueError(f"item {e.item_id}: linking item {linking} is not in the history")
        out.append(values[linking])
    return float(np.mean(out)) if out else 0.0


def sep_table(graph: nx.MultiDiGraph, *, beta: float = DEFAULT_BETA) -> dict[str, float]:
    """SEP value of every non-item node: normalised EWMA of its degree rank within its type."""
    by_type: dict[str, list[tuple[int, str]]] = {}
    for node, d in graph.nodes(data=True):
        if d["type"] != ITEM:
            by_type.setdefault(d["type"], []).append((len(graph.pred[node]), node))
    table: dict[str, float] = {}
    for entries in by_type.values():
        entries.sort()
        values = lir_weights(len(entries), beta)
        first_of_degree: dict[int, float] = {}
        for (degree, node), value in zip(entries, values.tolist(), strict=True):
            table[node] = first_of_degree.setdefault(degree, value)
    return table


def sep(explanations: Sequence[Explanation], table: Mapping[str, float]) -> float:
    """Mean shared-entity popularity of the explained items (0 when none is explained).

    Raises
    ------
    ValueError
        If a shared entity is not in ``table`` (rebuild it with :func:`sep_table` after adding items).
    """
    out = []
    for e in _explained(explanations):
        entity = e.paths[0].entity
        if entity not in table:
            raise ValueError(f"entity {entity!r} is not in the SEP table; rebuild it after adding items")
        out.append(table[entity])
    return float(np.mean(out)) if out else 0.0


def etd(explanations: Sequence[Explanation], *, k: int = DEFAULT_K, n_path_types: int = len(PATH_TYPES)) -> float:
    """Distinct path types among the top-k explanations over ``min(k, n_path_types)``.

    :func:`explanation_metrics` passes the number of relations the graph has edges of (the path
    types it can show), so a schema relation a catalogue lacks does not lower its ETD.
    """
    if k < 1 or n_path_types < 1:
        raise ValueError(f"k and n_path_types must be >= 1, got {k}, {n_path_types}")
    types = {e.paths[0].path_type for e in _explained(explanations[:k])}
    return len(types) / min(k, n_path_types)


# ------------------------------------------------------------------ fidelity and faithfulness


def fidelity(explanations: Sequence[Explanation], *, k: int = DEFAULT_K) -> float:
    """Share of the top-k items with at least one path (0 for an empty list)."""
    top = explanations[:k]
    return sum(e.found for e in top) / len(top) if top else 0.0


def fidelity_specific(explanations: Sequence[Explanation], *, k: int = DEFAULT_K) -> float:
    """Share of the top-k items with at least one path that is not coarse (0 for an empty list)."""
    top = explanations[:k]
    return sum(any(p.kind != KIND_COARSE for p in e.paths) for e in top) / len(top) if top else 0.0


def entity_share(explanations: Sequence[Explanation], *, k: int = DEFAULT_K) -> float:
    """Share of the top-k items whose first path goes through a person or a company (0 for an empty list).

    Unexplained items count in the denominator, as in :func:`fidelity`.
    """
    top = explanations[:k]
    return sum(e.found and e.paths[0].kind in ENTITY_KINDS for e in top) / len(top) if top else 0.0


def first_path_kinds(explanations: Sequence[Explanation], *, k: int = DEFAULT_K) -> dict[str, float]:
    """Share of the top-k items by the kind of their first path, and ``"none"`` for the unexplained.

    The shares sum to 1 (all 0 for an empty list).
    """
    top = explanations[:k]
    counts = dict.fromkeys([*EXPLANATION_KINDS, "none"], 0)
    for e in top:
        counts[e.paths[0].kind if e.found else "none"] += 1
    return {kind: c / len(top) if top else 0.0 for kind, c in counts.items()}


def faithfulness(graph: nx.MultiDiGraph, explanations: Sequence[Explanation]) -> float:
    """Share of cited triples (every path, every triple) that are edges of ``graph``.

    1.0 when nothing is cited: no cited triple is false.
    """
    cited = [t for e in explanations for p in e.paths for t in p.triples]
    if not cited:
        return 1.0
    return sum(graph.has_edge(t.head, t.tail, key=t.relation) for t in cited) / len(cited)


# ------------------------------------------------------------------ counterfactual necessity


def _without(history: Sequence[int], item: int) -> list[int]:
    return [i for i in history if i != item]


def pn_score(explanations: Sequence[Explanation], history: Sequence[int], score: Scorer) -> float:
    """Share of explained items whose score drops once their linking history item is removed.

    ``score(history, item_ids)`` returns one score per item (shape ``(len(item_ids),)``). Returns 0
    when no item is explained.
    """
    explained = _explained(explanations)
    if not explained:
        return 0.0
    items = [e.item_id for e in explained]
    base = np.asarray(score(list(history), items), dtype=float)
    if base.shape != (len(items),):
        raise ValueError(f"score returned shape {base.shape}, expected ({len(items)},)")
    lowered = 0
    for e, b in zip(explained, base.tolist(), strict=True):
        after = np.asarray(score(_without(history, e.paths[0].history_item), [e.item_id]), dtype=float)
        lowered += bool(after.reshape(-1)[0] < b)
    return lowered / len(explained)


def _top_k(candidates: Sequence[int], scores: np.ndarray, k: int) -> set[int]:
    order = np.argsort(-scores, kind="stable")[:k]
    return {candidates[i] for i in order.tolist()}


def pn_rank(
    explanations: Sequence[Explanation],
    history: Sequence[int],
    score: Scorer,
    candidates: Sequence[int],
    *,
    k: int = DEFAULT_K,
) -> float:
    """Share of explained top-k items that leave the top-k once their linking item is removed.

    The top-k is taken over ``candidates`` scored by ``score(history, candidates)`` (ties keep the
    candidates' order). Returns 0 when no top-k item is explained.
    """
    cands = list(candidates)
    base = np.asarray(score(list(history), cands), dtype=float)
    if base.shape != (len(cands),):
        raise ValueError(f"score returned shape {base.shape}, expected ({len(cands)},)")
    top = _top_k(cands, base, k)
    explained = [e for e in _explained(explanations) if e.item_id in top]
    if not explained:
        return 0.0
    cache: dict[int, set[int]] = {}
    dropped = 0
    for e in explained:
        linking = e.paths[0].history_item
        if linking not in cache:
            reduced = _without(history, linking)
            cache[linking] = _top_k(cands, np.asarray(score(reduced, cands), dtype=float), k)
        dropped += e.item_id not in cache[linking]
    return dropped / len(explained)


# ----------------------------------------------------------------------------------- re-ranking


def _static_quality(
    best: Path | None, recency: Mapping[int, float], table: Mapping[str, float], mix: np.ndarray
) -> float:
    """LIR, SEP and entity terms of an item's quality (mix: lir, sep, etd, entity weights)."""
    if best is None:
        return 0.0
    entity = 1.0 if best.kind in ENTITY_KINDS else 0.0
    return float(mix[0] * recency.get(best.history_item, 0.0) + mix[1] * table.get(best.entity, 0.0) + mix[3] * entity)


def _min_max(s: np.ndarray) -> np.ndarray:
    """Scores min-max normalised over the candidates (zeros when they are all equal)."""
    span = s.max() - s.min() if s.size else 0.0
    return (s - s.min()) / span if span > 0 else np.zeros_like(s)


def rerank(
    item_ids: Sequence[int],
    scores: np.ndarray,
    explanations: Mapping[int, Explanation],
    *,
    history: Sequence[int],
    sep_values: Mapping[str, float],
    weight: float = 0.0,
    timestamps: Sequence[float] | None = None,
    lir_weight: float = 1.0,
    sep_weight: float = 1.0,
    etd_weight: float = 1.0,
    entity_weight: float = 0.0,
    beta: float = DEFAULT_BETA,
) -> list[int]:
    """Reorder candidates by ``(1 - weight) * score + weight * explanation quality``, greedily.

    In the spirit of the paper's weighted optimisation: scores are min-max normalised over the
    candidates; an item's quality mixes the LIR and SEP of its best path and, for ETD, a bonus when
    its path type is not yet in the list built so far, and 1 when its best path goes through a
    person or a company (weights ``lir_weight``, ``sep_weight``, ``etd_weight``, ``entity_weight``,
    normalised to sum 1). Unexplained items have quality 0. ``weight = 0`` gives the model order
    (ties keep the input order).

    Raises
    ------
    ValueError
        If ``weight`` is outside [0, 1], the mix weights are negative or all 0, or shapes differ.
    """
    s = np.asarray(scores, dtype=float)
    if s.shape != (len(item_ids),):
        raise ValueError(f"scores has shape {s.shape}, expected ({len(item_ids)},)")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    mix = np.array([lir_weight, sep_weight, etd_weight, entity_weight], dtype=float)
    if (mix < 0).any() or mix.sum() == 0:
        raise ValueError(f"lir/sep/etd/entity weights must be >= 0 and not all 0, got {mix.tolist()}")
    mix = mix / mix.sum()
    norm = _min_max(s)  # (n,)
    recency = lir_by_item(history, timestamps, beta)
    bests = [e.best if (e := explanations.get(item)) is not None else None for item in item_ids]
    static = np.array([_static_quality(b, recency, sep_values, mix) for b in bests])  # (n,)
    chosen: list[int] = []
    seen_types: set[str] = set()
    left = list(range(len(item_ids)))
    while left:
        gain = [
            (1 - weight) * norm[i]
            + weight * (static[i] + (mix[2] if (b := bests[i]) and b.path_type not in seen_types else 0.0))
            for i in left
        ]
        pick = left.pop(int(np.argmax(gain)))  # argmax: the first of equal gains
        chosen.append(item_ids[pick])
        if (b := bests[pick]) is not None:
            seen_types.add(b.path_type)
    return chosen


def explanation_metrics(
    graph: nx.MultiDiGraph,
    explanations: Sequence[Explanation],
    history: Sequence[int],
    timestamps: Sequence[float] | None = None,
    *,
    sep_values: Mapping[str, float] | None = None,
    k: int = DEFAULT_K,
    beta: float = DEFAULT_BETA,
) -> dict[str, float]:
    """Fidelity@k (any path; not coarse), entity share, faithfulness, LIR, SEP and ETD of one user's top-k."""
    top = explanations[:k]
    table = sep_values if sep_values is not None else sep_table(graph, beta=beta)
    return {
        "fidelity": fidelity(top, k=k),
        "fidelity_specific": fidelity_specific(top, k=k),
        "entity_share": entity_share(top, k=k),
        "faithfulness": faithfulness(graph, top),
        "lir": lir(top, history, timestamps, beta=beta),
        "sep": sep(top, table),
        "etd": etd(top, k=k, n_path_types=max(1, len(graph_stats(graph).relations))),
    }


def toward_entities(
    item_ids: Sequence[int],
    scores: np.ndarray,
    explanations: Mapping[int, Explanation],
    *,
    history: Sequence[int],
    weight: float,
) -> list[int]:
    """:func:`rerank` with the entity term alone: toward items explained through a person or a company.

    The API's served order (``FEDXREC_ENTITY_RERANK``) and what ``bench kg`` measures of it.
    """
    return rerank(
        item_ids,
        scores,
        explanations,
        history=history,
        sep_values={},
        weight=weight,
        lir_weight=0.0,
        sep_weight=0.0,
        etd_weight=0.0,
        entity_weight=1.0,
    )


def can_enter_top_k(item_ids: Sequence[int], scores: np.ndarray, *, weight: float, k: int) -> list[int]:
    """The candidates that :func:`toward_entities` could place in its top ``k``, whatever their paths.

    The model's top ``k`` all gain at least ``(1 - weight) * norm_k``; an item whose best possible gain
    ``(1 - weight) * norm + weight`` is lower never enters (and stays outside the top ``k`` unexplained),
    so explaining only these gives the same top ``k`` as explaining every candidate.
    """
    norm = _min_max(np.asarray(scores, dtype=float))
    if len(item_ids) <= k:
        return list(item_ids)
    kth = float(np.sort(norm)[::-1][k - 1])
    return [i for i, n in zip(item_ids, norm.tolist(), strict=True) if (1 - weight) * n + weight >= (1 - weight) * kth]
