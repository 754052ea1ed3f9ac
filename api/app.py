"""`create_app`: the FastAPI application. Its lifespan builds the services from what the
daemon hands over (`ApiContext`) and closes them at shutdown; routes reach them through
`api.deps`. An ASGI access log records method, path (never the query string, which may hold
a playback link's grant), status and time. Runs on the daemon's event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.routes import audit, auth, cameras, docs, exports, health, locks, users
from api.services import ApiContext, close_services, open_services
from storage import StorageError

log = logging.getLogger("nvr.api")
access_log = logging.getLogger("nvr.api.access")


class AccessLog:
    """Logs `METHOD /path -> status (ms)` per request, without query strings or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            access_log.info(
                "%s %s -> %d (%.0f ms)",
                scope.get("method", "?"),
                scope.get("path", "?"),
                status,
                (time.monotonic() - started) * 1000,
            )


def create_app(ctx: ApiContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        services = await open_services(ctx)
        try:
            yield {"services": services}
        finally:
            await close_services(services)

    app = FastAPI(
        title="nvr",
        summary="Evidence-grade network video recorder",
        description=(
            "Log in with `POST /api/login`, then send `Authorization: Bearer <token>`. "
            "Times are UTC milliseconds since 1970 (`*_ms`); query times also accept RFC 3339."
        ),
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for module in (health, auth, users, cameras, locks, exports, audit, docs):
        app.include_router(module.router)

    @app.exception_handler(StorageError)
    async def storage_error(_request: Request, err: StorageError) -> JSONResponse:
        log.error("storage error while serving a request: %s", err)
        return JSONResponse({"detail": f"storage: {err}"}, status_code=503)

    app.add_middleware(AccessLog)
    return app
