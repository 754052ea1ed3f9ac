"""Login, logout, who am I. Every login attempt is audited (never with the password)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from api.deps import ServicesDep, SessionDep, UserDep
from api.errors import TooManyAttempts, Unauthorized
from api.models import LoginIn, LoginOut, Problem, UserOut
from storage.accounts import User

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


@router.post(
    "/api/login",
    response_model=LoginOut,
    responses={401: {"model": Problem}, 429: {"model": Problem}},
    summary="Log in: returns an opaque bearer token",
)
async def login(body: LoginIn, request: Request, services: ServicesDep) -> LoginOut:
    store = services.store
    client = client_of(request)
    name = body.username
    wait, first_refusal = services.throttle.wait_needed(name, client)
    if wait > 0:
        if first_refusal:
            await asyncio.to_thread(
                store.audit,
                name,
                "login",
                f"user:{name}",
                "refused",
                {"reason": "throttled", "client": client},
            )
        raise TooManyAttempts(wait)
    user = await asyncio.to_thread(store.accounts.check_password, name, body.password)
    if user is None:
        services.throttle.failed(name, client)
        await asyncio.to_thread(
            store.audit, name, "login", f"user:{name}", "failed", {"client": client}
        )
        raise Unauthorized("wrong user name or password, or the user is disabled")
    services.throttle.succeeded(name, client)
    token, expires = await asyncio.to_thread(
        store.accounts.issue_token, user, services.token_ttl_ms
    )
    await asyncio.to_thread(
        store.audit, user.name, "login", f"user:{name}", "ok", {"client": client}
    )
    return LoginOut(token=token, expires_ms=expires, user=user_out(user))


@router.post("/api/logout", status_code=204, responses={401: {"model": Problem}})
async def logout(session: SessionDep, services: ServicesDep) -> Response:
    await asyncio.to_thread(services.store.accounts.revoke, session.token_id)
    await asyncio.to_thread(
        services.store.audit, session.user.name, "logout", f"user:{session.user.name}"
    )
    return Response(status_code=204)


@router.get("/api/me", response_model=UserOut, responses={401: {"model": Problem}})
async def me(user: UserDep) -> UserOut:
    return user_out(user)
