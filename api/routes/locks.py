"""Evidence locks over HTTP (R3): create, list, extend (never shorten), release a legal hold,
and end a lock made by mistake early with two admins (one asks, another approves). The rules
live in the storage door; refusals come back as 409 with the reason."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated

from fastapi import APIRouter, Path, Query

from nvr.api.deps import AdminDep, OperatorDep, ServicesDep, UserDep, check_camera, sees_metadata
from nvr.api.errors import Conflict, Forbidden, NotFound
from nvr.api.models import LockExtendIn, LockIn, LockOut, LockReleaseIn, list_of
from nvr.api.params import parse_time
from nvr.api.routes import ERRORS
from nvr.storage import LockError
from nvr.storage.guard import Lock

router = APIRouter(tags=["locks"])

LockId = Annotated[int, Path(ge=1, le=2**62)]


def lock_out(lk: Lock, now: int) -> LockOut:
    return LockOut.model_validate(
        dataclasses.asdict(lk) | {"hold": lk.hold, "active": lk.active(now)}
    )


@router.get("/api/locks", response_model=list_of(LockOut), responses=ERRORS)
async def locks(
    user: UserDep,
    services: ServicesDep,
    camera: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    include_inactive: bool = False,
) -> list[LockOut]:
    """Locks of the cameras you may see (auditors and admins: all)."""
    found = await asyncio.to_thread(services.store.locks.find, camera, include_inactive)
    now = services.store.now()
    return [lock_out(lk, now) for lk in found if sees_metadata(user, lk.camera)]


@router.post("/api/locks", response_model=LockOut, status_code=201, responses=ERRORS)
async def create_lock(body: LockIn, user: OperatorDep, services: ServicesDep) -> LockOut:
    """Lock footage as evidence: kept two years by default (or until `until`), or as a legal
    hold until an admin releases it."""
    await check_camera(services, user, body.camera)
    start = parse_time(body.start, "start")
    end = parse_time(body.end, "end")
    until = parse_time(body.until, "until") if body.until is not None else None
    try:
        made = await asyncio.to_thread(
            lambda: services.store.locks.add(
                body.camera,
                start,
                end,
                actor=user.name,
                reason=body.reason,
                case_id=body.case_id,
                until_ms=until,
                hold=body.hold,
            )
        )
    except LockError as err:
        raise Conflict(str(err)) from err
    return lock_out(made, services.store.now())


async def _lock_for(services: ServicesDep, user: UserDep, lock_id: int) -> Lock:
    found = await asyncio.to_thread(services.store.locks.find, None, True)
    lk = next((x for x in found if x.id == lock_id), None)
    if lk is None:
        raise NotFound(f"no lock {lock_id}")
    if not user.may_view(lk.camera):
        raise Forbidden("you are not permitted to see this camera", code="camera-forbidden")
    return lk


@router.post("/api/locks/{lock_id}/extend", response_model=LockOut, responses=ERRORS)
async def extend_lock(
    lock_id: LockId, body: LockExtendIn, user: OperatorDep, services: ServicesDep
) -> LockOut:
    """Move a lock's expiry later. Shortening is refused (409) and audited."""
    await _lock_for(services, user, lock_id)
    until = parse_time(body.until, "until")
    try:
        lk = await asyncio.to_thread(
            lambda: services.store.locks.extend(lock_id, until, actor=user.name)
        )
    except LockError as err:
        raise Conflict(str(err)) from err
    return lock_out(lk, services.store.now())


@router.post("/api/locks/{lock_id}/release", response_model=LockOut, responses=ERRORS)
async def release_hold(
    lock_id: LockId, body: LockReleaseIn, user: AdminDep, services: ServicesDep
) -> LockOut:
    """Release a legal hold (admins only; audited)."""
    await _lock_for(services, user, lock_id)
    try:
        lk = await asyncio.to_thread(
            lambda: services.store.locks.release_hold(lock_id, actor=user.name, reason=body.reason)
        )
    except LockError as err:
        raise Conflict(str(err)) from err
    return lock_out(lk, services.store.now())


@router.post("/api/locks/{lock_id}/end-request", response_model=LockOut, responses=ERRORS)
async def request_lock_end(
    lock_id: LockId, body: LockReleaseIn, user: AdminDep, services: ServicesDep
) -> LockOut:
    """An admin asks to end a lock made by mistake (reason required; audited). Nothing ends
    until a second admin approves."""
    await _lock_for(services, user, lock_id)
    try:
        lk = await asyncio.to_thread(
            lambda: services.store.locks.request_end(lock_id, actor=user.name, reason=body.reason)
        )
    except LockError as err:
        raise Conflict(str(err)) from err
    return lock_out(lk, services.store.now())


@router.post("/api/locks/{lock_id}/end-approve", response_model=LockOut, responses=ERRORS)
async def approve_lock_end(
    lock_id: LockId, body: LockReleaseIn, user: AdminDep, services: ServicesDep
) -> LockOut:
    """A second admin (never the one who asked) ends the lock early (audited)."""
    await _lock_for(services, user, lock_id)
    try:
        lk = await asyncio.to_thread(
            lambda: services.store.locks.approve_end(lock_id, actor=user.name, reason=body.reason)
        )
    except LockError as err:
        raise Conflict(str(err)) from err
    return lock_out(lk, services.store.now())
