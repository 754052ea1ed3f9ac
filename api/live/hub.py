"""`LiveHub`: one camera's live packets fanned out to its live viewers (WebRTC sessions,
MSE WebSockets, a transcoder). It subscribes to the camera's packet tap (`nvr.ingest.tap`)
only while someone watches (and `LINGER_SECONDS` after), and keeps the current GOP (from the
latest keyframe) so that a new viewer starts at once, at the latest keyframe, instead of
waiting for the next one.

Cold start: a camera's hub also keeps a keyframes-only subscription for as long as it exists
(`LiveService.warm` makes one per configured camera at start), holding only the latest
keyframe. The tap builds a frame only for keyframes then (one copy of one access unit per GOP,
e.g. ~100-300 KB every 2 s for 1080p at 4 Mbit/s: a memcpy and a loop hand-over, no decode),
and memory stays at one keyframe per camera. A first viewer of a cold hub gets that keyframe at
once (a still the decoder can show), then frames from the camera's next keyframe on, never
P-frames whose references it lacks.

Threads: the tap calls `_from_recorder` on the recorder's thread (`rec-<camera>`), which only
hands the frame to the event loop (`loop.call_soon_threadsafe`). Everything else, the GOP and
the viewers' queues, lives on the daemon's event loop. A viewer's queue is bounded: a viewer
that falls behind loses frames up to the next keyframe (never the recorder's time, never the
other viewers')."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from nvr.ingest.tap import TapAudioFrame, TapFrame

log = logging.getLogger("nvr.api.live")

GOP_MAX_FRAMES = 600
"""A longer GOP is not kept (a new viewer then waits for the next keyframe)."""
GOP_MAX_BYTES = 32 << 20
KEYFRAME_MAX_AGE_S = 10.0
"""The cached keyframe is handed to a new viewer only if it reached the hub this recently (a
camera that stopped sending gives no stale still)."""
LINGER_SECONDS = 30.0
"""The tap is kept this long after the last viewer left, with the current GOP: a viewer
coming back (a grid tile scrolled into view again, a page reload) starts at once instead of
waiting for the camera's next keyframe. It costs a hand-over per frame meanwhile."""
VIEWER_QUEUE = 300
"""Frames a viewer may be behind (10 s at 30 fps) before it skips to the next keyframe."""


class PacketSource(Protocol):
    """What a hub subscribes to: a `PacketTap` (the recorder's, or a substream puller's)."""

    def subscribe(
        self, fn: Callable[[TapFrame], None], *, keyframes_only: bool = False
    ) -> Callable[[], None]: ...


@runtime_checkable
class AudioSource(Protocol):
    """A camera's audio, for live audio (`nvr.api.live.audio`): its `PacketTap`."""

    def subscribe_audio(self, fn: Callable[[TapAudioFrame], None]) -> Callable[[], None]: ...


class Viewer:
    """One consumer of a hub, on the event loop: `get()` the next frame (None: the hub
    stopped). Starts at a keyframe; after an overflow it resumes at the next keyframe."""

    def __init__(self, hub: LiveHub, keyframes_only: bool, limit: int = VIEWER_QUEUE) -> None:
        self.hub = hub
        self.keyframes_only = keyframes_only
        self._queue: asyncio.Queue[TapFrame | None] = asyncio.Queue(limit)
        self._want_key = True
        self._head: TapFrame | None = None
        self.dropped = 0
        self.closed = False
        self.backlog = 0
        """Frames of the current GOP handed over at joining (older than live)."""
        self.backlog_last_pts = 0

    def put(self, frame: TapFrame) -> None:
        if self.closed:
            return
        if self.keyframes_only and not frame.keyframe:
            return
        if self._want_key and not frame.keyframe:
            self.dropped += 1
            return
        if (
            self._head is not None
            and frame.pts <= self._head.pts
            and frame.stream is self._head.stream
        ):
            return  # already sent as the still (a hand-over racing the join)
        if self._queue.full():
            # Behind by a whole queue: skip to the next keyframe (a clean restart of the
            # picture) instead of stalling the hub or growing without bound.
            while not self._queue.empty():
                self._queue.get_nowait()
                self.dropped += 1
            self._want_key = True
            if not frame.keyframe:
                return
        self._want_key = False
        self._queue.put_nowait(frame)

    def put_still(self, frame: TapFrame) -> None:
        """The cached keyframe, first: still waiting for the next keyframe afterwards (the
        frames between the two reference pictures this viewer never got)."""
        self._head = frame
        self.backlog = 1
        self.backlog_last_pts = frame.pts

    def end(self) -> None:
        """The source is gone: `get()` returns None once the queued frames are taken."""
        if not self.closed:
            self.closed = True
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def get(self) -> TapFrame | None:
        if self._head is not None:
            head, self._head = self._head, None
            return head
        return await self._queue.get()

    async def first(self, wait_s: float) -> TapFrame | None:
        """The first frame (left in place for `get`), None if none came within `wait_s`
        seconds or the hub stopped."""
        if self._head is None:
            try:
                self._head = await asyncio.wait_for(self._queue.get(), wait_s)
            except TimeoutError:
                return None
        return self._head

    def close(self) -> None:
        """Leave the hub (idempotent)."""
        self.hub.leave(self)
        self.closed = True


@dataclass
class _Gop:
    frames: list[TapFrame]
    size: int
    complete: bool
    """False when the GOP outgrew the bounds: then no new viewer starts from it."""


class LiveHub:
    """One camera's (or one substream's) live fan-out, on the event loop."""

    def __init__(
        self,
        name: str,
        source: PacketSource,
        loop: asyncio.AbstractEventLoop,
        linger_s: float = LINGER_SECONDS,
        keep_keyframe: bool = False,
    ) -> None:
        self.name = name
        self._source = source
        self._loop = loop
        self._viewers: list[Viewer] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._gop = _Gop([], 0, False)
        self.last_arrival = 0.0
        self.frames = 0
        self.linger_s = linger_s
        self._linger: asyncio.TimerHandle | None = None
        self._latest_key: tuple[TapFrame, float] | None = None
        """The latest keyframe (with `keep_keyframe`) and when it came (monotonic), even
        while nobody watches; one tuple, replaced whole by the recorder's thread."""
        self._keyframes_off: Callable[[], None] | None = None
        if keep_keyframe:
            self._keyframes_off = source.subscribe(
                self._keyframe_from_recorder, keyframes_only=True
            )

    @property
    def keyframe(self) -> TapFrame | None:
        """The latest keyframe (with `keep_keyframe`), even while nobody watches."""
        latest = self._latest_key
        return latest[0] if latest is not None else None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def join(self, *, keyframes_only: bool = False, limit: int = VIEWER_QUEUE) -> Viewer:
        """A new viewer, fed from the latest keyframe on; subscribes to the tap when it is
        the first one."""
        viewer = Viewer(self, keyframes_only, limit)
        gop = self._gop
        if gop.complete:
            backlog = gop.frames[:1] if keyframes_only else gop.frames
            for frame in backlog:
                viewer.put(frame)
            viewer.backlog = len(backlog)
            viewer.backlog_last_pts = backlog[-1].pts if backlog else 0
        elif (latest := self._latest_key) is not None and (
            time.monotonic() - latest[1] <= KEYFRAME_MAX_AGE_S
        ):
            viewer.put_still(latest[0])
        self._viewers.append(viewer)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._unsubscribe is None:
            self._unsubscribe = self._source.subscribe(self._from_recorder)
            log.info("live %s: watching (tap subscribed)", self.name)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)
        if not self._viewers and self._unsubscribe is not None and self._linger is None:
            self._linger = self._loop.call_later(self.linger_s, self._release)

    def _release(self) -> None:
        self._linger = None
        if not self._viewers and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
            self._gop = _Gop([], 0, False)
            log.info("live %s: nobody watching (tap released)", self.name)

    def close(self) -> None:
        """End every viewer and release the tap (the API is stopping)."""
        for viewer in list(self._viewers):
            viewer.end()
            self.leave(viewer)
        self._release()
        if self._keyframes_off is not None:
            self._keyframes_off()
            self._keyframes_off = None
        self._latest_key = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _from_recorder(self, frame: TapFrame) -> None:
        """On the recorder's thread: hand over only."""
        try:
            self._loop.call_soon_threadsafe(self._on_frame, frame)
        except RuntimeError:  # the loop is closed: the API has stopped
            pass

    def _keyframe_from_recorder(self, frame: TapFrame) -> None:
        """On the recorder's thread: keep it (one reference replaced whole, which the loop
        reads in `join`). Not handed to the loop: a wake-up of the event loop per keyframe
        and camera, with nobody watching, was most of what a warm hub cost."""
        self._latest_key = (frame, time.monotonic())

    def _on_frame(self, frame: TapFrame) -> None:
        self.frames += 1
        self.last_arrival = frame.arrival
        gop = self._gop
        if frame.keyframe:
            self._gop = gop = _Gop([frame], len(frame.data), True)
        elif gop.complete:
            gop.size += len(frame.data)
            gop.frames.append(frame)
            if len(gop.frames) > GOP_MAX_FRAMES or gop.size > GOP_MAX_BYTES:
                self._gop = _Gop([], 0, False)
        for viewer in self._viewers:
            viewer.put(frame)


class LiveHubs:
    """The hubs by name (a camera, or `<camera>~sub` for its substream), made on first use;
    on the event loop."""

    def __init__(self) -> None:
        self._hubs: dict[str, LiveHub] = {}

    def hub(
        self,
        name: str,
        source: Callable[[], PacketSource],
        linger_s: float = LINGER_SECONDS,
        keep_keyframe: bool = False,
    ) -> LiveHub:
        found = self._hubs.get(name)
        if found is None:
            loop = asyncio.get_running_loop()
            found = self._hubs[name] = LiveHub(name, source(), loop, linger_s, keep_keyframe)
        return found

    def close(self) -> None:
        for hub in self._hubs.values():
            hub.close()
        self._hubs.clear()
