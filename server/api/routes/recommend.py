"""``POST /v1/recommend``, ``/v1/explain``, ``/v1/score``: the model over a history sent with the request."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic_core import to_json

from server.api import schemas
from server.api.deps import ServiceDep
from server.api.routes import convert

router = APIRouter(prefix="/v1", tags=["recommendations"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": schemas.ErrorMessage, "description": "the body could not be read (not UTF-8)"},
    404: {"model": schemas.ErrorList, "description": "an item id is unknown (the field is named)"},
    422: {"model": schemas.ErrorList, "description": "invalid request (the field is named)"},
}


@router.post("/recommend", response_model=schemas.RecommendResponse, responses=_ERRORS)
async def recommend(req: schemas.RecommendRequest, service: ServiceDep) -> Response:
    """Top-``k`` items for a history, with KG path explanations when ``explain`` is true."""
    ranked = service.recommend(
        req.history, timestamps=req.timestamps, k=req.k, exclude_seen=req.exclude_seen, explain=req.explain
    )
    # The hot path: plain data serialised once, not models built then re-validated; the shape is
    # RecommendResponse's (the OpenAPI document and the schemathesis run check it).
    items = [
        {
            "id": r.item.id,
            "title": r.item.title,
            "year": r.item.year,
            "genres": r.item.genres,
            "score": r.score,
            "explanation": r.explanation,
        }
        for r in ranked
    ]
    return Response(to_json({"items": items}), media_type="application/json")


@router.post("/explain", response_model=schemas.ExplainResponse, responses=_ERRORS)
async def explain(req: schemas.ExplainRequest, service: ServiceDep) -> schemas.ExplainResponse:
    """The best KG paths from the history to one item (empty, with a sentence saying so, if none)."""
    score, e = service.explain(req.history, req.item_id, timestamps=req.timestamps, max_paths=req.max_paths)
    out = convert.explanation(e)
    return schemas.ExplainResponse(score=score, **dict(out))


@router.post("/score", response_model=schemas.ScoreResponse, responses=_ERRORS)
async def score(req: schemas.ScoreRequest, service: ServiceDep) -> schemas.ScoreResponse:
    """The model's score of each candidate (in request order), e.g. to re-rank a list."""
    scores = service.score(req.history, req.item_ids, timestamps=req.timestamps)
    return schemas.ScoreResponse(
        scores=[schemas.ItemScore(id=i, score=s) for i, s in zip(req.item_ids, scores, strict=True)]
    )
