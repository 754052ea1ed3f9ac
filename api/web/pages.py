"""The web pages: login and logout (the page session), the camera grid, a camera's page
(live view, day timeline, playback, lock and export from a selection), the exports inbox and
register, the audit log, users and health. Each page checks the session cookie and the role
and camera permissions exactly as the API does (a camera the user may not see never
appears; its page is 403); data comes from the services, and changes are made by the page
scripts through the API with the session's CSRF token. Runs on the event loop; blocking
service calls go through `asyncio.to_thread`."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nvr.api.auth import ADMIN, AUDIT, OPERATE, PLAYBACK, SESSION_COOKIE, csrf_token
from nvr.api.deps import CameraPath, ServicesDep, check_camera, note_user, sees_metadata
from nvr.api.errors import ApiError, TooManyAttempts
from nvr.api.routes.auth import attempt_login, client_of
from nvr.api.services import ApiServices
from nvr.api.web.i18n import LANG_COOKIE, LANGS, Text, pick
from nvr.api.web.zone import SiteZone
from nvr.storage.accounts import Role, TokenSession, User
from nvr.storage.timestamps import DAY_MS

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("nvr.api.web")

router = APIRouter(include_in_schema=False)


@functools.cache
def templates() -> jinja2.Environment:
    """The pages' templates, made at the first page shown: a daemon whose web pages nobody
    opens never imports jinja2 (~1.6 MiB resident)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


STATIC = Path(__file__).parent / "static"
LOGIN_FORM_MAX = 4096
"""Bytes of a login form read at most (two fields)."""


@dataclass
class Page:
    """One page request: who, in which language, and how to show times."""

    request: Request
    services: ApiServices
    text: Text
    zone: SiteZone
    session: TokenSession | None = None
    token: str | None = None

    @property
    def user(self) -> User | None:
        return self.session.user if self.session is not None else None

    def may(self, roles: tuple[Role, ...]) -> bool:
        return self.user is not None and self.user.role in roles

    def render(self, template: str, title: str, status: int = 200, **values: Any) -> HTMLResponse:
        user = self.user
        body = (
            templates()
            .get_template(template)
            .render(
                t=self.text,
                lang=self.text.lang,
                langs=LANGS,
                js_text=self.text.script(),
                title=title,
                user=user,
                csrf=csrf_token(self.token) if self.token else None,
                path=self.request.url.path,
                zone=self.zone,
                local=self.zone.local,
                now_ms=self.services.store.now(),
                nav=self._nav(),
                live_js=(STATIC / "live.js").is_file(),
                **values,
            )
        )
        response = HTMLResponse(body, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        asked = self.request.query_params.get("lang")
        if asked in LANGS:
            response.set_cookie(
                LANG_COOKIE, asked, max_age=365 * 86400, samesite="strict", path="/"
            )
        return response

    def _nav(self) -> list[tuple[str, str]]:
        if self.user is None:
            return []
        items = [("/", "nav.grid")]
        if self.may(("operator", "auditor", "admin")):
            items.append(("/exports", "nav.exports"))
        if self.may(AUDIT):
            items.append(("/audit", "nav.audit"))
        if self.may(ADMIN):
            items.append(("/users", "nav.users"))
        items.append(("/health", "nav.health"))
        return items

    def error(self, status: int, detail: str) -> HTMLResponse:
        return self.render(
            "error.html", "error.title", status=status, status_code=status, detail=detail
        )


async def _page(request: Request, services: ApiServices) -> Page:
    text = Text(pick(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)))
    page = Page(request, services, text, SiteZone.of(services.config.site))
    token = request.cookies.get(SESSION_COOKIE)
    if token and len(token) <= 256:
        session = await asyncio.to_thread(services.store.accounts.session, token)
        if session is not None:
            page.session, page.token = session, token
            note_user(request, session.user.name)
    return page


class PageRefused(Exception):
    """A page not shown: the login redirect or an error page, answered as it is by the
    handler `mount` registers (`answer_refused`)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def answer_refused(_request: Request, err: Exception) -> Response:
    assert isinstance(err, PageRefused)
    return err.response


async def _member_page(
    request: Request,
    services: ApiServices,
    roles: tuple[Role, ...] | None = None,
    refusal: str = "",
) -> tuple[Page, User]:
    """The page of a logged-in user with one of `roles` (any role when None); otherwise
    raises `PageRefused` with the redirect to the login page, or a 403 page saying `refusal`."""
    page = await _page(request, services)
    user = page.user
    if user is None:
        raise PageRefused(_to_login(request))
    if roles is not None and not page.may(roles):
        raise PageRefused(page.error(403, page.text(refusal)))
    return page, user


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


def _quote(text: str) -> str:
    return quote(text, safe="")


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never `//host` or a scheme): no open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:2048]


def _same_origin(request: Request) -> bool:
    """A form post from our own pages. Browsers say where a request comes from in
    `Sec-Fetch-Site`; under `Referrer-Policy: no-referrer` their `Origin` on a form post is
    `null`, so that header decides only when it names a host. Clients that send neither
    (scripts, curl) are not browsers a forged page could drive."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request,
    services: ServicesDep,
    next: Annotated[str | None, Query(max_length=2048)] = None,
) -> Response:
    page = await _page(request, services)
    if page.user is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return page.render("login.html", "login.title", next=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request, services: ServicesDep) -> Response:
    """The login form (`username`, `password`, optional `next`): a session cookie and a
    redirect, or the form again with why. Throttled and audited as `POST /api/login`."""
    page = await _page(request, services)
    body = await request.body()
    fields = parse_qs(body[:LOGIN_FORM_MAX].decode("utf-8", "replace"), max_num_fields=8)
    name = (fields.get("username") or [""])[0].strip()[:64]
    password = (fields.get("password") or [""])[0][:1024]
    target = _safe_next((fields.get("next") or [""])[0])

    def form_again(status: int, message: str, username: str = "") -> HTMLResponse:
        """The login form again with why (`message`, a catalogue key)."""
        return page.render(
            "login.html",
            "login.title",
            status=status,
            next=target,
            message=page.text(message),
            username=username,
        )

    if not _same_origin(request):
        return form_again(403, "login.cross_site")
    if not name or not password:
        return form_again(400, "login.missing", name)
    client = client_of(request)
    try:
        user = await attempt_login(services, client, name, password, via="page")
    except TooManyAttempts as err:
        response = form_again(429, "login.throttled", name)
        response.headers.update(err.headers or {})
        return response
    if user is None:
        return form_again(401, "login.wrong", name)
    store = services.store
    token, expires = await asyncio.to_thread(
        store.accounts.issue_token, user, services.token_ttl_ms
    )
    await asyncio.to_thread(
        store.audit.append,
        user.name,
        "login",
        f"user:{user.name}",
        "ok",
        {"client": client, "via": "page"},
    )
    note_user(request, user.name)
    redirect = RedirectResponse(target, status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, (expires - store.now()) // 1000),
        path="/",
        httponly=True,
        samesite="strict",
        secure=services.settings.tls_certificate is not None,
    )
    return redirect


@router.post("/logout")
async def logout(request: Request, services: ServicesDep) -> Response:
    """End the page session (the form carries the CSRF token as `csrf_token`)."""
    page = await _page(request, services)
    body = await request.body()
    fields = parse_qs(body[:LOGIN_FORM_MAX].decode("utf-8", "replace"), max_num_fields=8)
    sent = (fields.get("csrf_token") or [""])[0]
    if page.session is None or page.token is None:
        return RedirectResponse("/login", status_code=303)
    if not hmac.compare_digest(sent.encode(), csrf_token(page.token).encode()):
        return page.error(403, page.text("error.csrf"))
    await asyncio.to_thread(services.store.accounts.revoke, page.session.token_id)
    user = page.session.user.name
    await asyncio.to_thread(
        services.store.audit.append, user, "logout", f"user:{user}", "ok", {"via": "page"}
    )
    gone = RedirectResponse("/login", status_code=303)
    gone.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return gone


def _badge(state: str) -> str:
    return "recording" if state == "recording" else "outage"


@router.get("/", response_class=HTMLResponse)
async def grid(request: Request, services: ServicesDep) -> Response:
    """A tile per camera the user may see: live video, state, badge, last gap, clock."""
    page, user = await _member_page(request, services)
    report = await asyncio.to_thread(services.health.report, user.may_view, user.all_cameras)
    tiles = []
    for c in report.cameras:
        if not user.may_view(c.name):
            continue
        last = c.outages_24h[-1] if c.outages_24h else None
        clock = next(iter(c.clocks), None)
        tiles.append({"c": c, "badge": _badge(c.state), "last": last, "clock": clock})
    return page.render("grid.html", "grid.title", tiles=tiles, may_play=page.may(PLAYBACK))


@router.get("/cameras/{name}", response_class=HTMLResponse)
async def camera(
    name: CameraPath,
    request: Request,
    services: ServicesDep,
    day: Annotated[str | None, Query(max_length=10)] = None,
) -> Response:
    """One camera: live view of the main stream, the day's timeline, playback, selection."""
    page, user = await _member_page(request, services, PLAYBACK, "error.no_playback")
    try:
        await check_camera(services, user, name)
    except ApiError as err:
        key = "error.camera_forbidden" if err.status_code == 403 else "error.no_camera"
        return page.error(err.status_code, page.text(key))
    now = services.store.now()
    try:
        shown = date.fromisoformat(day) if day else page.zone.today(now)
    except ValueError:
        return page.error(400, page.text("error.bad_day"))
    start, end = page.zone.day_bounds(shown)
    return page.render(
        "camera.html",
        "camera.title",
        name=name,
        day=shown.isoformat(),
        prev_day=(shown - timedelta(days=1)).isoformat(),
        next_day=(shown + timedelta(days=1)).isoformat(),
        day_start=start,
        day_end=end,
        operate=page.may(OPERATE),
        max_range_ms=int(services.settings.max_range_hours * 3_600_000),
    )


@router.get("/exports", response_class=HTMLResponse)
async def exports(request: Request, services: ServicesDep) -> Response:
    """Operators: the requests waiting for a second person, and their own; auditors and
    admins: the whole register. Approve, reject, cancel and download from here."""
    page, user = await _member_page(
        request, services, ("operator", "auditor", "admin"), "error.no_exports"
    )
    rows = await asyncio.to_thread(lambda: services.store.exports.entries(limit=500))
    rows = [e for e in rows if sees_metadata(user, e.camera)]
    pending = [
        e
        for e in rows
        if e.state == "pending"
        and e.requester != user.name
        and page.may(OPERATE)
        and user.may_view(e.camera)
    ]
    return page.render(
        "exports.html",
        "exports.title",
        documents=_documents,
        pending=pending,
        rows=rows,
        operate=page.may(OPERATE),
    )


def _documents(reference: str) -> list[str]:
    """The uploaded approval documents an export request names (`sha256:<hex>`)."""
    return re.findall(r"sha256:([0-9a-f]{64})", reference)


@router.get("/audit", response_class=HTMLResponse)
async def audit(
    request: Request,
    services: ServicesDep,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[str | None, Query(max_length=256)] = None,
    target: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """The newest entries (at most 500, of the last 7 days) of the audit log, for auditors
    and admins, with exact filters."""
    page, _user = await _member_page(request, services, AUDIT, "error.no_audit")
    since = services.store.now() - 7 * DAY_MS
    entries = await asyncio.to_thread(
        lambda: services.store.audit.entries(
            since_ms=since,
            actor=actor or None,
            action=action or None,
            target=target or None,
            limit=5000,
        )
    )
    entries = list(reversed(entries))[:500]
    return page.render(
        "audit.html",
        "audit.title",
        entries=entries,
        filters={"actor": actor or "", "action": action or "", "target": target or ""},
    )


@router.get("/users", response_class=HTMLResponse)
async def users(request: Request, services: ServicesDep) -> Response:
    page, _user = await _member_page(request, services, ADMIN, "error.no_users")
    found = await asyncio.to_thread(services.store.accounts.users)
    return page.render(
        "users.html", "users.title", users=found, roles=("viewer", "operator", "auditor", "admin")
    )


@router.get("/health", response_class=HTMLResponse)
async def health(request: Request, services: ServicesDep) -> Response:
    page, user = await _member_page(request, services)
    report = await asyncio.to_thread(services.health.report, user.may_view, user.all_cameras)
    return page.render("health.html", "health.title", h=report)
