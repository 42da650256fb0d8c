"""Exception handlers: service errors become 404/409/422 bodies shaped like FastAPI's validation errors.

A 422 names the field (``loc``), as FastAPI's own do; request values are not echoed back for the
service's errors, and nothing here logs a request body.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.api.service import ConflictError, InputError, UnknownIdError

log = logging.getLogger(__name__)


def _body(exc: InputError) -> dict[str, object]:
    return {"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": exc.kind}]}


async def input_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    if isinstance(exc, UnknownIdError):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(exc, ConflictError):
        code = status.HTTP_409_CONFLICT
    else:
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    return JSONResponse(_body(exc), status_code=code)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the ``input``/``ctx`` echo (a history is not sent back or kept)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def install(app: FastAPI) -> None:
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(RequestValidationError, validation_error)
