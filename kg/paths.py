"""Explanation paths from a user's history to a recommended item, ranked, with a sentence.

A path is ``history item -r1-> entity <-r2- recommended item`` (3 hops counting the implicit
``user -watched-> history item`` edge; see :mod:`kg.schema`), given as two ``(head, relation,
tail)`` triples that are both edges of the graph. Nothing is invented: an item with no path gets an
explicit empty result.

Search is a lookup, not a traversal: the history's entities are indexed once per query
(entity -> linking history items), then each recommended item's out-neighbours are looked up in
that index, so explaining a top-10 list costs ``O(sum of out-degrees)`` dictionary lookups.

Paths are ranked first by their kind (:data:`kg.schema.EXPLANATION_KINDS`), most telling first:
a person, a company, a specific category, then coarse links (genres, decades, and any entity too
broad to say much, see :func:`path_kind`). So "also directed by John Lasseter" comes before
"another Comedy" whenever both exist, however recent or similar the genre's linking item is; a genre
or decade is cited only when nothing more specific links the item. Within a kind, the score
multiplies

* the pattern's relation informativeness (:func:`kg.schema.pattern_weight`);
* the shared entity's recognisability: its specificity ``log(N / d) / log(N / 2)`` (an entity
  linked to 2 of N items scores 1, one linked to all scores 0, so "1990s English-language films",
  linked to 1,027 of 1,682 films, scores 0.07), scaled by ``(1 - p) + p * log d / log d_max``, its
  popularity within its type (a star of 7 films is better known than one of 2);
* the linking history item's recency (its LIR value, :mod:`kg.recency`);
* optionally the model's similarity ``sim(history_item, recommended_item)``, clipped to [0, 1].

An entity is *coarse* when its specificity is below ``PathScoring.coarse_specificity`` (default
1/2: it links more than ``sqrt(2 N)`` of the N items, 58 of ml-100k's 1,682 films, e.g. "American
independent films" (172) or the distributor Paramount Pictures (106)), or when it is a category
named after a year, a decade or a filming location (:data:`kg.schema.COARSE_CATEGORY_NAME`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import product

import networkx as nx

from kg.graph import GraphStats, entity_degree, graph_stats, item_label, require_item
from kg.recency import DEFAULT_BETA, lir_by_item
from kg.schema import (
    CATEGORY,
    CINEMATOGRAPHY,
    COARSE_CATEGORY_NAME,
    COMPOSER,
    DIRECTOR,
    DISTRIBUTOR,
    EDITOR,
    EXPLANATION_KINDS,
    HAS_GENRE,
    KIND_COARSE,
    PRODUCER,
    RELATION_KINDS,
    RELEASED_IN_DECADE,
    STARRING,
    SUBJECT,
    WRITER,
    is_allowed,
    pattern_weight,
)

Similarity = Callable[[int, int], float]

DEFAULT_MAX_PATHS = 3
_HistoryIndex = dict[str, list[tuple[str, Iterable[str]]]]


@dataclass(frozen=True)
class PathScoring:
    """Weights of the path ranking terms (each in [0, 1]).

    ``recency_weight``: how much an old linking item is discounted (0: recency ignored).
    ``similarity_weight``: the same for the model similarity, when one is given.
    ``popularity_share``: how much within-type popularity modulates an entity's specificity.
    ``coarse_specificity``: an entity less specific than this is a coarse link (ranked last, with
    genres and decades); 0 demotes none.
    ``rank_by_kind``: order paths by kind, then score (default); ``False`` orders by score alone
    (the ranking before kinds existed, kept for comparison).
    """

    recency_weight: float = 0.5
    similarity_weight: float = 0.5
    popularity_share: float = 0.5
    lir_beta: float = DEFAULT_BETA
    coarse_specificity: float = 0.5
    rank_by_kind: bool = True

    def __post_init__(self) -> None:
        for name in ("recency_weight", "similarity_weight", "popularity_share", "coarse_specificity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PathScoring.{name} must be in [0, 1], got {value}")
        if not 0.0 < self.lir_beta <= 1.0:
            raise ValueError(f"PathScoring.lir_beta must be in (0, 1], got {self.lir_beta}")


@dataclass(frozen=True)
class Triple:
    """One cited edge: node ids with their readable labels. ``(head, relation, tail)`` is an edge."""

    head: str
    relation: str
    tail: str
    head_label: str
    tail_label: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.head, self.relation, self.tail)


@dataclass(frozen=True)
class Path:
    """A scored explanation path ``history item -history_relation-> entity <-target_relation- item``.

    ``kind`` is one of :data:`kg.schema.EXPLANATION_KINDS` (see :func:`path_kind`).
    """

    triples: tuple[Triple, ...]
    history_item: int
    target_item: int
    entity: str
    entity_label: str
    entity_type: str
    history_relation: str
    target_relation: str
    score: float
    kind: str

    @property
    def path_type(self) -> str:
        """The relation arriving at the recommended item (a path's type in Balloccu et al.)."""
        return self.target_relation


@dataclass(frozen=True)
class Explanation:
    """The ranked paths explaining one recommended item (maybe none) and a sentence."""

    item_id: int
    paths: tuple[Path, ...]
    sentence: str

    @property
    def found(self) -> bool:
        return bool(self.paths)

    @property
    def best(self) -> Path | None:
        return self.paths[0] if self.paths else None


# --------------------------------------------------------------------------------------- sentences

_SAME_ROLE = {
    DIRECTOR: "also directed by {e}",
    WRITER: "also written by {e}",
    STARRING: "which also stars {e}",
    PRODUCER: "also produced by {e}",
    COMPOSER: "also scored by composer {e}",
    CINEMATOGRAPHY: "also shot by cinematographer {e}",
    EDITOR: "also edited by {e}",
    DISTRIBUTOR: "also distributed by {e}",
    SUBJECT: "also in the category '{e}'",
    HAS_GENRE: "another {e}",
    RELEASED_IN_DECADE: "another film from the {e}",
}
_ROLE_BY = {
    DIRECTOR: "directed by",
    WRITER: "written by",
    STARRING: "starring",
    PRODUCER: "produced by",
    COMPOSER: "scored by",
    CINEMATOGRAPHY: "shot by",
    EDITOR: "edited by",
}
_ROLE_DID = {
    DIRECTOR: "directed",
    WRITER: "wrote",
    STARRING: "stars in",
    PRODUCER: "produced",
    COMPOSER: "scored",
    CINEMATOGRAPHY: "shot",
    EDITOR: "edited",
}


def sentence(path: Path) -> str:
    """One sentence for a path: "Because you watched Toy Story (1995), also directed by John Lasseter."."""
    watched = path.triples[0].head_label
    e = path.entity_label
    if path.history_relation == path.target_relation:
        reason = _SAME_ROLE[path.target_relation].format(e=e)
    else:
        reason = f"{_ROLE_BY[path.history_relation]} {e}, who also {_ROLE_DID[path.target_relation]} this one"
    return f"Because you watched {watched}, {reason}."


def no_path_sentence(target_label: str) -> str:
    """The sentence of an item no path reaches (nothing is invented)."""
    return f"No link was found between your history and {target_label}."


# ------------------------------------------------------------------------------------------ search


def specificity(degree: int, n_items: int) -> float:
    """IDF-like specificity of an entity linked to ``degree`` of ``n_items`` items: 1 at 2 items, 0 at all."""
    n = max(n_items, 3)
    return min(1.0, max(0.0, math.log(n / degree) / math.log(n / 2)))


def recognisability(degree: int, entity_type: str, stats: GraphStats, popularity_share: float) -> float:
    """Specificity times within-type popularity (the entity term of a path's score)."""
    d_max = stats.max_degree.get(entity_type, degree)
    popularity = math.log(degree) / math.log(d_max) if d_max > 1 else 1.0
    return specificity(degree, stats.n_items) * (1.0 - popularity_share + popularity_share * popularity)


def is_coarse_entity(entity_type: str, label: str, degree: int, stats: GraphStats, coarse_specificity: float) -> bool:
    """Whether an entity is too broad to explain much (see the module docstring); genres/decades aside."""
    if specificity(degree, stats.n_items) < coarse_specificity:
        return True
    return entity_type == CATEGORY and COARSE_CATEGORY_NAME.match(label) is not None


def path_kind(target_relation: str, coarse_entity: bool) -> str:
    """Kind of a path: its relation's kind (:data:`kg.schema.RELATION_KINDS`), coarse if the entity is."""
    return KIND_COARSE if coarse_entity else RELATION_KINDS[target_relation]


#: Rank of each kind in the ordering of paths (0 first).
KIND_RANK = {kind: i for i, kind in enumerate(EXPLANATION_KINDS)}


def _history_index(graph: nx.MultiDiGraph, nodes: Iterable[str]) -> _HistoryIndex:
    """Entity -> [(history node, its relations to the entity)], history order kept."""
    index: _HistoryIndex = {}
    for h in nodes:
        for entity, rels in graph.succ[h].items():
            index.setdefault(entity, []).append((h, rels))
    return index


def _candidate_paths(
    graph: nx.MultiDiGraph,
    target: str,
    index: _HistoryIndex,
    factors: dict[str, float],
    scoring: PathScoring,
    stats: GraphStats,
) -> Iterable[Path]:
    t_id = graph.nodes[target]["item_id"]
    t_label = item_label(graph, target)
    for entity, rels_t in graph.succ[target].items():
        links = index.get(entity)
        if not links:
            continue
        e_data = graph.nodes[entity]
        degree = entity_degree(graph, entity)
        recog = recognisability(degree, e_data["type"], stats, scoring.popularity_share)
        coarse = is_coarse_entity(e_data["type"], e_data["label"], degree, stats, scoring.coarse_specificity)
        for h, rels_h in links:
            if h == target:
                continue
            h_label = item_label(graph, h)
            for r_h, r_t in product(rels_h, rels_t):
                if not is_allowed(r_h, r_t):
                    continue
                triples = (
                    Triple(h, r_h, entity, h_label, e_data["label"]),
                    Triple(target, r_t, entity, t_label, e_data["label"]),
                )
                score = pattern_weight(r_h, r_t) * recog * factors[h]
                h_id = graph.nodes[h]["item_id"]
                kind = path_kind(r_t, coarse)
                yield Path(triples, h_id, t_id, entity, e_data["label"], e_data["type"], r_h, r_t, score, kind)


def kind_rank(kind: str, by_kind: bool) -> int:
    """Rank of a path's kind in the ordering (0 first; always 0 when paths are ordered by score alone)."""
    return KIND_RANK[kind] if by_kind else 0


def _rank(
    paths: Iterable[Path], max_paths: int | None, *, per_entity: bool = True, by_kind: bool = True
) -> tuple[Path, ...]:
    """Best kind first, then best score (ties: entity id, then history item); one path per entity."""
    ordered = sorted(
        paths, key=lambda p: (kind_rank(p.kind, by_kind), -p.score, p.entity, p.history_item, p.history_relation)
    )
    seen: set[str] = set()
    out: list[Path] = []
    for p in ordered:
        if per_entity and p.entity in seen:
            continue
        seen.add(p.entity)
        out.append(p)
        if max_paths is not None and len(out) == max_paths:
            break
    return tuple(out)


def _with_similarity(paths: Iterable[Path], sim: Similarity, weight: float) -> Iterable[Path]:
    cache: dict[tuple[int, int], float] = {}
    for p in paths:
        key = (p.history_item, p.target_item)
        if key not in cache:
            s = float(sim(*key))
            s = min(1.0, max(0.0, s)) if math.isfinite(s) else 0.0
            cache[key] = 1.0 - weight + weight * s
        yield replace(p, score=p.score * cache[key])


def explain_items(
    graph: nx.MultiDiGraph,
    history: Sequence[int],
    item_ids: Sequence[int],
    *,
    timestamps: Sequence[float] | None = None,
    sim: Similarity | None = None,
    max_paths: int | None = DEFAULT_MAX_PATHS,
    scoring: PathScoring | None = None,
    per_entity: bool = True,
) -> list[Explanation]:
    """Explain each recommended item by its best paths from the history.

    Parameters
    ----------
    graph
        The knowledge graph.
    history
        The user's items, newest last (or in any order when ``timestamps`` is given).
    item_ids
        The recommended items, e.g. a top-10 list.
    timestamps
        Optional interaction times, one per history item, used for recency.
    sim
        Optional model similarity ``sim(history_item_id, item_id)``, ideally in [0, 1].
    max_paths
        Paths kept per item; ``None`` keeps all.
    scoring
        Ranking weights (:class:`PathScoring`).
    per_entity
        Keep only the best path through each shared entity (so three paths cite three entities).

    Returns
    -------
    list[Explanation]
        One per item, in order; an item without a path has no paths and a no-link sentence.

    Raises
    ------
    UnknownItemError
        If a history or recommended item is not in the graph (the id is named).
    ValueError
        If ``timestamps`` does not match ``history`` or ``max_paths < 1``.
    """
    if max_paths is not None and max_paths < 1:
        raise ValueError(f"max_paths must be >= 1 or None, got {max_paths}")
    scoring = scoring or PathScoring()
    targets = [require_item(graph, i) for i in item_ids]
    lir = lir_by_item(history, timestamps, scoring.lir_beta)
    hist_nodes = [require_item(graph, i) for i in lir]
    factors = {
        node: 1.0 - scoring.recency_weight + scoring.recency_weight * value
        for node, value in zip(hist_nodes, lir.values(), strict=True)
    }
    index = _history_index(graph, hist_nodes)
    stats = graph_stats(graph)
    out = []
    for target in targets:
        found: Iterable[Path] = _candidate_paths(graph, target, index, factors, scoring, stats)
        if sim is not None:
            found = _with_similarity(found, sim, scoring.similarity_weight)
        paths = _rank(found, max_paths, per_entity=per_entity, by_kind=scoring.rank_by_kind)
        text = sentence(paths[0]) if paths else no_path_sentence(item_label(graph, target))
        out.append(Explanation(graph.nodes[target]["item_id"], paths, text))
    return out


def explain(
    graph: nx.MultiDiGraph,
    history: Sequence[int],
    item_id: int,
    *,
    timestamps: Sequence[float] | None = None,
    sim: Similarity | None = None,
    max_paths: int | None = DEFAULT_MAX_PATHS,
    scoring: PathScoring | None = None,
) -> Explanation:
    """Explain one recommended item; see :func:`explain_items` (same arguments and errors)."""
    return explain_items(
        graph, history, [item_id], timestamps=timestamps, sim=sim, max_paths=max_paths, scoring=scoring
    )[0]


def find_paths(
    graph: nx.MultiDiGraph,
    history: Sequence[int],
    item_id: int,
    *,
    timestamps: Sequence[float] | None = None,
    sim: Similarity | None = None,
    scoring: PathScoring | None = None,
) -> list[Path]:
    """Every allowed path from the history to ``item_id``, best first; see :func:`explain_items`."""
    found = explain_items(
        graph,
        history,
        [item_id],
        timestamps=timestamps,
        sim=sim,
        max_paths=None,
        scoring=scoring,
        per_entity=False,
    )
    return list(found[0].paths)
