"""FastAPI dependencies as typed aliases (`StoreDep`, `UserDep`, `OperatorDep`, ...): the
services from the lifespan, the logged-in user from a bearer token or the web pages' session
cookie (with its CSRF check), role checks and camera permission checks. Runs on the event
loop; index lookups go through `asyncio.to_thread`."""

from __future__ import annotations

import asyncio
from typing import Annotated, cast

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from nvr.api.auth import (
    ADMIN,
    AUDIT,
    CSRF_HEADER,
    OPERATE,
    PLAYBACK,
    SESSION_COOKIE,
    UNSAFE_METHODS,
    Link,
    csrf_matches,
    has_role,
)
from nvr.api.errors import Forbidden, NotFound, Unauthorized
from nvr.api.middleware import ACCESS_USER
from nvr.api.services import ApiServices
from nvr.config.models import CAMERA_NAME
from nvr.storage import SegmentStore
from nvr.storage.accounts import Role, TokenSession, User
from nvr.storage.timestamps import iso

bearer = HTTPBearer(
    auto_error=False,
    description="The token from POST /api/login, as `Authorization: Bearer <token>`",
)


async def get_services(request: Request) -> ApiServices:
    # async, as every dependency here: FastAPI runs a plain `def` dependency on a worker
    # thread, a thread hop (and a GIL hand-over) per request for a lookup (issue 13)
    return cast(ApiServices, request.state.services)


ServicesDep = Annotated[ApiServices, Depends(get_services)]


async def get_store(services: ServicesDep) -> SegmentStore:
    return services.store


StoreDep = Annotated[SegmentStore, Depends(get_store)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_session(services: ServicesDep, creds: Credentials) -> TokenSession:
    """The session of the bearer token; 401 without a valid one."""
    if creds is None:
        raise Unauthorized()
    token = creds.credentials
    if not token or len(token) > 256:
        raise Unauthorized("invalid or expired token")
    session = await asyncio.to_thread(services.store.accounts.session, token)
    if session is None:
        raise Unauthorized("invalid or expired token")
    return session


async def cookie_session(services: ApiServices, conn: HTTPConnection) -> TokenSession | None:
    """The page session named by the session cookie of `conn`, if valid; no CSRF check (a
    WebSocket handshake cannot send the header: check its `Origin` instead)."""
    token = conn.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 256:
        return None
    return await asyncio.to_thread(services.store.accounts.session, token)


async def authenticate(
    conn: HTTPConnection, services: ServicesDep, creds: Credentials
) -> TokenSession:
    """The session of a request: its bearer token if it sends one, else the page session
    cookie. A cookie-authenticated POST, PUT, PATCH or DELETE must carry `X-CSRF-Token`
    equal to the session's CSRF token (403 otherwise); 401 without a valid login."""
    if creds is not None or SESSION_COOKIE not in conn.cookies:
        return await get_session(services, creds)
    session = await cookie_session(services, conn)
    if session is None:
        raise Unauthorized("invalid or expired session: log in again")
    method = conn.scope.get("method", "GET")
    if method in UNSAFE_METHODS and not csrf_matches(
        conn.cookies[SESSION_COOKIE], conn.headers.get(CSRF_HEADER)
    ):
        raise Forbidden(
            f"a request made with the session cookie must send the header {CSRF_HEADER} "
            '(the page\'s <meta name="csrf-token">)',
            code="csrf-missing",
        )
    return session


SessionDep = Annotated[TokenSession, Depends(authenticate)]


def note_user(request: Request, name: str) -> None:
    """Name who made this request in its access-log line (`api.middleware.AccessLog`)."""
    setattr(request.state, ACCESS_USER, name)


async def get_user(request: Request, session: SessionDep) -> User:
    note_user(request, session.user.name)
    return session.user


UserDep = Annotated[User, Depends(get_user)]


def _requiring(roles: tuple[Role, ...], what: str) -> object:
    async def check(user: UserDep) -> User:
        if not has_role(user, roles):
            raise Forbidden(f"{what} needs the role {' or '.join(roles)}", code="role-forbidden")
        return user

    return Depends(check)


ViewerDep = Annotated[User, _requiring(PLAYBACK, "playback")]
OperatorDep = Annotated[User, _requiring(OPERATE, "this")]
AuditorDep = Annotated[User, _requiring(AUDIT, "the audit log")]
AdminDep = Annotated[User, _requiring(ADMIN, "user administration")]

CameraPath = Annotated[
    str, Path(min_length=1, max_length=64, pattern=CAMERA_NAME.pattern, description="camera name")
]


async def check_camera(services: ApiServices, user: User, name: str) -> str:
    """`name` if the camera exists and `user` may see it: 404 for impossible names, 403
    for cameras not permitted (whether or not they exist), 404 for unknown ones."""
    if not CAMERA_NAME.match(name):
        raise NotFound("no such camera")
    if not user.may_view(name):
        raise Forbidden("you are not permitted to see this camera", code="camera-forbidden")
    known = await asyncio.to_thread(services.cameras.known)
    if name not in known:
        raise NotFound("no such camera")
    return name


def sees_metadata(user: User, camera: str) -> bool:
    """Locks and the export register: auditors read all of it; others their cameras."""
    return user.role in ("auditor", "admin") or user.may_view(camera)


AccessQuery = Annotated[
    str | None,
    Query(
        max_length=1024,
        description="A signed playback link's grant (from POST /api/cameras/{name}/links), "
        "for players that cannot send a header",
    ),
]


async def link_user(services: ApiServices, access: str) -> tuple[User, Link]:
    """The user and link a playback link's grant speaks for, or 401 saying why it does not
    hold: not ours, expired, or the login session it was made in has ended."""
    link = services.links.authentic(access)
    if link is None:
        raise Unauthorized("invalid playback link (not signed by this server, or altered)")
    if link.expires_ms <= services.store.now():
        raise Unauthorized(
            f"this playback link expired at {iso(link.expires_ms)}: ask for a new one with "
            "POST /api/cameras/{name}/links (a page renews its links with POST "
            "/api/links/renew before they expire)"
        )
    session = await asyncio.to_thread(services.store.accounts.session_by_id, link.token_id)
    if session is None or session.user.id != link.user_id:
        raise Unauthorized(
            "the login session this playback link was made in has ended (logout, password "
            "change, disabled account or expiry): log in and ask for a new link"
        )
    return session.user, link


async def playback_user(
    request: Request, services: ServicesDep, creds: Credentials, access: AccessQuery = None
) -> tuple[User, Link | None]:
    """The user of a playback request: a bearer token, the page session cookie, or a signed
    link's grant, which holds only while the session that asked for it lives (logout, a
    password change or a disabled account end it) and until it expires (the page renews it
    while playing)."""
    if access is not None:
        user, link = await link_user(services, access)
    else:
        user, link = (await authenticate(request, services, creds)).user, None
    note_user(request, user.name)
    return user, link


PlaybackUserDep = Annotated[tuple[User, Link | None], Depends(playback_user)]
