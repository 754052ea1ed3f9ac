"""Liveness (`/healthz`, no login, no details), health (`/api/health`) and Prometheus
metrics (`/metrics`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request, Response

from nvr.api.deps import Credentials, ServicesDep, UserDep, get_session, note_user
from nvr.api.metrics import CONTENT_TYPE, render
from nvr.api.models import (
    CameraClockOut,
    CameraHealthOut,
    CapacityOut,
    ErrorLineOut,
    Gb28181Out,
    HealthOut,
    LivenessOut,
    OutageOut,
    PictureOut,
)
from nvr.api.routes import problems

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=LivenessOut)
async def healthz() -> LivenessOut:
    """Liveness only: the process answers. No login, no details."""
    return LivenessOut()


@router.get("/api/health", response_model=HealthOut, responses=problems(401))
async def health(user: UserDep, services: ServicesDep) -> HealthOut:
    """Overall status (ok / degraded / critical) with reasons; per camera (those you may
    see): state, time down, last segment age, the outage ledger of the last 24 h; storage
    free space and forecast; retention compliance; the last warnings and errors."""
    h = await asyncio.to_thread(services.health.report, user.may_view, user.all_cameras)
    return HealthOut(
        status=h.status,  # type: ignore[arg-type]
        reasons=list(h.reasons),
        at_ms=h.at_ms,
        cameras=[
            CameraHealthOut(
                name=c.name,
                state=c.state,
                down_for_s=c.down_for_s,
                last_segment_age_s=c.last_segment_age_s,
                gap_seconds_24h=c.gap_seconds_24h,
                outages_24h=[
                    OutageOut(
                        cause=o.cause,
                        detail=o.detail,
                        start_ms=o.start_ms,
                        end_ms=o.end_ms,
                        duration_s=None if o.duration_ms is None else o.duration_ms / 1000,
                    )
                    for o in c.outages_24h
                ],
                window_days=c.window_days,
                oldest_segment_ms=c.oldest_segment_ms,
                clocks=[
                    CameraClockOut(
                        source=k.source,
                        at_ms=k.at_ms,
                        offset_s=k.offset_s,
                        limit_s=k.limit_s,
                        warning=k.warning,
                    )
                    for k in c.clocks
                ],
                picture=PictureOut.of(c.picture),
            )
            for c in h.cameras
        ],
        storage=CapacityOut(**vars(h.capacity)),
        retention_compliant=h.retention_compliant,
        retention_detail=h.retention_detail,
        retention_held=h.retention_held,
        retention_clock=h.retention_clock,
        last_errors=[ErrorLineOut(**vars(e)) for e in h.errors],
        clock_synchronised=h.clock_synchronised,
        clock_detail=h.clock_detail,
        gb28181=None
        if h.gb28181 is None
        else Gb28181Out(
            server_id=h.gb28181.server_id,
            server=h.gb28181.server,
            registered=h.gb28181.registered,
            last_error=h.gb28181.last_error,
            clock_offset_s=h.gb28181.clock_offset_s,
            clock_limit_s=h.gb28181.clock_limit_s,
            clock_warning=bool(h.gb28181.clock_finding),
            streams=h.gb28181.streams,
        ),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **problems(401)},
)
async def metrics(request: Request, services: ServicesDep, creds: Credentials) -> Response:
    """Prometheus text: per camera (those you may see) bytes, segments, reconnects, gap
    seconds, stall and state; storage free bytes and forecast days. Authenticate with a
    user's bearer token, or with the static scrape token of `[api] metrics_token_file`
    (`nvr metrics-token`), which sees every camera here and is refused everywhere else."""
    token = creds.credentials if creds is not None else ""
    if services.scrape.configured and await asyncio.to_thread(services.scrape.matches, token):
        may_view: Callable[[str], bool] = lambda _camera: True  # noqa: E731
        note_user(request, "metrics-token")
    else:
        user = (await get_session(services, creds)).user
        note_user(request, user.name)
        may_view = user.may_view
    body = await asyncio.to_thread(
        render,
        services.store,
        services.cameras,
        services.health,
        services.playback,
        may_view,
        services.http,
    )
    return Response(content=body, media_type=CONTENT_TYPE)
