"""The operator web UI served by the daemon at `/` (issue 17): server-rendered pages (Jinja2
templates in `templates/`), our own small scripts and one style sheet in `static/` (served at
`/static/`, no build step, no CDN, nothing inline, so they run under `PAGE_CSP`), and the
message catalogues in `i18n/` (zh-CN, the default, and English). Pages log in with a session
cookie (`api.auth.SESSION_COOKIE`); everything they show comes from the same services the API
routes use, and everything they change goes through the API with the session's CSRF token.
Modules: `pages` (the page routes, login and logout), `documents` (approval documents
uploaded with an export request), `zone` (the site's time zone), `i18n` (catalogues); the
live video itself is `static/live.js` over `api.live`. Runs on the daemon's event loop;
blocking service calls go through `asyncio.to_thread`.

Imports go down: the rest of `api` (services, dependencies, errors, models, the login of
`api.routes.auth`), `storage.accounts` and `config`; only `api.app` imports `api.web`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from nvr.api.web.documents import DOCUMENT_MAX_BYTES, DOCUMENT_PATH
from nvr.api.web.documents import router as documents
from nvr.api.web.pages import PageRefused, answer_refused, router

STATIC_DIR = Path(__file__).parent / "static"

UPLOADS = {DOCUMENT_PATH: DOCUMENT_MAX_BYTES}
"""Paths whose bodies are streamed to disk by their route, with their size limits
(`api.middleware.BodyLimit`)."""

__all__ = ["UPLOADS", "mount", "router"]


def mount(app: FastAPI) -> None:
    """Add the pages and `/static/` to `app`."""
    app.include_router(router)
    app.add_exception_handler(PageRefused, answer_refused)
    app.include_router(documents)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
