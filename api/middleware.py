"""ASGI middleware of the API, outermost first: the access log (client address, user, method,
path, status, time; control characters escaped) which also counts each request into
`api.metrics.HttpMetrics` by route template, security headers, and the request body limit.
Runs on the daemon's event loop; each does a bounded amount of work per message, so no request
can hold the loop.

The body limit is the first line against a client that wants to stall the recorder: a body
larger than `max_body_bytes` is refused with 413 before a byte of it is read when it declares
its length, and as soon as the limit is crossed when it is chunked. The accepted body is
buffered here (at most `max_body_bytes`) and handed to the application in one piece, so
nothing downstream ever parses more than the limit.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nvr.api.metrics import HttpMetrics

ACCESS_USER = "nvr_user"
"""Where the routes' auth dependencies name the user (`api.deps.note_user`)."""

access_log = logging.getLogger("nvr.api.access")

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL[ord("\\")] = "\\\\"


def printable(text: str, limit: int = 512) -> str:
    """`text` safe for one log line: control characters (CR, LF, ESC ...) and backslashes
    escaped, so a request cannot forge or hide log lines; cut at `limit` characters."""
    cut = text[:limit]
    out = cut.translate(_CONTROL)
    # C1 controls and line/paragraph separators also break lines in some viewers
    out = "".join(
        f"\\u{ord(c):04x}" if 0x80 <= ord(c) < 0xA0 or c in "\u2028\u2029\u0085" else c for c in out
    )
    return out + ("..." if len(text) > limit else "")


def _route(scope: Scope) -> str | None:
    """The template of the route that answered (`/api/cameras/{name}`), if one matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


class AccessLog:
    """Logs `CLIENT USER "METHOD /path" status (ms)` per request, without query strings or
    headers (`-` for a request no login vouched for); the method and path are escaped with
    `printable`. Counts the request into `http` by route template."""

    def __init__(self, app: ASGIApp, http: HttpMetrics | None = None) -> None:
        self.app = app
        self.http = http

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
            elapsed = time.monotonic() - started
            method = str(scope.get("method", "?"))
            client = scope.get("client")
            state = scope.get("state") or {}
            access_log.info(
                '%s %s "%s %s" %d (%.0f ms)',
                printable(str(client[0]), 64) if client else "-",
                printable(str(state.get(ACCESS_USER, "-")), 64),
                printable(method, 16),
                printable(str(scope.get("path", "?"))),
                status,
                elapsed * 1000,
            )
            if self.http is not None:
                self.http.observe(method, _route(scope), status, elapsed)


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self'; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; media-src 'self' blob:; font-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
"""The web pages' policy (`api.web`): our own script and style files only, never inline
ones; `blob:` media for live video through Media Source Extensions. WebRTC media is not
fetched, so it needs no source here; the live WebSocket is same-origin (`'self'`)."""


def _is_page(path: str) -> bool:
    return not (path.startswith("/api/") or path in ("/metrics", "/healthz", "/openapi.json"))


class SecurityHeaders:
    """Adds `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
    `X-Frame-Options: DENY`, a Content-Security-Policy that allows only our own scripts and
    styles (`PAGE_CSP` for the web pages, `CSP` for the API), and HSTS when the API speaks
    TLS. A header the route set itself is kept."""

    def __init__(self, app: ASGIApp, *, tls: bool = False) -> None:
        self.app = app
        self.headers: list[tuple[bytes, bytes]] = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))
        self.api_headers = [*self.headers, (b"content-security-policy", CSP.encode("ascii"))]
        self.page_headers = [
            *self.headers,
            (b"content-security-policy", PAGE_CSP.encode("ascii")),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        ours = self.page_headers if _is_page(str(scope.get("path", ""))) else self.api_headers

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _v in headers}
                headers.extend((k, v) for k, v in ours if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def problem_body(status: int, title: str, detail: str) -> bytes:
    code = "too-large" if status == 413 else "bad-request"
    return json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
    ).encode("utf-8")


async def send_problem(send: Send, status: int, title: str, detail: str) -> None:
    """An RFC 9457 problem response, sent directly (for middleware that answers itself)."""
    body = problem_body(status, title, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413 (before reading them when the length
    is declared) and hands the application the accepted body in one message. A path in
    `streamed` (an upload) has its own, larger limit checked here against the declared
    length only: its body is not buffered but passed on as it arrives, and the route, which
    authenticates before it reads a byte, enforces that limit while it streams."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, streamed: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = dict(streamed or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.streamed.get(str(scope.get("path", "")))
        max_bytes = self.max_bytes if limit is None else limit
        too_large = f"the request body may be at most {max_bytes} bytes"
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_problem(send, 400, "Bad Request", "invalid Content-Length")
                    return
                if declared > max_bytes:
                    await send_problem(send, 413, "Content Too Large", too_large)
                    return
        if limit is not None:
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_problem(send, 413, "Content Too Large", too_large)
                return
            parts.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(parts)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
