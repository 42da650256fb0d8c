"""Request ids and timings: the only things the API logs about a request (pure ASGI, cheap)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("server.api.requests")

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestLog:
    """Adds ``X-Request-ID`` (the client's, if well-formed, else a new one) and logs one timing line.

    The line holds the id, method, route template (``/v1/items/{item_id}``, never the query or body),
    status and milliseconds.
    """

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        for k, v in scope["headers"]:
            if k == b"x-request-id" and _SAFE_ID.match(v):
                rid = v
                break
        rid = rid or uuid.uuid4().hex[:16].encode()
        status = 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                route = scope.get("route")
                log.info(
                    "request_id=%s method=%s route=%s status=%d ms=%.2f",
                    rid.decode(),
                    scope["method"],
                    getattr(route, "path", "-"),
                    status,
                    (time.perf_counter() - t0) * 1000,
                )
