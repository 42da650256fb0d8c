"""Dependencies shared by the routers: settings, the loaded service, the write token."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.service import Service
from server.api.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="the token in FEDXREC_TOKEN")


async def get_service(request: Request) -> Service:
    """The service loaded by the lifespan, synced with items other workers registered."""
    service: Service = request.app.state.service
    service.sync()
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_token(
    settings: SettingsDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Refuse a write without the configured bearer token (401)."""
    expected = settings.token.get_secret_value() if settings.token is not None else None
    if not expected:
        reason = "writes are disabled: no token is configured (FEDXREC_TOKEN)"
    elif creds is None:
        reason = "missing bearer token (Authorization: Bearer <token>)"
    elif not secrets.compare_digest(creds.credentials.encode(), expected.encode()):
        reason = "invalid bearer token"
    else:
        return
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": "Bearer"})
