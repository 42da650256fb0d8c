"""``/v1/items``: look up and search the catalogue, register and delete cold-start items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from server.api import schemas
from server.api.deps import ServiceDep, require_token
from server.api.routes import convert
from server.api.service import NewItem

router = APIRouter(prefix="/v1/items", tags=["items"])

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    404: {"model": schemas.ErrorList, "description": "no item with this id"}
}


@router.get("", response_model=schemas.ItemPage)
async def search_items(
    service: ServiceDep,
    query: Annotated[str, Query(max_length=200, description="case-insensitive part of the title")] = "",
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.ItemPage:
    """Items whose title contains ``query``, in catalogue order, one page at a time."""
    total, items = service.search(query, offset=offset, limit=limit)
    return schemas.ItemPage(total=total, offset=offset, limit=limit, items=[convert.item_summary(it) for it in items])


@router.get("/{item_id}", response_model=schemas.ItemOut, responses=_NOT_FOUND)
async def get_item(service: ServiceDep, item_id: Annotated[int, Path(ge=0, le=2**31 - 1)]) -> schemas.ItemOut:
    """One catalogue item with its KG links."""
    return convert.item_out(service, service.item(item_id))


@router.post(
    "",
    response_model=schemas.NewItemResponse,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(require_token)],
    responses={
        400: {"model": schemas.ErrorMessage, "description": "the body could not be read (not UTF-8)"},
        401: {"model": schemas.ErrorMessage, "description": "missing or invalid bearer token"},
        422: {"model": schemas.ErrorList, "description": "invalid item (the field is named)"},
    },
)
async def register_item(req: schemas.NewItemRequest, service: ServiceDep) -> schemas.NewItemResponse:
    """Register a cold-start item: recommendable and explainable at once, kept across restarts."""
    new = NewItem(title=req.title, year=req.year, genres=req.genres, text=req.text, entities=dict(req.entities))
    service.check_new_item(new)
    vector = await run_in_threadpool(service.text_vector, new)  # the backbone runs: off the event loop
    item_id, neighbours = service.register(new, vector)
    return schemas.NewItemResponse(
        id=item_id, neighbours=neighbours, item=convert.item_out(service, service.item(item_id))
    )


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=[Depends(require_token)],
    responses={
        401: {"model": schemas.ErrorMessage, "description": "missing or invalid bearer token"},
        404: {"model": schemas.ErrorList, "description": "no item with this id"},
        409: {"model": schemas.ErrorList, "description": "a catalogue item (only registered items can be deleted)"},
    },
)
async def delete_item(service: ServiceDep, item_id: Annotated[int, Path(ge=0, le=2**31 - 1)]) -> Response:
    """Delete a registered cold-start item: gone from ranking, explanations and the persisted store."""
    service.delete(item_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
