"""The OpenAPI schema and its Swagger UI (`/openapi.json`, `/docs`), behind a login like
everything else: a bearer token, or HTTP Basic so a browser can ask for the user's password
(checked and throttled like `POST /api/login`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import ServicesDep, get_session
from api.errors import ApiError
from api.routes.auth import attempt_login, client_of
from storage.accounts import User

router = APIRouter(include_in_schema=False)


class _BasicRequired(ApiError):
    status = 401

    def __init__(self) -> None:
        super().__init__("login required", headers={"WWW-Authenticate": 'Basic realm="nvr"'})


async def _docs_user(request: Request, services: ServicesDep) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return (
            await get_session(
                services, HTTPAuthorizationCredentials(scheme="Bearer", credentials=value.strip())
            )
        ).user
    if scheme.lower() != "basic":
        raise _BasicRequired()
    try:
        name, _, password = (
            base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, UnicodeDecodeError):
        raise _BasicRequired() from None
    user = await attempt_login(services, client_of(request), name, password, via="docs")
    if user is None:
        raise _BasicRequired()
    return user


@router.get("/openapi.json")
async def openapi(request: Request, services: ServicesDep) -> JSONResponse:
    await _docs_user(request, services)
    schema: dict[str, Any] = request.app.openapi()
    return JSONResponse(schema)


@router.get("/docs")
async def docs(request: Request, services: ServicesDep) -> HTMLResponse:
    await _docs_user(request, services)
    return get_swagger_ui_html(openapi_url="/openapi.json", title="nvr API")
