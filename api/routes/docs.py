"""The OpenAPI schema and its Swagger UI (`/openapi.json`, `/docs`), behind a login like
everything else: a bearer token, or HTTP Basic so a browser can ask for the user's password
(checked and throttled like `POST /api/login`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import ServicesDep, get_session
from api.errors import ApiError, TooManyAttempts
from api.routes.auth import client_of
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
    client = client_of(request)
    wait, first = services.throttle.wait_needed(name, client)
    if wait > 0:
        if first:
            await asyncio.to_thread(
                services.store.audit,
                name[:64],
                "login",
                f"user:{name[:64]}",
                "refused",
                {"reason": "throttled", "client": client, "via": "docs"},
            )
        raise TooManyAttempts(wait)
    user = await asyncio.to_thread(
        services.store.accounts.check_password, name[:64], password[:1024]
    )
    if user is None:
        services.throttle.failed(name, client)
        await asyncio.to_thread(
            services.store.audit,
            name[:64],
            "login",
            f"user:{name[:64]}",
            "failed",
            {"client": client, "via": "docs"},
        )
        raise _BasicRequired()
    services.throttle.succeeded(name, client)
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
