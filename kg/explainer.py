"""Fast path explanations for serving: the ranking of :func:`kg.explain_items`, from precomputed tables.

``kg.explain_items`` builds every candidate path (about 700 for a 20-item history and a top-10 on
ml-100k, most through genres, decades and broad categories) before keeping three per item, which
costs ~4–5 ms a request. This adapter gives the same result (same paths, scores, order, sentence;
``tests/test_api_explain.py`` checks equality) in a fraction of that:

* per item, its ``(entity, relations)`` out-links as plain tuples (no networkx views per request);
* per entity, its recognisability and whether it is coarse (the kg terms, cached until the graph
  changes);
* per shared entity, a bound of its best path's ranking key (best kind, highest score), so entities
  that cannot enter the top ``max_paths`` are skipped; only the kept paths become :class:`kg.Path`
  objects.

It reuses kg's scoring pieces (pattern weights, recognisability, LIR, sentences) rather than
copying them; ``refresh()`` must be called after an item is added to the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import networkx as nx

from kg.graph import graph_stats, item_label, require_item
from kg.paths import (
    Explanation,
    Path,
    PathScoring,
    Similarity,
    Triple,
    is_coarse_entity,
    kind_rank,
    no_path_sentence,
    path_kind,
    recognisability,
    sentence,
)
from kg.recency import lir_by_item
from kg.schema import ITEM, RELATIONS, is_allowed, pattern_weight

# Allowed (history relation, target relation) -> pattern weight, and the best weight arriving
# through each target relation (an upper bound of a path's pattern term).
_PW = {(rh, rt): pattern_weight(rh, rt) for rh in RELATIONS for rt in RELATIONS if is_allowed(rh, rt)}
_BEST_PW = {rt: max((w for (_, t), w in _PW.items() if t == rt), default=0.0) for rt in RELATIONS}

_Links = tuple[tuple[str, tuple[str, ...]], ...]
# A target's entities, best bound first: (best kind rank, -bound of the score without recency or
# similarity, entity, recog, relations, whether the entity is coarse)
_Ranked = list[tuple[int, float, str, float, tuple[str, ...], bool]]
# History index: entity -> [(history node, history item id, recency factor, its relations to the entity)]
_Index = dict[str, list[tuple[str, int, float, tuple[str, ...]]]]
# A kept path: ((kind rank, -score, entity, history item id, history relation), history node, r_h, r_t)
_Key = tuple[int, float, str, int, str]
_Best = tuple[_Key, str, str, str]


class PathExplainer:
    """Explains items from a history over one graph (call :meth:`refresh` after the graph changes)."""

    def __init__(self, graph: nx.MultiDiGraph, scoring: PathScoring | None = None) -> None:
        self.graph = graph
        self.scoring = scoring or PathScoring()
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the per-item tables and entity scores (the graph changed; ~0.1 s on ml-100k).

        Adding an item changes every entity's specificity (it depends on the number of items), so
        the whole table is recomputed rather than patched.
        """
        g = self.graph
        self._stats = graph_stats(g)
        self._links: dict[str, _Links] = {
            n: tuple((e, tuple(rels)) for e, rels in g.succ[n].items())
            for n, d in g.nodes(data=True)
            if d["type"] == ITEM
        }
        self._item_id: dict[str, int] = {n: g.nodes[n]["item_id"] for n in self._links}
        self._recog: dict[str, tuple[float, bool]] = {}
        self._ranked: dict[str, _Ranked] = {}
        for n in self._links:  # eagerly, so the tables are built (and GC-frozen) before serving
            self._ranked_links(n)

    def _ranked_links(self, target: str) -> _Ranked:
        r = self._ranked.get(target)
        if r is None:
            r = []
            for entity, rels_t in self._links[target]:
                recog, coarse = self._entity_terms(entity)
                rank = min(kind_rank(path_kind(x, coarse), self.scoring.rank_by_kind) for x in rels_t)
                r.append((rank, -recog * max(_BEST_PW[x] for x in rels_t), entity, recog, rels_t, coarse))
            r.sort(key=lambda x: (x[0], x[1]))
            self._ranked[target] = r
        return r

    def _entity_terms(self, entity: str) -> tuple[float, bool]:
        """Recognisability of an entity and whether it is coarse (cached)."""
        r = self._recog.get(entity)
        if r is None:
            g, sc = self.graph, self.scoring
            degree, e = len(g.pred[entity]), g.nodes[entity]
            r = (
                recognisability(degree, e["type"], self._stats, sc.popularity_share),
                is_coarse_entity(e["type"], e["label"], degree, self._stats, sc.coarse_specificity),
            )
            self._recog[entity] = r
        return r

    def explain(
        self,
        history: Sequence[int],
        item_ids: Sequence[int],
        *,
        timestamps: Sequence[float] | None = None,
        sim: Similarity | None = None,
        max_paths: int = 3,
    ) -> list[Explanation]:
        """Same contract as :func:`kg.explain_items` with ``per_entity=True`` (and the same errors)."""
        targets, index = self._prepare(history, item_ids, timestamps, max_paths)
        return [self._explanation(t, self._best(t, index, sim, max_paths)) for t in targets]

    def explain_data(
        self,
        history: Sequence[int],
        item_ids: Sequence[int],
        *,
        timestamps: Sequence[float] | None = None,
        sim: Similarity | None = None,
        max_paths: int = 3,
    ) -> list[dict[str, Any]]:
        """:meth:`explain` as plain data shaped like ``schemas.ExplanationOut`` (the serving hot path).

        Builds no :class:`kg.Path` objects except the best one per item (for its sentence).
        """
        targets, index = self._prepare(history, item_ids, timestamps, max_paths)
        return [self._data(t, self._best(t, index, sim, max_paths)) for t in targets]

    def _prepare(
        self,
        history: Sequence[int],
        item_ids: Sequence[int],
        timestamps: Sequence[float] | None,
        max_paths: int,
    ) -> tuple[list[str], _Index]:
        if max_paths < 1:
            raise ValueError(f"max_paths must be >= 1, got {max_paths}")
        g, sc = self.graph, self.scoring
        targets = [require_item(g, i) for i in item_ids]
        lir = lir_by_item(history, timestamps, sc.lir_beta)
        index: _Index = {}
        for item, value in lir.items():
            h = require_item(g, item)
            f = 1.0 - sc.recency_weight + sc.recency_weight * value
            for entity, rels in self._links[h]:
                link = (h, item, f, rels)
                links = index.get(entity)
                if links is None:
                    index[entity] = [link]
                else:
                    links.append(link)
        return targets, index

    def _explanation(self, target: str, best: list[_Best]) -> Explanation:
        t_id = self._item_id[target]
        paths = tuple(self._path(target, t_id, *b) for b in best)
        text = sentence(paths[0]) if paths else no_path_sentence(item_label(self.graph, target))
        return Explanation(t_id, paths, text)

    def _data(self, target: str, best: list[_Best]) -> dict[str, Any]:
        g = self.graph
        t_id = self._item_id[target]
        t_label = item_label(g, target)
        text = sentence(self._path(target, t_id, *best[0])) if best else no_path_sentence(t_label)
        paths = []
        for key, h, r_h, r_t in best:
            entity = key[2]
            e = g.nodes[entity]
            label = e["label"]
            paths.append(
                {
                    "triples": [
                        {
                            "head": h,
                            "relation": r_h,
                            "tail": entity,
                            "head_label": item_label(g, h),
                            "tail_label": label,
                        },
                        {"head": target, "relation": r_t, "tail": entity, "head_label": t_label, "tail_label": label},
                    ],
                    "history_item": key[3],
                    "entity": entity,
                    "entity_label": label,
                    "entity_type": e["type"],
                    "score": -key[1],
                }
            )
        return {"item_id": t_id, "sentence": text, "paths": paths}

    def _best(
        self,
        target: str,
        index: _Index,
        sim: Similarity | None,
        max_paths: int,
    ) -> list[_Best]:
        """The best path through each of the top ``max_paths`` shared entities, best first."""
        sw, by_kind = self.scoring.similarity_weight, self.scoring.rank_by_kind
        t_id = self._item_id[target]
        sim_cache: dict[str, float] = {}
        best: list[_Best] = []
        kth: tuple[int, float] | None = None  # (kind rank, -score) of the max_paths-th best so far
        for rank, neg_bound, entity, recog, rels_t, coarse in self._ranked_links(target):
            if kth is not None and (rank, neg_bound) > kth:
                break  # entities come best bound first: none later can enter the top max_paths
            links = index.get(entity)
            if not links:
                continue
            kinds = {r_t: kind_rank(path_kind(r_t, coarse), by_kind) for r_t in rels_t}
            top = None
            for h, h_id, f_h, rels_h in links:
                if h == target:
                    continue
                for r_h in rels_h:
                    for r_t in rels_t:
                        pw = _PW.get((r_h, r_t))
                        if pw is None:
                            continue
                        score = pw * recog * f_h
                        if sim is not None:
                            f = sim_cache.get(h)
                            if f is None:
                                s = float(sim(h_id, t_id))
                                s = min(1.0, max(0.0, s)) if math.isfinite(s) else 0.0
                                f = sim_cache[h] = 1.0 - sw + sw * s
                            score = score * f
                        key = (kinds[r_t], -score, entity, h_id, r_h)
                        if top is None or key < top[0]:
                            top = (key, h, r_h, r_t)
            if top is not None:
                best.append(top)
                best.sort(key=lambda b: b[0])
                if len(best) >= max_paths:
                    kth = best[max_paths - 1][0][:2]
        return best[:max_paths]

    def _path(self, target: str, t_id: int, key: _Key, h: str, r_h: str, r_t: str) -> Path:
        g = self.graph
        entity = key[2]
        e = g.nodes[entity]
        triples = (
            Triple(h, r_h, entity, item_label(g, h), e["label"]),
            Triple(target, r_t, entity, item_label(g, target), e["label"]),
        )
        kind = path_kind(r_t, self._entity_terms(entity)[1])
        return Path(triples, key[3], t_id, entity, e["label"], e["type"], r_h, r_t, -key[1], kind)
