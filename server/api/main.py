"""The FastAPI application: routers, error handlers, request logging, and a lifespan that loads state.

``uvicorn server.api.main:app`` serves it (``fedxrec serve`` does so with the settings). The
lifespan loads the checkpoint, the catalogue with its item vectors, the KG and the registered
cold-start items once per worker process. Tests override :func:`server.api.deps.get_service`
(then nothing is loaded) or :func:`server.api.settings.get_settings`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from server.api import errors
from server.api.deps import get_service
from server.api.middleware import RequestLog
from server.api.routes import health, items, page, recommend
from server.api.service import Service
from server.api.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Recommendations from a privacy-preserving federated recommender, explained by paths
through a knowledge graph of the public catalogue. A user's history arrives with each request and
is never stored or logged; logs carry request ids and timings only."""


def _settings(app: FastAPI) -> Settings:
    return app.dependency_overrides.get(get_settings, get_settings)()  # type: ignore[no-any-return]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the heavy state once per process (skipped when a test overrides ``get_service``)."""
    if get_service not in app.dependency_overrides:
        app.state.service = Service.load(_settings(app))
        # The loaded state (graph, catalogue, modules) is ~500k long-lived objects: a full GC pass
        # over them stalls a worker for 0.5-1.5 s every few hundred requests. Freeze them out of
        # the collector; what requests allocate is still collected.
        gc.collect()
        gc.freeze()
    yield


def _with_limits(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the limits that come from the settings written into it."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        s = _settings(app)
        comps = schema["components"]["schemas"]
        for name in ("RecommendRequest", "ExplainRequest", "ScoreRequest"):
            comps[name]["properties"]["history"]["maxItems"] = s.max_history
        comps["RecommendRequest"]["properties"]["k"]["maximum"] = s.max_k
        comps["ScoreRequest"]["properties"]["item_ids"]["maxItems"] = s.max_score_items
        app.openapi_schema = schema
    return app.openapi_schema


def create_app() -> FastAPI:
    """A new application (state is loaded by its lifespan)."""
    app = FastAPI(title="fedxrec explanation API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(recommend.router)
    app.include_router(items.router)
    page.install(app)
    errors.install(app)
    app.add_middleware(RequestLog, enabled=get_settings().log_requests)
    app.openapi = lambda: _with_limits(app)  # type: ignore[method-assign]
    return app


app = create_app()
