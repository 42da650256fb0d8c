"""Request and response bodies of the API (pydantic v2).

Requests are strict (no ``"5"`` for ``5``) and reject unknown fields, so a typo is named in a 422
rather than silently ignored. Limits that depend on the settings (history length, ``k``, number of
candidates) are checked by the service and written into the OpenAPI document by ``main.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kg.schema import ENTITY_RELATIONS

ItemId = Annotated[int, Field(ge=0, le=2**31 - 1, description="catalogue item id")]
Timestamp = Annotated[float, Field(allow_inf_nan=False, description="interaction time (any monotone unit)")]
EntityRelation = Literal[ENTITY_RELATIONS]  # type: ignore[valid-type]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class HistoryRequest(_Request):
    history: list[ItemId] = Field(
        min_length=1,
        description="the user's items, newest last (never stored or logged)",
        examples=[[1, 7, 50, 100]],
    )
    timestamps: list[Timestamp] | None = Field(
        None, description="optional interaction times, one per history item; the history is then ordered by them"
    )


class RecommendRequest(HistoryRequest):
    k: int = Field(10, ge=1, description="number of items to return")
    exclude_seen: bool = Field(True, description="leave history items out of the ranking")
    explain: bool = Field(False, description="attach KG path explanations to each item")


class ExplainRequest(HistoryRequest):
    item_id: ItemId = Field(description="the item to explain", examples=[11])
    max_paths: int = Field(3, ge=1, le=20, description="paths to return (each through a different entity)")


class ScoreRequest(HistoryRequest):
    item_ids: list[ItemId] = Field(
        min_length=1, description="candidates to score, e.g. to re-rank a list", examples=[[2, 11, 30]]
    )


class NewItemRequest(_Request):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]
    year: int | None = Field(None, ge=1870, le=2100)
    genres: list[Text] = Field(default_factory=list, max_length=20, description="genres of this catalogue")
    text: Annotated[str, StringConstraints(max_length=5000)] = Field("", description="synopsis / abstract")
    entities: dict[
        EntityRelation, Annotated[list[Annotated[Text, StringConstraints(max_length=500)]], Field(max_length=100)]
    ] = Field(
        default_factory=dict,
        description="KG links by relation: DBpedia URIs or plain names",
        examples=[{"director": ["http://dbpedia.org/resource/John_Lasseter"]}],
    )


# ------------------------------------------------------------------------------------ responses


class TripleOut(BaseModel):
    head: str
    relation: str
    tail: str
    head_label: str
    tail_label: str


class PathOut(BaseModel):
    triples: list[TripleOut] = Field(description="edges of the KG, (head, relation, tail)")
    history_item: int = Field(description="the history item the path starts from")
    entity: str
    entity_label: str
    entity_type: str
    score: float


class ExplanationOut(BaseModel):
    item_id: int
    sentence: str
    paths: list[PathOut] = Field(description="best first; empty when no path links the history to the item")


class ItemSummary(BaseModel):
    id: int
    title: str
    year: int | None
    genres: list[str]


class ScoredItem(ItemSummary):
    score: float
    explanation: ExplanationOut | None = None


class RecommendResponse(BaseModel):
    items: list[ScoredItem]


class ExplainResponse(ExplanationOut):
    score: float = Field(description="the model's score of the item for this history")


class ItemScore(BaseModel):
    id: int
    score: float


class ScoreResponse(BaseModel):
    scores: list[ItemScore] = Field(description="one per requested id, in request order")


class ItemOut(ItemSummary):
    display_title: str
    abstract: str
    entities: dict[str, list[str]]
    cold: bool = Field(description="registered through POST /v1/items")
    recommendable: bool = Field(description="has a vector in the served model")


class ItemPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ItemSummary]


class NewItemResponse(BaseModel):
    id: int
    neighbours: int = Field(description="KG neighbours that gave the item its collaborative prior")
    item: ItemOut


class ModelInfo(BaseModel):
    backbone: str
    top_layers: int
    adapter: str
    dim: int
    history_len: int
    user_mode: str


class CheckpointInfo(BaseModel):
    path: str
    id: str
    meta: dict[str, object]


class Health(BaseModel):
    status: Literal["ok"]
    worker_pid: int = Field(description="process id of the worker that answered")
    uptime_s: float
    model: ModelInfo
    checkpoint: CheckpointInfo
    items: int
    cold_items: int
    kg_nodes: int
    kg_edges: int


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorList(BaseModel):
    detail: list[ErrorItem]


class ErrorMessage(BaseModel):
    detail: str
