"""The audit log, for auditors and admins, with filters."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from nvr.api.deps import AuditorDep, ServicesDep
from nvr.api.models import AuditOut, list_of
from nvr.api.params import parse_time
from nvr.api.routes import problems

router = APIRouter(tags=["audit"])

Filter = Annotated[str | None, Query(min_length=1, max_length=256)]
TimeFilter = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.get(
    "/api/audit",
    response_model=list_of(AuditOut),
    responses=problems(400, 401, 403),
)
async def audit(
    user: AuditorDep,
    services: ServicesDep,
    since: TimeFilter = None,
    until: TimeFilter = None,
    actor: Filter = None,
    action: Filter = None,
    target: Filter = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
) -> list[AuditOut]:
    """Entries oldest first; `since`/`until` bound the time, the rest match exactly."""
    since_ms = parse_time(since, "since") if since is not None else None
    until_ms = parse_time(until, "until") if until is not None else None
    entries = await asyncio.to_thread(
        services.store.audit.entries,
        since_ms=since_ms,
        until_ms=until_ms,
        actor=actor,
        action=action,
        target=target,
        limit=limit,
        offset=offset,
    )
    return [AuditOut.model_validate(e) for e in entries]
