"""Login, logout, who am I. Every login attempt is audited (never with the password)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response

from nvr.api.deps import ServicesDep, SessionDep, UserDep
from nvr.api.errors import TooManyAttempts, Unauthorized
from nvr.api.middleware import printable
from nvr.api.models import LoginIn, LoginOut, UserOut
from nvr.api.routes import problems
from nvr.api.services import ApiServices
from nvr.storage.accounts import User

log = logging.getLogger("nvr.api.auth")

router = APIRouter(tags=["accounts"])


def user_out(user: User) -> UserOut:
    return UserOut(
        name=user.name,
        role=user.role,
        cameras=sorted(user.cameras),
        disabled=user.disabled,
        created_ms=user.created_ms,
    )


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def attempt_login(
    services: ApiServices,
    client: str,
    name: str,
    password: str,
    *,
    via: str | None = None,
) -> User | None:
    """Check a password through the throttle (`api.auth.LoginThrottle`): the user, None
    for a wrong one (audited), or `TooManyAttempts`. The argon2 check runs in the hashing
    pool of its own, so a burst of logins cannot starve playback or the store."""
    store = services.store
    name = name[:64]
    extra = {"client": client} if via is None else {"client": client, "via": via}
    admission = services.throttle.admit(name, client)
    if admission.refused:
        if admission.first_refusal:
            log.warning(
                "login throttled for %s from %s (too many failures; wait %.0f s)",
                printable(name, 64),
                client,
                admission.wait,
            )
            await asyncio.to_thread(
                store.audit.append,
                name,
                "login",
                f"user:{name}",
                "refused",
                {"reason": "throttled", **extra},
            )
        raise TooManyAttempts(admission.wait)
    user: User | None = None
    try:
        if admission.delay > 0:
            await asyncio.sleep(admission.delay)
        loop = asyncio.get_running_loop()
        user = await loop.run_in_executor(
            services.hashing, store.accounts.check_password, name, password[:1024]
        )
    finally:
        if user is None:
            services.throttle.failed(name, client)
        else:
            services.throttle.succeeded(name, client)
    if user is None:
        log.warning(
            "login failed for %s from %s%s",
            printable(name, 64),
            client,
            f" via {via}" if via else "",
        )
        await asyncio.to_thread(store.audit.append, name, "login", f"user:{name}", "failed", extra)
    return user


@router.post(
    "/api/login",
    response_model=LoginOut,
    responses=problems(401, 429),
    summary="Log in: returns an opaque bearer token",
)
async def login(body: LoginIn, request: Request, services: ServicesDep) -> LoginOut:
    store = services.store
    client = client_of(request)
    name = body.username
    user = await attempt_login(services, client, name, body.password)
    if user is None:
        raise Unauthorized(
            "wrong user name or password, or the user is disabled", code="login-failed"
        )
    token, expires = await asyncio.to_thread(
        store.accounts.issue_token, user, services.token_ttl_ms
    )
    await asyncio.to_thread(
        store.audit.append, user.name, "login", f"user:{name}", "ok", {"client": client}
    )
    return LoginOut(token=token, expires_ms=expires, user=user_out(user))


@router.post("/api/logout", status_code=204, responses=problems(401))
async def logout(session: SessionDep, services: ServicesDep) -> Response:
    await asyncio.to_thread(services.store.accounts.revoke, session.token_id)
    await asyncio.to_thread(
        services.store.audit.append, session.user.name, "logout", f"user:{session.user.name}"
    )
    return Response(status_code=204)


@router.get("/api/me", response_model=UserOut, responses=problems(401))
async def me(user: UserDep) -> UserOut:
    return user_out(user)
