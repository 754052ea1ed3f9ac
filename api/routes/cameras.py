"""Cameras: list with live state, timeline, playback (`recording.mp4` with Range/ETag),
signed playback links, and deletion requests (refused inside the window or when locked).
Every playback and download is audited before the first byte is sent."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

import av
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from nvr.api.auth import LINK_TTL_MS, PLAYBACK, Link, has_role
from nvr.api.deps import (
    CameraPath,
    OperatorDep,
    PlaybackUserDep,
    ServicesDep,
    SessionDep,
    UserDep,
    ViewerDep,
    check_camera,
    link_user,
)
from nvr.api.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooBusy,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from nvr.api.masking import MaskedCopy, MaskJob, mask_jpeg, video_entry
from nvr.api.models import (
    CameraOut,
    DeletedOut,
    GapCauseOut,
    GapOut,
    LinkIn,
    LinkOut,
    LinkRenewIn,
    PictureEventOut,
    PictureOut,
    SpanOut,
    TimelineOut,
)
from nvr.api.params import parse_range
from nvr.api.playback import PlanBusy, RangeReader, Recording, gap_causes, gaps_header, stream
from nvr.api.routes import problems
from nvr.api.routes.locks import lock_out
from nvr.api.services import ApiServices
from nvr.config.models import CAMERA_NAME, PrivacyMask
from nvr.storage import RetentionViolation, StorageError
from nvr.storage.media.boxes import Mp4Error
from nvr.storage.timestamps import iso

router = APIRouter(tags=["cameras"])

TimeQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=64,
        description="UTC ms since 1970, or RFC 3339 with a zone (2026-11-22T08:15:00Z)",
    ),
]
TIMELINE_MAX_HOURS = 168
MASKED_MAX_MS = 15 * 60_000
"""Longest range a masked user's playback (or an H.264 copy of H.265) may ask for
(docs/benchmarks.md: bench/masks.py)."""
H264_MAX_HEIGHT = 720
"""An H.264 copy of an H.265 recording (`h264=true`) is at most this high."""
H265_ENTRIES = (b"hvc1", b"hev1")
DELETE_MAX_HOURS = 24 * 366 * 10
ERRORS = problems(400, 401, 403, 404)


@router.get("/api/cameras", response_model=list[CameraOut], responses=ERRORS)
async def cameras(user: UserDep, services: ServicesDep) -> list[CameraOut]:
    """The cameras you may see: state, last segment end, bitrate, share of 24 h recorded."""
    known = await asyncio.to_thread(services.cameras.known)
    names = [n for n in known if user.may_view(n)]
    found = await asyncio.to_thread(services.cameras.summaries, names)
    return [CameraOut(**{**vars(s), "picture": PictureOut.of(s.picture)}) for s in found]


@router.get("/api/cameras/{name}/timeline", response_model=TimelineOut, responses=ERRORS)
async def timeline(
    name: CameraPath,
    start: TimeQuery,
    end: TimeQuery,
    user: ViewerDep,
    services: ServicesDep,
) -> TimelineOut:
    """Recorded spans, gaps (with their causes from the outage ledger) and the locks
    (evidence, exports) overlapping [start, end)."""
    await check_camera(services, user, name)
    rng = parse_range(start, end, max(TIMELINE_MAX_HOURS, services.settings.max_range_hours))
    tl = await asyncio.to_thread(services.cameras.timeline, name, rng.start_ms, rng.end_ms)
    locks = await asyncio.to_thread(services.store.locks.find, name, False)
    found = await asyncio.to_thread(services.store.pictures.find, name, rng.start_ms, rng.end_ms)
    now = services.store.now()
    return TimelineOut(
        pictures=[
            PictureEventOut.model_validate(
                dataclasses.asdict(p) | {"snapshot": p.snapshot is not None}
            )
            for p in found
        ],
        locks=[
            lock_out(lk, now)
            for lk in locks
            if lk.start_ms < rng.end_ms and lk.end_ms > rng.start_ms
        ],
        camera=tl.camera,
        start_ms=tl.start_ms,
        end_ms=tl.end_ms,
        recorded_ms=tl.recorded_ms,
        spans=[SpanOut(**vars(s)) for s in tl.spans],
        gaps=[
            GapOut(
                start_ms=g.start_ms,
                end_ms=g.end_ms,
                causes=[GapCauseOut(**vars(c)) for c in g.causes],
            )
            for g in tl.gaps
        ],
    )


def _link_url(link: Link, grant: str) -> str:
    return (
        f"/api/cameras/{link.camera}/recording.mp4?start={link.start_ms}&end={link.end_ms}"
        f"&access={quote(grant, safe='')}"
    )


@router.post("/api/cameras/{name}/links", response_model=LinkOut, responses=ERRORS)
async def playback_link(
    name: CameraPath, body: LinkIn, user: ViewerDep, session: SessionDep, services: ServicesDep
) -> LinkOut:
    """A URL of `recording.mp4` for this range that a `<video>` element can play without an
    Authorization header. It grants only this camera and range, to you, while this login
    session lives (logout, a password change or a disabled account end it at once), and
    expires after 10 minutes unless renewed with `POST /api/links/renew`."""
    await check_camera(services, user, name)
    rng = parse_range(body.start, body.end, services.settings.max_range_hours)
    expires = services.store.now() + LINK_TTL_MS
    link = Link(user.id, name, rng.start_ms, rng.end_ms, expires, session.token_id)
    return LinkOut(url=_link_url(link, services.links.sign(link)), expires_ms=expires)


@router.post("/api/links/renew", response_model=LinkOut, responses=ERRORS)
async def renew_link(body: LinkRenewIn, session: SessionDep, services: ServicesDep) -> LinkOut:
    """Keep a playback link you made alive for another 10 minutes: the same URL goes on
    working, so a playing `<video>` is not interrupted. A page calls this every few minutes
    while it plays; an expired link, or one from a session that has ended, cannot be
    renewed (401), and a link of someone else is 403."""
    access = parse_qs(urlsplit(body.url).query).get("access", [body.url])[0]
    if len(access) > 1024:
        raise BadRequest("url: not a playback link")
    user, _link = await link_user(services, access)
    if user.id != session.user.id:
        raise Forbidden("this playback link belongs to another user")
    now = services.store.now()
    renewed = services.links.renew(access, now + LINK_TTL_MS, now)
    if renewed is None:  # expired between the check and now
        raise Unauthorized("this playback link has expired: ask for a new one")
    return LinkOut(url=_link_url(renewed, access), expires_ms=renewed.expires_ms)


def _via(request: Request, link: Link | None) -> str:
    """How a playback request was authenticated, for its audit entry."""
    if link is not None:
        return "link"
    return "token" if "authorization" in request.headers else "session"


_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")
"""18 digits: larger offsets than any file; longer numbers are a malformed header."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The single byte range asked for: (first, last), None for the whole file (no header,
    several ranges or a malformed one, which RFC 9110 says to ignore), "unsatisfiable"."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(a)
    if first >= size:
        return "unsatisfiable"
    last = int(b) if b else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.head("/api/cameras/{name}/recording.mp4", include_in_schema=False)
@router.get(
    "/api/cameras/{name}/recording.mp4",
    operation_id="recording",
    response_class=Response,
    responses={
        200: {"content": {"video/mp4": {}}, "description": "the whole MP4"},
        206: {"content": {"video/mp4": {}}, "description": "the requested bytes"},
        304: {"description": "not modified (If-None-Match)"},
        **problems(416, 422, 429),
        **ERRORS,
    },
)
async def recording(
    name: CameraPath,
    start: TimeQuery,
    end: TimeQuery,
    request: Request,
    auth: PlaybackUserDep,
    services: ServicesDep,
    download: bool = False,
    h264: Annotated[
        bool,
        Query(
            description="for a browser that cannot decode H.265: an H.265 recording comes "
            "as an H.264 copy made on demand (at most 720 lines, streamed while it is made; "
            "`X-Transcoded: h264`); H.264 recordings come as they are. Originals are never "
            "altered"
        ),
    ] = False,
) -> Response:
    """One standard, seekable MP4 of [start, end): from the keyframe at or before `start`,
    across segments; HTTP Range (206), ETag, If-None-Match and If-Range. Authenticate with a
    bearer token or a signed link (`access`). Every response carrying footage is audited."""
    user, link = auth
    action = "download" if download else "playback"
    try:
        if not has_role(user, PLAYBACK):
            raise Forbidden(
                "playback needs the role viewer, operator or admin", code="role-forbidden"
            )
        await check_camera(services, user, name)
        rng = parse_range(start, end, services.settings.max_range_hours)
        if link is not None and (link.camera, link.start_ms, link.end_ms) != (
            name,
            rng.start_ms,
            rng.end_ms,
        ):
            raise Forbidden("the playback link is for another camera or range")
    except Forbidden as err:
        # who tried to look matters as much as who looked (R5)
        await asyncio.to_thread(
            services.store.audit.append,
            user.name,
            action,
            name if CAMERA_NAME.match(name) else "?",
            "refused",
            {
                "reason": str(err.detail),
                "status": 403,
                "method": request.method,
                "via": _via(request, link),
            },
        )
        raise
    try:
        rec = await services.playback.resolve(name, rng.start_ms, rng.end_ms)
    except Mp4Error as err:
        raise Unprocessable(f"cannot make one MP4 of this range: {err}") from err
    except StorageError as err:
        raise Unavailable(str(err)) from err
    if rec is None:
        raise NotFound("no footage in this range", code="no-footage")
    masks = privacy_masks(services, name)
    masked = bool(masks) and not user.unmasked and services.masks is not None
    if masked and rng.end_ms - rng.start_ms > MASKED_MAX_MS:
        # the copy is re-encoded at about real time at 1080p (streamed as it is made), and
        # one at a time: a bound keeps one viewer from holding the only encoder for hours
        raise Unprocessable(
            f"this camera has privacy masks: ask for at most {MASKED_MAX_MS // 60_000} minutes "
            "at a time",
            code="masked-range-too-long",
        )
    headers = {
        "ETag": rec.etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
    }
    detail: dict[str, object] = {
        "start_ms": rng.start_ms,
        "end_ms": rng.end_ms,
        "via": _via(request, link),
    }
    if masked:
        detail["masked"] = True

    async def not_modified() -> Response:
        """The client's copy is this one (If-None-Match): 304, audited with no bytes."""
        extra = {"bytes": 0, "status": 304, "method": request.method}
        await _audit_ok(services, user.name, action, name, {**detail, **extra})
        return Response(status_code=304, headers=headers)

    if not masked and not h264 and _etag_matches(request.headers.get("if-none-match"), rec.etag):
        return await not_modified()
    if request.method == "HEAD":
        if masked or h264:
            del headers["ETag"]  # the masked copy's tag is known once it is made
            rec_for_head = None
        else:
            rec_for_head = rec
        return await _head(services, user.name, action, name, rec_for_head, headers, detail)
    try:
        vf = await services.playback.file(rec, user.id)
    except PlanBusy as err:
        raise TooBusy(str(err), err.retry_after) from err
    except Mp4Error as err:
        raise Unprocessable(f"cannot make one MP4 of this range: {err}") from err
    except StorageError as err:
        raise Unavailable(str(err)) from err
    headers["X-Recording-Start"] = iso(vf.start_ms)
    headers["X-Recording-End"] = iso(vf.end_ms)
    transcoded = h264 and video_entry(vf.header) in H265_ENTRIES
    if transcoded:
        if rng.end_ms - rng.start_ms > MASKED_MAX_MS:
            raise Unprocessable(
                f"an H.264 copy of H.265 footage is made at about real time: ask for at most "
                f"{MASKED_MAX_MS // 60_000} minutes at a time",
                code="transcode-range-too-long",
            )
        detail["transcoded"] = "h264"
        headers["X-Transcoded"] = "h264"
    # What the audit says of footage sent: the range asked for and the file's own.
    sent: dict[str, object] = {
        **detail,
        "footage_start_ms": vf.start_ms,
        "footage_end_ms": vf.end_ms,
    }
    # Gaps inside the file show no picture (empty edits); say where and why.
    gaps = await asyncio.to_thread(gap_causes, services.store, name, vf.gaps)
    headers["X-Recording-Gaps"] = gaps_header(gaps)
    if download:
        filename = f"{name}_{iso(vf.start_ms)}_{iso(vf.end_ms)}.mp4".replace(":", "")
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    copy: MaskedCopy | None = None
    if (masked or transcoded) and services.masks is not None:
        # Privacy masks (R10): this user sees a re-encoded copy with the areas filled; an
        # H.265 recording asked for as H.264 is re-encoded the same way (masks or none).
        try:
            made = await services.masks.copy(
                vf,
                rec.etag,
                masks if masked else [],
                H264_MAX_HEIGHT if transcoded else None,
            )
            if isinstance(made, MaskJob):
                # Being made: wait for its first bytes only (an error before them is a 503).
                await made.more(0)
        except (av.FFmpegError, OSError) as err:
            what = "privacy-masked" if masked else "H.264"
            raise Unavailable(f"cannot make the {what} copy: {err}") from err
        headers["ETag"] = made.etag
        if masked:
            headers["X-Privacy-Masks"] = str(len(masks))
        if _etag_matches(request.headers.get("if-none-match"), made.etag):
            return await not_modified()
        if isinstance(made, MaskJob):
            # Still being encoded: sent as it grows (fragmented MP4), whole and from its
            # start (no Range until it is finished and cached; then the next request has it).
            headers["Accept-Ranges"] = "none"
            progressive = {**sent, "bytes": None, "progressive": True}
            await _audit_ok(services, user.name, action, name, progressive)
            return StreamingResponse(
                _job_chunks(made), status_code=200, headers=headers, media_type="video/mp4"
            )
        copy = made
    size = copy.size if copy is not None else vf.size
    etag = headers["ETag"]
    asked = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        asked = None  # the client's copy is another file: send all of this one
    chosen = byte_range(asked, size)
    if chosen == "unsatisfiable":
        return Response(
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    if chosen is None or isinstance(chosen, str):
        first, last, status = 0, size - 1, 200
    else:
        first, last = chosen
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    length = last - first + 1
    headers["Content-Length"] = str(length)
    piece = f"{first}-{last}/{size}" if status == 206 else None
    await _audit_ok(services, user.name, action, name, {**sent, "bytes": length, "range": piece})
    body = (
        _file_chunks(copy.path, first, last)
        if copy is not None
        else stream(RangeReader(vf, first, last))
    )
    return StreamingResponse(body, status_code=status, headers=headers, media_type="video/mp4")


@router.get(
    "/api/cameras/{name}/pictures/{event_id}/snapshot.jpg",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
)
async def picture_snapshot(
    name: CameraPath, event_id: int, user: ViewerDep, services: ServicesDep
) -> Response:
    """The keyframe a picture finding (the timeline's `pictures`) was raised on, as JPEG;
    with the camera's privacy masks filled for a user who may not see behind them. 404 once
    it was purged with its footage. Audited (`picture-snapshot`)."""
    await check_camera(services, user, name)
    found = await asyncio.to_thread(services.store.pictures.get, event_id)
    if found is None or found.camera != name or found.snapshot is None:
        raise NotFound("no snapshot of this finding (purged with its footage, or none)")
    path = services.store.snapshot_file(found.snapshot)
    if path is None:
        raise NotFound("no snapshot of this finding (purged with its footage)")
    data = await asyncio.to_thread(path.read_bytes)
    masks = privacy_masks(services, name)
    masked = bool(masks) and not user.unmasked
    if masked:
        data = await asyncio.to_thread(mask_jpeg, data, masks)
    await asyncio.to_thread(
        services.store.audit.append,
        user.name,
        "picture-snapshot",
        name,
        "ok",
        {"event_id": event_id, "kind": found.kind, "masked": masked, "bytes": len(data)},
    )
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})


def privacy_masks(services: ApiServices, camera: str) -> list[PrivacyMask]:
    """The camera's privacy masks in the running config (none for a removed camera)."""
    cam = next((c for c in services.config.cameras if c.name == camera), None)
    return list(cam.privacy_masks) if cam is not None else []


async def _open_off_loop(opener: Callable[[], BinaryIO]) -> BinaryIO:
    """`opener()` on a worker thread. A viewer who leaves while the thread opens the file
    cancels only the wait: the file it opened is closed, not left to the garbage collector."""
    opening = asyncio.ensure_future(asyncio.to_thread(opener))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


async def _job_chunks(job: MaskJob) -> AsyncIterator[bytes]:
    """A masked copy's bytes from its start while it is being made: each as soon as the
    encoder wrote it, to the end of the finished copy."""
    f = await _open_off_loop(job.open)
    try:
        pos = 0
        while True:
            written, done = await job.more(pos)
            while pos < written:
                chunk = await asyncio.to_thread(
                    os.pread, f.fileno(), min(1 << 20, written - pos), pos
                )
                if not chunk:
                    raise OSError("the masked copy is shorter than written")
                pos += len(chunk)
                yield chunk
            if done:
                return
    finally:
        f.close()


async def _file_chunks(path: Path, first: int, last: int) -> AsyncIterator[bytes]:
    """Bytes [first, last] of a masked copy (opened once: a trimmed cache keeps it alive)."""
    f = await _open_off_loop(lambda: path.open("rb"))
    try:
        pos = first
        while pos <= last:
            chunk = await asyncio.to_thread(os.pread, f.fileno(), min(1 << 20, last + 1 - pos), pos)
            if not chunk:
                return
            pos += len(chunk)
            yield chunk
    finally:
        f.close()


async def _audit_ok(
    services: ApiServices, user: str, action: str, name: str, detail: dict[str, object]
) -> None:
    """One served retrieval in the audit log (R5), off the loop."""
    await asyncio.to_thread(services.store.audit.append, user, action, name, "ok", detail)


async def _head(
    services: ApiServices,
    user: str,
    action: str,
    name: str,
    rec: Recording | None,
    headers: dict[str, str],
    detail: dict[str, object],
) -> Response:
    """HEAD never builds a plan: the length is given only when the plan is cached already
    (a HEAD is a cheap probe, not a way to make the recorder do a GET's work). Audited."""
    vf = services.playback.cached(rec) if rec is not None else None
    if vf is not None:
        headers["Content-Length"] = str(vf.size)
        headers["X-Recording-Start"] = iso(vf.start_ms)
        headers["X-Recording-End"] = iso(vf.end_ms)
    await _audit_ok(
        services, user, action, name, {**detail, "bytes": 0, "method": "HEAD", "status": 200}
    )
    response = Response(status_code=200, headers=headers, media_type="video/mp4")
    if vf is None:
        del response.headers["content-length"]  # unknown until the plan is built
    return response


@router.delete(
    "/api/cameras/{name}/recordings",
    response_model=DeletedOut,
    responses=problems(400, 401, 403, 404, 409),
)
async def delete_recordings(
    name: CameraPath,
    start: TimeQuery,
    end: TimeQuery,
    user: OperatorDep,
    services: ServicesDep,
) -> DeletedOut:
    """Delete the segments lying wholly inside [start, end). Refused with 409 and the reason
    for anything inside the retention window or locked; the refusal is audited."""
    await check_camera(services, user, name)
    rng = parse_range(start, end, DELETE_MAX_HOURS)
    try:
        deleted = await asyncio.to_thread(
            services.store.delete_range, name, rng.start_ms, rng.end_ms, actor=user.name
        )
    except RetentionViolation as err:
        raise Conflict(err.reason) from err
    except StorageError as err:
        raise Unavailable(str(err)) from err
    if not deleted:
        await asyncio.to_thread(
            services.store.audit.append,
            user.name,
            "delete",
            name,
            "ok",
            {"start_ms": rng.start_ms, "end_ms": rng.end_ms, "segments": 0},
        )
    return DeletedOut(
        camera=name,
        start_ms=rng.start_ms,
        end_ms=rng.end_ms,
        segments=len(deleted),
        bytes=sum(s.bytes for s in deleted),
    )
