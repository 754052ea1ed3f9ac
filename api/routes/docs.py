"""The OpenAPI schema and its Swagger UI (`/openapi.json`, `/docs`, `/docs/assets/...`),
behind a login like everything else: a bearer token, or HTTP Basic so a browser can ask for
the user's password (checked and throttled like `POST /api/login`).

Swagger UI's script, style sheet and icon are served from the installed `fastapi-offline`
package, never from a CDN: the docs work on an air-gapped network, and no third-party script
runs on our origin. The page has no inline script (its start-up is `/docs/assets/init.js`),
so it runs under the API's Content-Security-Policy (`script-src 'self'`). Runs on the event
loop; the asset files are read once, in a worker thread, and kept in memory."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from nvr.api.deps import ServicesDep, get_session
from nvr.api.errors import ApiError, NotFound
from nvr.api.routes.auth import attempt_login, client_of
from nvr.storage.accounts import User

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


ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"
"""Swagger UI's distribution as the `fastapi-offline` package ships it."""
INIT_JS = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    // the origin without any user:password@ the address bar may hold (fetch refuses those)
    url: window.location.origin + "/openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
"""
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
    "init.js": "text/javascript; charset=utf-8",
}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nvr API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css?v={css}">
<link rel="icon" href="/docs/assets/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js?v={js}"></script>
<script src="/docs/assets/init.js?v={init}"></script>
</body>
</html>
"""
_loaded: dict[str, bytes] = {}


def _read_assets() -> dict[str, bytes]:
    out = {name: (ASSET_DIR / name).read_bytes() for name in ASSETS if name != "init.js"}
    out["init.js"] = INIT_JS
    return out


async def _assets() -> dict[str, bytes]:
    if not _loaded:
        _loaded.update(await asyncio.to_thread(_read_assets))
    return _loaded


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


@router.get("/docs")
async def docs(request: Request, services: ServicesDep) -> HTMLResponse:
    await _docs_user(request, services)
    assets = await _assets()
    page = PAGE.format(
        css=_version(assets["swagger-ui.css"]),
        js=_version(assets["swagger-ui-bundle.js"]),
        init=_version(assets["init.js"]),
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


@router.get("/docs/assets/{name}")
async def docs_asset(name: str, request: Request, services: ServicesDep) -> Response:
    """One of Swagger UI's files (same login as the page; the browser resends it)."""
    await _docs_user(request, services)
    if name not in ASSETS:
        raise NotFound("no such file")
    data = (await _assets())[name]
    return Response(
        data,
        media_type=ASSETS[name],
        headers={"Cache-Control": "private, max-age=86400"},
    )
