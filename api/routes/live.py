"""Live view: WHEP (RFC 9725) for WebRTC, `POST /api/cameras/{name}/whep` with an SDP offer
answering 201 with the SDP answer and the session's `Location` (`DELETE` on it ends the
session), and live fragmented MP4 over a WebSocket for Media Source Extensions,
`/api/cameras/{name}/live` (a JSON text message with the MIME type, then the init segment,
then one fragment per GOP; keyframe JPEGs in snapshot mode). Open to every role that may play
back, per-camera permission checked, every viewing audited (who, camera, start, end) and every
refusal too. `X-Live-Mode` says what is sent: `passthrough` (the camera's H.264 as it is),
`transcode` (an H.265 camera as reduced H.264) or `snapshot` (keyframe JPEGs). Audio: WHEP
sends the camera's audio as Opus when the offer asks (`X-Live-Audio`); the WebSocket with
`?audio=true` passes AAC through as a second fragmented MP4, each binary message then tagged
`v` or `a` (`audio_mime` in the JSON). Runs on the daemon's event loop; muxing runs on worker
threads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect

from nvr.api.auth import PLAYBACK, SESSION_COOKIE, has_role
from nvr.api.deps import (
    CameraPath,
    ServicesDep,
    UserDep,
    check_camera,
    cookie_session,
    note_user,
)
from nvr.api.errors import ApiError, BadRequest, Forbidden, NotFound, Unauthorized
from nvr.api.live.audio import AudioFeed
from nvr.api.live.fmp4 import AacMuxer, Fmp4Muxer, LiveMuxError
from nvr.api.live.hub import Viewer
from nvr.api.live.service import REVOKED, LiveBusy, LiveService, NoVideo, Watch
from nvr.api.routes import problems
from nvr.api.routes.cameras import privacy_masks
from nvr.api.services import ApiServices
from nvr.config.models import CAMERA_NAME
from nvr.ingest.tap import TapAudioFrame, TapFrame
from nvr.storage.accounts import User

log = logging.getLogger("nvr.api.live")
router = APIRouter(tags=["live"])

StreamQuery = Annotated[
    Literal["main", "sub"],
    Query(description="`sub`: the camera's `live_url` substream (the grid), if it has one"),
]
SessionPath = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class UnsupportedType(ApiError):
    status = 415


class LiveUnavailable(ApiError):
    """Past the live viewer cap or the transcode budget, or no video now; retry later."""

    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


def _live(services: ApiServices) -> LiveService:
    if services.live is None:
        raise LiveUnavailable("live view is not running")
    return services.live


async def may_watch(services: ApiServices, user: User, name: str, via: str) -> None:
    """403 (audited) unless `user` may play back camera `name`; 404 for an unknown one."""
    try:
        if not has_role(user, PLAYBACK):
            raise Forbidden(
                "live view needs the role viewer, operator or admin", code="role-forbidden"
            )
        await check_camera(services, user, name)
    except Forbidden as err:
        await asyncio.to_thread(
            services.store.audit.append,
            user.name,
            "live",
            name if CAMERA_NAME.match(name) else "?",
            "refused",
            {"reason": str(err.detail), "status": 403, "via": via},
        )
        raise


@router.post(
    "/api/cameras/{name}/whep",
    status_code=201,
    response_class=Response,
    responses={
        201: {"content": {"application/sdp": {}}, "description": "the SDP answer"},
        **problems(400, 401, 403, 404, 415, 503),
    },
)
async def whep_offer(
    name: CameraPath,
    request: Request,
    user: UserDep,
    services: ServicesDep,
    stream: StreamQuery = "main",
) -> Response:
    """WHEP (RFC 9725): send an SDP offer (`Content-Type: application/sdp`, receive-only
    video), get `201` with the SDP answer (H.264, host candidates of `[api]
    webrtc_addresses`, no trickle) and the session's URL in `Location`; `DELETE` it to stop.
    The camera's own H.264 is passed through from its latest keyframe; an H.265 camera is
    transcoded to H.264 within `[api] max_transcodes` (`X-Live-Mode: transcode`), else 503.
    Audio: when the offer has an audio section and the camera records audio (AAC or G.711),
    it is sent as Opus made from it (`X-Live-Audio: opus`), else none (`X-Live-Audio: none`).
    503 past `[api] max_live_viewers` or when the camera sends no video."""
    await may_watch(services, user, name, "webrtc")
    live = _live(services)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/sdp":
        raise UnsupportedType("send the SDP offer with Content-Type: application/sdp")
    try:
        offer = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest("the SDP offer is not UTF-8 text") from err
    if not offer.startswith("v=0") or "m=video" not in offer:
        raise BadRequest("not an SDP offer with a video section")
    masks = [] if user.unmasked else privacy_masks(services, name)
    try:
        session, sdp = await live.whep(name, stream, offer, user.name, masks)
    except (LiveBusy, NoVideo) as err:
        raise LiveUnavailable(str(err)) from err
    except ValueError as err:
        raise BadRequest(str(err)) from err
    return Response(
        sdp,
        status_code=201,
        media_type="application/sdp",
        headers={
            "Location": f"/api/cameras/{name}/whep/{session.watch.id}",
            "X-Live-Mode": session.watch.mode,
            "X-Privacy-Masks": str(len(masks)),
            "X-Live-Audio": session.watch.audio,
            "Cache-Control": "no-store",
        },
    )


@router.delete(
    "/api/cameras/{name}/whep/{session}",
    status_code=200,
    response_class=Response,
    responses=problems(401, 403, 404),
)
async def whep_end(
    name: CameraPath, session: SessionPath, user: UserDep, services: ServicesDep
) -> Response:
    """End a WHEP session (yours; an admin may end anyone's)."""
    live = _live(services)
    found = live.sessions.get(session)
    if found is None or found.watch.camera != name:
        raise NotFound("no such live session (it may have ended already)")
    if found.watch.user != user.name and user.role != "admin":
        raise Forbidden("this live session belongs to another user")
    await live.end_whep(found, f"ended by {user.name}")
    return Response(status_code=200)


# -- the MSE WebSocket ---------------------------------------------------------------------


BATCH_SECONDS = 0.5
"""Frames of a GOP longer than this are muxed (and a 1 s fragment sent) without waiting for
its end."""
AUDIO_BATCH_SECONDS = 0.25
"""MSE audio goes out in fragments of about this much (audio has no keyframes to cut at)."""
AUDIO_WAIT_SECONDS = 1.0
"""How long a new MSE viewer that asked for audio waits for the camera's first AAC frame."""
SUBPROTOCOL = "nvr-live"
"""The WebSocket subprotocol the server accepts; a browser that holds a bearer token (and
so cannot send an Authorization header on a WebSocket) offers it beside `bearer.<token>`."""


def _offered_token(websocket: WebSocket) -> str | None:
    """A bearer token from `Authorization`, or from a `bearer.<token>` subprotocol."""
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith("bearer."):
            return str(offered.removeprefix("bearer."))
    return None


async def _ws_user(websocket: WebSocket, services: ApiServices) -> User:
    """The user of a WebSocket: a bearer token, else the web pages' session cookie (its
    handshake cannot carry the CSRF header: `_same_origin` refuses other sites instead)."""
    token = _offered_token(websocket)
    if token is None and SESSION_COOKIE in websocket.cookies:
        by_cookie = await cookie_session(services, websocket)
        if by_cookie is None:
            raise Unauthorized("invalid or expired session: log in again")
        return by_cookie.user
    if not token or len(token) > 256:
        raise Unauthorized()
    session = await asyncio.to_thread(services.store.accounts.session, token)
    if session is None:
        raise Unauthorized("invalid or expired token")
    return session.user


def _same_origin(websocket: WebSocket) -> bool:
    """A browser's WebSocket from another site carries our cookies: refuse it (CSWSH)."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


async def _deny(websocket: WebSocket, err: ApiError) -> None:
    """Refuse the handshake with the HTTP status and problem (403 when the server cannot
    send a response of its own)."""
    from nvr.api.app import problem

    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            problem(err.status_code, str(err.detail), dict(err.headers or {}) or None)
        )
    else:
        await websocket.close(code=1008, reason=str(err.detail)[:120])


@router.websocket("/api/cameras/{name}/live")
async def live_socket(
    websocket: WebSocket, name: str, stream: str = "main", audio: bool = False
) -> None:
    """Live fragmented MP4 for Media Source Extensions (see the module docstring)."""
    services: ApiServices = websocket.state.services
    try:
        if stream not in ("main", "sub"):
            raise BadRequest("stream: expected main or sub")
        if not _same_origin(websocket):
            raise Forbidden("a live WebSocket from another origin")
        user = await _ws_user(websocket, services)
        note_user(websocket, user.name)  # type: ignore[arg-type]
        await may_watch(services, user, name, "mse")
        live = _live(services)
        watch = await live.begin(name, user.name, "mse", stream)  # type: ignore[arg-type]
    except ApiError as err:
        await _deny(websocket, err)
        return
    except LiveBusy as err:
        await _deny(websocket, LiveUnavailable(str(err)))
        return
    masks = [] if user.unmasked else privacy_masks(services, name)
    watch.masks = len(masks)
    try:
        viewer, mode, first = await live.open_viewer(
            name,
            stream,  # type: ignore[arg-type]
            allow_snapshot=True,
            masks=masks,
        )
    except (LiveBusy, NoVideo) as err:
        await live.finish(watch, "refused", audited=False)
        await _deny(websocket, LiveUnavailable(str(err)))
        return
    watch.mode = mode
    feed: AudioFeed | None = None
    if audio and mode != "snapshot":
        source = await live.audio_source(name, stream, ("aac",))  # type: ignore[arg-type]
        feed = AudioFeed(source) if source is not None else None
    try:
        await _stream(websocket, live, watch, viewer, mode, first, feed)
    finally:
        viewer.close()
        if feed is not None:
            feed.close()


async def _first_audio(feed: AudioFeed, first: TapFrame) -> tuple[AacMuxer, TapAudioFrame] | None:
    """The audio muxer of an MSE viewer and the camera's next AAC frame it starts at (None
    when none comes within `AUDIO_WAIT_SECONDS` or it cannot be muxed)."""
    try:
        sound = await asyncio.wait_for(feed.get(), AUDIO_WAIT_SECONDS)
    except TimeoutError:
        return None
    if sound is None:
        return None
    try:
        amux = await asyncio.to_thread(AacMuxer, sound, first.dts * first.stream.time_base)
    except LiveMuxError as err:
        log.warning("live %s: no MSE audio: %s", first.stream.codec, err)
        return None
    return amux, sound


async def _stream(
    websocket: WebSocket,
    live: LiveService,
    watch: Watch,
    viewer: Viewer,
    mode: str,
    first: TapFrame,
    feed: AudioFeed | None,
) -> None:
    reason = "closed by the viewer"
    mux: Fmp4Muxer | None = None
    amux: AacMuxer | None = None
    pending: list[TapFrame] = []
    heard: list[TapAudioFrame] = []
    getting: asyncio.Future[TapFrame | None] | None = None
    hearing: asyncio.Future[TapAudioFrame | None] | None = None
    taken = 0
    flushed = False
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(
        subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None,
        headers=[
            (b"x-live-mode", mode.encode()),
            (b"x-privacy-masks", str(watch.masks).encode()),
        ],
    )
    await live.started(watch)
    gone = asyncio.create_task(_until_closed(websocket), name=f"live-ws-{watch.camera}")
    revoked = asyncio.create_task(watch.revoked.wait(), name=f"live-revoked-{watch.camera}")
    try:
        head: dict[str, object] = {
            "camera": watch.camera,
            "stream": watch.stream,
            "mode": mode,
            "privacy_masks": watch.masks,
        }
        if mode == "snapshot":
            head["mime"] = "image/jpeg"
        else:
            muxer = await asyncio.to_thread(Fmp4Muxer, first)
            head["mime"] = muxer.mime
            mux = muxer
            if feed is not None:
                started = await _first_audio(feed, first)
                if started is not None:
                    amux, sound = started
                    heard.append(sound)
                    head["audio_mime"] = amux.mime
                else:
                    feed.close()
                    feed = None
        # With audio, each binary message says its source buffer: b"v" or b"a" first.
        video_tag = b"v" if amux is not None else b""
        await websocket.send_text(json.dumps(head))
        while True:
            if getting is None:
                getting = asyncio.ensure_future(viewer.get())
            waits: set[asyncio.Future[Any]] = {getting, gone, revoked}
            if feed is not None and amux is not None:
                if hearing is None:
                    hearing = asyncio.ensure_future(feed.get())
                waits.add(hearing)
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if revoked in done:
                reason = REVOKED
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close(code=1008, reason=REVOKED)
                break
            if gone in done:
                break
            if hearing is not None and hearing in done:
                more, hearing = hearing.result(), None
                if more is None:
                    feed = None  # the camera's audio ended: video goes on
                elif amux is not None:
                    heard.append(more)
                    span = (more.pts - heard[0].pts) * more.stream.time_base
                    if span >= AUDIO_BATCH_SECONDS:
                        sounds, heard = heard, []
                        for message in await asyncio.to_thread(amux.add_audio_many, sounds):
                            await websocket.send_bytes(b"a" + message)
                if getting not in done:
                    continue
            frame, getting = getting.result(), None
            if frame is None:
                reason = "the camera's stream ended"
                break
            if mux is None:
                messages = [frame.data]
            else:
                # The muxer puts out a fragment only when the next GOP (or second) begins:
                # hand it the frames in batches up to there, one worker-thread hop each.
                pending.append(frame)
                taken += 1
                # The viewer's first pictures (the hub's cached keyframe, or the GOP so far)
                # go out at once, not when the camera's next keyframe ends their fragment.
                first_pictures = not flushed and taken >= max(viewer.backlog, 1)
                span = (frame.dts - pending[0].dts) * frame.stream.time_base
                if not frame.keyframe and span < BATCH_SECONDS and not first_pictures:
                    continue
                batch, pending = pending, []
                messages = await asyncio.to_thread(mux.add_many, batch, first_pictures)
                flushed = flushed or first_pictures
            for message in messages:
                await websocket.send_bytes(video_tag + message if mux is not None else message)
            if watch.first_frame is None and messages:
                watch.first_frame = asyncio.get_running_loop().time()
    except LiveMuxError as err:
        reason = f"remux failed: {err}"
        log.warning("live %s: %s", watch.camera, reason)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=1011, reason=str(err)[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        reason = "connection lost"
    finally:
        gone.cancel()
        revoked.cancel()
        for waiting in (getting, hearing):
            if waiting is not None:
                waiting.cancel()
        if mux is not None:
            await asyncio.to_thread(mux.close)
        if amux is not None:
            await asyncio.to_thread(amux.close)
        await live.finish(watch, reason)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close()


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the viewer sends until it closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
