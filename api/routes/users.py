"""User administration (admins): list, add, change role, cameras, password, disable.
Every change is audited by the account store, which also judges new passwords and refuses
to demote or disable the last enabled admin (409)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path

from nvr.api.auth import PLAYBACK, has_role
from nvr.api.deps import AdminDep, ServicesDep
from nvr.api.errors import BadRequest, Conflict, NotFound
from nvr.api.models import UserIn, UserOut, UserPatch
from nvr.api.routes import ERRORS
from nvr.api.routes.auth import user_out
from nvr.storage.accounts import AccountError, LastAdminError, User

router = APIRouter(tags=["accounts"])

UserName = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("/api/users", response_model=list[UserOut], responses=ERRORS)
async def users(user: AdminDep, services: ServicesDep) -> list[UserOut]:
    return [user_out(u) for u in await asyncio.to_thread(services.store.accounts.users)]


@router.post("/api/users", response_model=UserOut, status_code=201, responses=ERRORS)
async def add_user(body: UserIn, user: AdminDep, services: ServicesDep) -> UserOut:
    accounts = services.store.accounts
    if await asyncio.to_thread(accounts.user, body.name) is not None:
        raise Conflict(f"a user called {body.name!r} already exists")
    try:
        made = await asyncio.to_thread(
            lambda: accounts.add_user(
                body.name, body.role, body.password, cameras=body.cameras, actor=user.name
            )
        )
    except AccountError as err:
        raise BadRequest(str(err)) from err
    return user_out(made)


@router.patch("/api/users/{name}", response_model=UserOut, responses=ERRORS)
async def change_user(
    name: UserName, body: UserPatch, user: AdminDep, services: ServicesDep
) -> UserOut:
    accounts = services.store.accounts
    if await asyncio.to_thread(accounts.user, name) is None:
        raise NotFound("no such user")

    def apply() -> User:
        current: User | None = None
        if body.role is not None:
            current = accounts.set_role(name, body.role, actor=user.name)
        if body.cameras is not None:
            current = accounts.set_cameras(name, body.cameras, actor=user.name)
        if body.password is not None:
            current = accounts.set_password(name, body.password, actor=user.name)
        if body.disabled is not None:
            current = accounts.set_disabled(name, body.disabled, actor=user.name)
        found = current or accounts.user(name)
        if found is None:
            raise AccountError("no such user")
        return found

    try:
        changed = await asyncio.to_thread(apply)
    except LastAdminError as err:
        raise Conflict(str(err)) from err
    except AccountError as err:
        raise BadRequest(str(err)) from err
    if services.live is not None:
        # A withdrawn permission takes effect on the live views already open too.
        await services.live.revoke(changed.name, lambda camera: may_watch_live(changed, camera))
    return user_out(changed)


def may_watch_live(user: User, camera: str) -> bool:
    """Whether `user`, as it is now, may watch `camera` live (as `routes.live.may_watch`)."""
    return not user.disabled and has_role(user, PLAYBACK) and user.may_view(camera)
