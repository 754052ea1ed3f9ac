"""`LiveService`: live view for the API. It admits viewers (at most `[api] max_live_viewers`
at once), picks how a camera is shown (H.264 passed through; an H.265 camera through an
on-demand H.264 transcode within `[api] max_transcodes`, else keyframe snapshots), keeps the
WHEP sessions (`POST /api/cameras/{name}/whep`), ends them when the peer connection fails or
closes, and audits every live viewing (who, camera, start, end). Runs on the daemon's event
loop; the audit log is written through `asyncio.to_thread`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from nvr.api.live.hub import AudioSource, LiveHub, LiveHubs, PacketSource, Viewer
from nvr.api.live.transcode import SnapshotSource, TranscodeSource
from nvr.api.masking import masks_key
from nvr.config import NvrConfig
from nvr.config.models import ApiConfig, PrivacyMask
from nvr.ingest.tap import TapFrame
from nvr.storage import SegmentStore

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from nvr.api.live.webrtc import OpusTrack, PassthroughTrack

log = logging.getLogger("nvr.api.live")

Mode = Literal["passthrough", "transcode", "snapshot"]
StreamName = Literal["main", "sub"]
TapProvider = Callable[[str], PacketSource]
"""A camera's packet tap (`Supervisor.tap`)."""
SubstreamProvider = Callable[[str], PacketSource | None]
"""A camera's substream (`live_url`) as a packet source, None when it has none."""

REVOKED = "permission withdrawn"
"""The end reason of a live viewing whose user may no longer watch the camera."""
FIRST_FRAME_SECONDS = 5.0
"""How long a new viewer waits for the camera's first keyframe before 503."""
CONNECT_SECONDS = 30.0
"""A WHEP session whose peer never connects is ended after this."""


class LiveBusy(Exception):
    """Past `[api] max_live_viewers`."""


class NoVideo(Exception):
    """The camera sends no video now (not recording, or no live source)."""


@dataclass
class Watch:
    """One live viewing, for the audit log and the viewer cap."""

    id: str
    camera: str
    user: str
    via: Literal["webrtc", "mse"]
    stream: StreamName
    started_ms: int
    started: float
    mode: Mode = "passthrough"
    first_frame: float | None = None
    """Monotonic time the first frame went out (time-to-first-frame)."""
    masks: int = 0
    """Privacy masks filled in what this viewer sees (R10)."""
    audio: Literal["opus", "none"] = "none"
    """WebRTC: the camera's audio sent as Opus, or no audio (the camera records none, the
    offer asked for none, or the substream)."""
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the user may no longer watch this camera: the viewing ends (`revoke`)."""


@dataclass
class WhepSession:
    watch: Watch
    pc: RTCPeerConnection
    track: PassthroughTrack
    audio: OpusTrack | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class LiveService:
    """See the module docstring."""

    def __init__(
        self,
        config: NvrConfig,
        settings: ApiConfig,
        store: SegmentStore,
        taps: TapProvider | None,
        substreams: SubstreamProvider | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self._store = store
        self._taps = taps
        self._substreams = substreams
        self.hubs = LiveHubs()
        self.watches: dict[str, Watch] = {}
        self.sessions: dict[str, WhepSession] = {}
        self._transcodes: dict[str, TranscodeSource] = {}

    # -- sources --------------------------------------------------------------------------

    def _hub(self, camera: str, stream: StreamName) -> LiveHub:
        taps = self._taps
        if taps is None:
            raise NoVideo("live view needs the recording daemon (this API runs without it)")
        if stream == "sub":
            subs = self._substreams
            source = subs(camera) if subs is not None else None
            if source is not None:
                return self.hubs.hub(f"{camera}~sub", lambda: source)
        return self.hubs.hub(camera, lambda: taps(camera), keep_keyframe=True)

    def warm(self, cameras: Iterable[str]) -> None:
        """On the event loop, at start: each camera's hub keeps its latest keyframe from now
        on (see `nvr.api.live.hub`), so a first viewer gets a picture at once."""
        if self._taps is None:
            return
        for camera in cameras:
            self._hub(camera, "main")

    def _transcode_hub(
        self, camera: str, stream: StreamName, main: LiveHub, masks: Sequence[PrivacyMask]
    ) -> LiveHub | None:
        """The camera's H.264 transcode hub (masked: one per set of masks): shared by its
        viewers; a new one only within the budget (None past it)."""
        name = f"{camera}~{stream}~h264" + (f"~masked-{masks_key(masks)}" if masks else "")
        running = self._transcodes.get(name)
        if running is None or not running.active:
            busy = sum(1 for t in self._transcodes.values() if t.active)
            if busy >= self.settings.max_transcodes:
                return None
            running = self._transcodes[name] = TranscodeSource(name, main, masks)
        source = running
        return self.hubs.hub(name, lambda: source, linger_s=0.0)  # frees the budget at once

    async def open_viewer(
        self,
        camera: str,
        stream: StreamName,
        *,
        allow_snapshot: bool,
        masks: Sequence[PrivacyMask] = (),
    ) -> tuple[Viewer, Mode, TapFrame]:
        """A viewer of `camera` starting at a keyframe, the mode it shows, and that first
        frame. With `masks` (a user who may not see behind the camera's privacy masks) the
        picture is always a masked transcode (or masked snapshots), never the original.
        Raises NoVideo when nothing comes within `FIRST_FRAME_SECONDS`, LiveBusy past the
        transcode budget when snapshots are not allowed."""
        hub = self._hub(camera, stream)
        viewer = hub.join()
        first = await viewer.first(FIRST_FRAME_SECONDS)
        if first is None:
            viewer.close()
            raise NoVideo(f"camera {camera} sends no video now")
        if first.stream.codec == "h264" and not masks:
            return viewer, "passthrough", first
        probe = viewer  # left only after the next viewer joined: the hub keeps its GOP
        try:
            return await self._transcoded(camera, stream, hub, allow_snapshot, masks)
        finally:
            probe.close()

    async def _transcoded(
        self,
        camera: str,
        stream: StreamName,
        hub: LiveHub,
        allow_snapshot: bool,
        masks: Sequence[PrivacyMask],
    ) -> tuple[Viewer, Mode, TapFrame]:
        transcoded = self._transcode_hub(camera, stream, hub, masks)
        if transcoded is not None:
            viewer = transcoded.join()
            first = await viewer.first(FIRST_FRAME_SECONDS * 2)
            if first is not None:
                return viewer, "transcode", first
            viewer.close()
            raise NoVideo(f"camera {camera}: the H.264 transcode produced no picture")
        if not allow_snapshot:
            why = "has privacy masks" if masks else "is H.265, which browsers cannot decode,"
            raise LiveBusy(
                f"camera {camera} {why} and all {self.settings.max_transcodes} live "
                "transcodes are in use: use the MSE live view (keyframe snapshots) or try "
                "again later"
            )
        name = f"{camera}~{stream}~jpeg" + (f"~masked-{masks_key(masks)}" if masks else "")
        snap = self.hubs.hub(name, lambda: SnapshotSource(hub, masks), 0.0)
        viewer = snap.join()
        first = await viewer.first(FIRST_FRAME_SECONDS * 2)
        if first is None:
            viewer.close()
            raise NoVideo(f"camera {camera} sends no keyframe now")
        return viewer, "snapshot", first

    # -- admission and audit --------------------------------------------------------------

    def admit(self) -> None:
        if len(self.watches) >= self.settings.max_live_viewers:
            raise LiveBusy(
                f"{self.settings.max_live_viewers} live viewers already watching (the limit "
                "[api] max_live_viewers); close a live view or try again later"
            )

    async def begin(
        self, camera: str, user: str, via: Literal["webrtc", "mse"], stream: StreamName
    ) -> Watch:
        """Register (and count) a live viewing; audited when it starts showing (`started`)."""
        self.admit()
        watch = Watch(
            secrets.token_urlsafe(16),
            camera,
            user,
            via,
            stream,
            self._store.now(),
            time.monotonic(),
        )
        self.watches[watch.id] = watch
        return watch

    async def started(self, watch: Watch) -> None:
        await asyncio.to_thread(
            self._store.audit.append,
            watch.user,
            "live",
            watch.camera,
            "ok",
            {
                "session": watch.id,
                "via": watch.via,
                "mode": watch.mode,
                "stream": watch.stream,
                "start_ms": watch.started_ms,
                "privacy_masks": watch.masks,
                "audio": watch.audio,
            },
        )

    async def finish(self, watch: Watch, reason: str, audited: bool = True) -> None:
        """The viewing ended: uncounted, and audited with its start and end."""
        if self.watches.pop(watch.id, None) is None:
            return
        if not audited:
            return
        end = self._store.now()
        await asyncio.to_thread(
            self._store.audit.append,
            watch.user,
            "live-end",
            watch.camera,
            "ok",
            {
                "session": watch.id,
                "via": watch.via,
                "mode": watch.mode,
                "stream": watch.stream,
                "start_ms": watch.started_ms,
                "end_ms": end,
                "reason": reason,
            },
        )
        log.info(
            "live %s: %s by %s ended after %.0f s (%s)",
            watch.camera,
            watch.via,
            watch.user,
            (end - watch.started_ms) / 1000,
            reason,
        )

    # -- WHEP -----------------------------------------------------------------------------

    async def whep(
        self,
        camera: str,
        stream: StreamName,
        offer_sdp: str,
        user: str,
        masks: Sequence[PrivacyMask] = (),
    ) -> tuple[WhepSession, str]:
        """A WHEP session of `camera` for `user` (who sees `masks` filled) and its SDP
        answer. Raises LiveBusy, NoVideo, or ValueError for an offer that cannot be
        answered."""
        watch = await self.begin(camera, user, "webrtc", stream)
        watch.masks = len(masks)
        try:
            viewer, mode, _first = await self.open_viewer(
                camera, stream, allow_snapshot=False, masks=masks
            )
        except BaseException:
            await self.finish(watch, "refused", audited=False)
            raise
        watch.mode = mode

        def sent(frame: TapFrame) -> None:
            if watch.first_frame is None:
                watch.first_frame = time.monotonic()

        # aiortc (and its crypto, SCTP and ICE stacks, ~15 MiB) loads on the first WHEP offer,
        # not in every recorder that never serves one (issue 12's memory budget); on a worker
        # thread, so the half second it takes does not hold the loop (and the watchdog).
        if "nvr.api.live.webrtc" not in sys.modules:
            await asyncio.to_thread(importlib.import_module, "nvr.api.live.webrtc")
        from nvr.api.live.audio import AudioFeed
        from nvr.api.live.webrtc import OpusTrack, PassthroughTrack, answer

        track = PassthroughTrack(viewer, sent)
        sound: OpusTrack | None = None
        try:
            asks = "m=audio" in offer_sdp
            audio_source = await self.audio_source(camera, stream) if asks else None
            if audio_source is not None:
                sound = OpusTrack(AudioFeed(audio_source))
                watch.audio = "opus"
            pc, sdp = await answer(offer_sdp, track, self.settings.webrtc_addresses, sound)
        except BaseException:
            viewer.close()
            if sound is not None:
                sound.stop()
            await self.finish(watch, "refused", audited=False)
            raise
        session = WhepSession(watch, pc, track, sound)
        self.sessions[watch.id] = session
        await self.started(watch)

        @pc.on("connectionstatechange")
        async def changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end_whep(session, f"peer connection {pc.connectionState}")

        @track.on("ended")
        def track_ended() -> None:
            if not session.ended.is_set():
                reason = (
                    "the camera's stream ended"
                    if track.source_ended
                    else "peer connection closed (media could not be sent)"
                )
                self._spawn(session, self.end_whep(session, reason))

        self._spawn(session, self._connect_guard(session))
        return session, sdp

    async def audio_source(
        self, camera: str, stream: StreamName, codecs: tuple[str, ...] = ()
    ) -> AudioSource | None:
        """The camera's tap for its audio when the camera records some (its latest segment
        has audio; of one of `codecs` if given); None otherwise (the substream, which is
        never recorded, has none either)."""
        taps = self._taps
        if stream != "main" or taps is None:
            return None
        tap = taps(camera)
        if not isinstance(tap, AudioSource):
            return None
        last = await asyncio.to_thread(self._store.last_segment, camera)
        if last is None or last.audio_codec is None:
            return None
        if codecs and last.audio_codec not in codecs:
            return None
        return tap

    def _spawn(self, session: WhepSession, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(
            coro,  # type: ignore[arg-type]
            name=f"whep-{session.watch.camera}",
        )
        session.tasks.append(task)

    async def _connect_guard(self, session: WhepSession) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.ended.wait(), CONNECT_SECONDS)
            return
        if session.pc.connectionState != "connected":
            await self.end_whep(session, f"no connection within {CONNECT_SECONDS:.0f} s")

    async def end_whep(self, session: WhepSession, reason: str) -> None:
        """End a WHEP session (idempotent): close the peer connection, leave the hub."""
        if session.ended.is_set():
            return
        session.ended.set()
        self.sessions.pop(session.watch.id, None)
        session.track.stop()
        if session.audio is not None:
            session.audio.stop()
        await session.pc.close()
        await self.finish(session.watch, reason)

    async def revoke(self, user: str, may_watch: Callable[[str], bool]) -> int:
        """End the live viewings of `user` on the cameras `may_watch` no longer allows (an
        admin changed the user's cameras or role, or disabled it): WHEP sessions are closed
        here, MSE sockets see `Watch.revoked` and close. Audited as ended with the reason
        `permission withdrawn`. Returns how many were ended."""
        ended = 0
        for watch in list(self.watches.values()):
            if watch.user != user or may_watch(watch.camera):
                continue
            ended += 1
            watch.revoked.set()
            session = self.sessions.get(watch.id)
            if session is not None:
                await self.end_whep(session, REVOKED)
        return ended

    async def close(self) -> None:
        """The API is stopping: end every session and release the taps."""
        sessions = list(self.sessions.values())
        for session in sessions:
            await self.end_whep(session, "server stopping")
        current = asyncio.current_task()
        for session in sessions:
            for task in session.tasks:
                if task is not current:
                    task.cancel()
        self.hubs.close()
        for source in self._transcodes.values():
            source.stop()
