"""`create_app`: the FastAPI application. Its lifespan builds the services from what the
daemon hands over (`ApiContext`) and closes them at shutdown; routes reach them through
`api.deps`. An ASGI access log records method, path (never the query string, which may hold
a playback link's grant), status and time. Runs on the daemon's event loop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nvr.api.errors import ApiError
from nvr.api.metrics import HttpMetrics
from nvr.api.middleware import AccessLog, BodyLimit, SecurityHeaders, printable
from nvr.api.routes import (
    audit,
    auth,
    cameras,
    config,
    docs,
    exports,
    health,
    live,
    locks,
    users,
)
from nvr.api.services import ApiContext, close_services, open_services
from nvr.api.web import UPLOADS
from nvr.api.web import mount as mount_pages
from nvr.storage import StorageError

log = logging.getLogger("nvr.api")

PROBLEM = "application/problem+json"
HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 401: "login-required"}
"""`code` of the problems Starlette raises itself (no `ApiError`)."""


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An RFC 9457 problem response: type, title, status, detail (and `extra` members)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM)


def _validation_errors(err: RequestValidationError) -> list[dict[str, object]]:
    """Where and what, never the input itself (it may be megabytes, or a password)."""
    out: list[dict[str, object]] = []
    for e in err.errors()[:20]:
        loc = [str(p)[:64] for p in e.get("loc", ())][:8]
        out.append({"loc": loc, "msg": str(e.get("msg", ""))[:200], "type": e.get("type")})
    return out


def _problem_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Document every 4xx/5xx as `application/problem+json` with the `Problem` schema."""
    ref = {"$ref": "#/components/schemas/Problem"}
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            for code, response in op.get("responses", {}).items():
                if str(code)[0] in "45":
                    response["content"] = {PROBLEM: {"schema": ref}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def create_app(ctx: ApiContext) -> FastAPI:
    http = HttpMetrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        services = await open_services(ctx)
        services.http = http
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
    for module in (health, auth, users, cameras, live, locks, exports, audit, config, docs):
        app.include_router(module.router)
    mount_pages(app)

    @app.exception_handler(StorageError)
    async def storage_error(_request: Request, err: StorageError) -> JSONResponse:
        log.error("storage error while serving a request: %s", printable(str(err)))
        return problem(503, f"storage: {err}", code="storage")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = err.code if isinstance(err, ApiError) else HTTP_CODES.get(err.status_code, "error")
        return problem(err.status_code, str(err.detail), dict(err.headers or {}) or None, code=code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(err)
        where = ", ".join(".".join(e["loc"]) for e in errors[:3])  # type: ignore[arg-type]
        return problem(422, f"invalid request: {where}", code="invalid-request", errors=errors)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_openapi(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    settings = ctx.settings
    # added last = outermost: the log sees every answer, the limit runs before any route
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, streamed=UPLOADS)
    app.add_middleware(SecurityHeaders, tls=settings.tls_certificate is not None)
    app.add_middleware(AccessLog, http=http)
    return app
