"""Service results -> response schemas (kept out of the routers so they stay short)."""

from __future__ import annotations

import kg
from kg.schema import display_title
from server.api import schemas
from server.api.service import Service
from shared.data import Item


def explanation(e: kg.Explanation) -> schemas.ExplanationOut:
    return schemas.ExplanationOut(item_id=e.item_id, sentence=e.sentence, paths=[path(p) for p in e.paths])


def path(p: kg.Path) -> schemas.PathOut:
    return schemas.PathOut(
        triples=[
            schemas.TripleOut(
                head=t.head, relation=t.relation, tail=t.tail, head_label=t.head_label, tail_label=t.tail_label
            )
            for t in p.triples
        ],
        history_item=p.history_item,
        entity=p.entity,
        entity_label=p.entity_label,
        entity_type=p.entity_type,
        score=p.score,
    )


def item_summary(it: Item) -> schemas.ItemSummary:
    return schemas.ItemSummary(id=it.id, title=it.title, year=it.year, genres=it.genres)


def item_out(service: Service, it: Item) -> schemas.ItemOut:
    return schemas.ItemOut(
        id=it.id,
        title=it.title,
        display_title=display_title(it.title),
        year=it.year,
        genres=it.genres,
        abstract=it.abstract,
        entities=it.entities,
        cold=service.is_cold(it.id),
        recommendable=service.recommendable(it.id),
    )


def explanation_dict(e: kg.Explanation) -> dict[str, object]:
    """:func:`explanation` as plain data (the hot path of ``/v1/recommend``; same shape)."""
    return {
        "item_id": e.item_id,
        "sentence": e.sentence,
        "paths": [
            {
                "triples": [
                    {
                        "head": t.head,
                        "relation": t.relation,
                        "tail": t.tail,
                        "head_label": t.head_label,
                        "tail_label": t.tail_label,
                    }
                    for t in p.triples
                ],
                "history_item": p.history_item,
                "entity": p.entity,
                "entity_label": p.entity_label,
                "entity_type": p.entity_type,
                "score": p.score,
            }
            for p in e.paths
        ],
    }
