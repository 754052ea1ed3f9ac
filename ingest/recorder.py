"""`CameraRecorder`: one camera, one thread, recording forever.

The thread (`rec-<camera>`) connects through a `StreamOpener`, remuxes packets (never decodes)
into segments via the `SegmentStore`, cuts at the first keyframe at or after
`segment_seconds` (the first segment after a connect is shortened by a per-camera phase so
cameras do not all rotate at once), and on any failure writes the outage ledger, backs off
(0.5 s doubling to 10 s, reset after a stable minute) and tries again, never giving up. While
waiting after a refused connection it probes the camera's port every 0.5 s so recording
resumes as soon as the camera is back.

Other threads read `status()` (a snapshot under a lock); the supervisor on the event loop
polls it and watches `last_progress` (monotonic seconds) for hung threads. A hung thread cannot
be killed: the supervisor `abandon()`s it (a fence taken under the same lock as every store
write, so once it is up the thread never writes to the store again, whatever it does when it
wakes) and starts a new recorder for the camera. The abandoned thread closes its own in-flight
`.part` file, if any, leaves it in `leftover_part` for the supervisor to salvage, and ends.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from nvr.ingest import progress
from nvr.ingest.errors import StreamError, StreamStalled, UnsupportedStream
from nvr.ingest.failures import FailureLog
from nvr.ingest.rtsp_source import KEYFRAME_WAIT_SECONDS
from nvr.ingest.sources import Source, StreamOpener
from nvr.ingest.status import RecorderStatus
from nvr.ingest.tap import (
    PacketTap,
    TapAudioFrame,
    TapAudioStream,
    TapFrame,
    TapStream,
    tap_stream,
)
from nvr.ingest.timecheck.steps import CLOCK_STEP, ClockStep, ClockStepDetector
from nvr.ingest.timeline import Stamped, StreamTimeline
from nvr.storage import (
    IndexCorruptError,
    IndexFullError,
    IndexWriteError,
    PacketRejected,
    Segment,
    SegmentInfo,
    SegmentStore,
    SegmentWriter,
    StorageError,
    StorageFullError,
    StorageIOError,
    container_format,
)
from nvr.storage.clock import TOLERANCE_MS
from nvr.storage.timestamps import now_ms


class Clock(Protocol):
    """Wall and monotonic time, and waiting on it; injectable for tests (a simulated clock
    makes a recorder's back-off and pauses take no real time)."""

    def wall_ms(self) -> int: ...

    def monotonic(self) -> float: ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds` or until `stop` is set; whether it is set."""
        ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)  # the builtin itself: read for every packet

    def wall_ms(self) -> int:
        return now_ms()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)


class Backoff:
    """0.5 s doubling to a 10 s cap; back to 0.5 s after a connection stable for a minute."""

    def __init__(self, initial: float = 0.5, cap: float = 10.0, stable_after: float = 60.0) -> None:
        self.initial = initial
        self.cap = cap
        self.stable_after = stable_after
        self._next = initial

    def failure(self, connected_for: float) -> float:
        """The wait before the next try, given how long the last connection recorded."""
        if connected_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay


@dataclass
class _LedgerDue:
    """An outage-ledger write the index could not take yet: open a new outage from
    `start_ms` (`outage` None), or (re)open `outage` with this cause."""

    outage: int | None
    start_ms: int
    cause: str
    detail: str


RESUME_MARGIN_BYTES = 4 * 1024 * 1024
"""After the disk filled, recording resumes once this much more than the reserve is free."""

STORAGE_RETRY_SECONDS = 1.0
"""While recording is paused for storage (a full disk, an index that cannot be written),
room is checked this often: recording resumes within this long of room returning."""

TICK_SECONDS = 0.5
"""How often the recording loop looks at what need not be checked per packet: stop, a step
of the wall clock (a step > 1 s is what matters), free space, a settled start."""

SETTLE_MIN_MS = 20
"""A settled start closer than this to the provisional one keeps the file's name."""

SETTLE_SECONDS = 2.0
"""A segment named after the arrival of its first keyframe (the first of a connection, or
after a cut) is renamed to its settled start this long after it began: by then FFmpeg has
handed over the packets it buffered while probing the stream, and promptly arriving packets
pin the start estimate. A crash after that salvages the file with the right start."""

REANCHOR_MS = 1000
"""Within a connection, re-anchor a segment to the server clock when the media timeline
lags it by more than this (a camera clock slower than the server's)."""


PROBED_CAUSES = frozenset(
    {"unreachable", "stream-ended", "connect-timeout", "stalled", "stream-error"}
)
"""Outage causes after which the back-off probes the camera to resume as soon as it answers
(not after a rejected login or an unsupported stream: those do not heal by waiting)."""

PROBE_INTERVAL_SECONDS = 0.5

RECORDED_A_WHILE_SECONDS = 10.0
"""A connection that lasted this long was not a tight failure loop: a camera answering the
probe right after it may be reconnected at once."""

AUDIO_FRAME_TICKS = 1024
"""The nominal audio frame (AAC's) for the audio timeline: a step back of this many ticks or
more is a jump (a cut), less is nudged forward."""
AUDIO_ANCHOR_SECONDS = 1.0
"""A segment's first audio packet further than this from the video's position is placed at
the video's position (audio timestamps inconsistent with the video's), never squeezed."""


class RecorderAbandoned(BaseException):
    """Raised on a replaced recorder's thread at its next store write; unwinds the thread.

    A BaseException so that no `except Exception` / `except StorageError` of the recording
    loop can take it for an ordinary failure and retry."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _fenced(
    method: Callable[Concatenate[CameraRecorder, _P], _R],
) -> Callable[Concatenate[CameraRecorder, _P], _R]:
    """Run a store-writing method under the recorder's fence (see `CameraRecorder.abandon`).
    A `_Segmenting` first argument is the segment in flight, closed if the fence is up."""

    @functools.wraps(method)
    def fenced(self: CameraRecorder, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        seg = args[0] if args and isinstance(args[0], _Segmenting) else None
        with self._fence_for(seg):
            return method(self, *args, **kwargs)

    return fenced


def stagger_phase(camera: str, segment_seconds: float) -> float:
    """Seconds to shorten a camera's first segment by, spread over half a segment."""
    return (zlib.crc32(camera.encode()) % 1000) / 1000 * segment_seconds / 2


class _Segmenting:
    """The segment being written and its bookkeeping.

    Its wall-clock start is decided when it is indexed: the earliest of (arrival time minus
    media offset) over its packets. Packets that arrive in a burst (FFmpeg hands over what it
    buffered while probing the stream) only raise that value, so the minimum is pinned by
    the packets that arrived promptly. Arrivals are read on the monotonic clock (once per
    packet anyway) and turned into wall time with the offset between the two clocks when the
    segment began, so a wall clock step inside a segment does not move its start. Within one
    connection segments are chained (start = previous end) unless that estimate disagrees by
    more than `REANCHOR_MS`.
    """

    def __init__(
        self,
        writer: SegmentWriter,
        first_dts: int,
        audio_first: int,
        arrival_ms: int,
        arrival_mono: float,
        time_base: Fraction,
        name_ms: int,
        template: VideoStream | None,
    ) -> None:
        self.writer = writer
        self.template = template
        """The video template the file's sample entry came from (its codec and size); None
        for an audio-only camera, whose segments are timed by their audio."""
        self.video_out = writer.video
        self.mux = writer.mux
        self.began = arrival_mono
        self.mono_est = arrival_mono
        self.wall_offset_ms = arrival_ms - arrival_mono * 1000
        self.tb_s = float(time_base)
        self.name_ms = name_ms
        """The start in the `.part` file's name (what a salvage would index)."""
        self.settled = False
        self.chained_from: int | None = None
        self.first_dts = first_dts
        self.audio_first = audio_first
        self.last_video_dts = first_dts
        self.last_video_dur = 0
        self.last_audio_dts: int | None = None
        self.frames = 0
        self.discontinuity = False
        self.closed = False
        """Committed, held by the store for the index, or abandoned: nothing more to do."""
        self.atb_s = 0.0
        """Seconds per tick of the source's audio time base (0: no audio)."""
        self.tap: PacketTap | None = None
        self.tap_stream: TapStream | None = None
        """Where live consumers get this segment's video packets (`nvr.ingest.tap`)."""
        self.tap_audio: TapAudioStream | None = None
        """This segment's audio on the tap (None: no audio stored, or no tap)."""
        self.audio_origin = audio_first
        """The segment's first video dts in audio ticks: a written audio packet's position
        plus this is its time on the tap's (video dts) timeline."""

    @property
    def wall_est(self) -> int:
        return round(self.mono_est * 1000 + self.wall_offset_ms)

    def write_video(
        self, packet: av.Packet[Any], dts: int, pts: int, duration: int, now: float
    ) -> None:
        """Mux one video packet stamped on the clean timeline; `now` is its arrival
        (monotonic). Runs for every frame: keep it lean."""
        tap = self.tap
        if tap is not None and tap.wanted and self.tap_stream is not None:
            keyframe = packet.is_keyframe
            if tap.wants(keyframe):
                tap.publish(
                    TapFrame(self.tap_stream, bytes(packet), keyframe, pts, dts, duration, now)
                )
        rel = dts - self.first_dts
        packet.stream = self.video_out  # sources deliver packets in their stream's time base
        packet.dts = rel
        packet.pts = pts - self.first_dts
        packet.duration = duration
        self.mux(packet)
        self.last_video_dts = dts
        self.last_video_dur = duration
        self.frames += 1
        est = now - rel * self.tb_s
        if est < self.mono_est:
            self.mono_est = est

    def write_audio_only(self, packet: av.Packet[Any], st: Stamped, now: float) -> None:
        """Mux one packet of an audio-only camera (the segment's only stream, its time base
        the segment's)."""
        rel = st.dts - self.first_dts
        tap = self.tap
        if tap is not None and tap.audio_wanted and self.tap_audio is not None:
            tap.publish_audio(
                TapAudioFrame(self.tap_audio, bytes(packet), st.pts, st.duration, now)
            )
        packet.stream = self.writer.audio
        packet.dts = rel
        packet.pts = rel + max(0, st.pts - st.dts)
        packet.duration = st.duration
        self.mux(packet)
        self.last_video_dts = st.dts
        self.last_video_dur = st.duration
        est = now - rel * self.tb_s
        if est < self.mono_est:
            self.mono_est = est


class CameraRecorder:
    """Records one camera on its own thread until `stop()`."""

    def __init__(
        self,
        camera: str,
        opener: StreamOpener,
        store: SegmentStore,
        *,
        segment_seconds: int,
        reserve_bytes: int = 0,
        stall_seconds: float = 4.0,
        keyframe_wait_seconds: float = KEYFRAME_WAIT_SECONDS,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        on_segment: Callable[[Segment], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        tap: PacketTap | None = None,
    ) -> None:
        self.camera = camera
        self._tap = tap
        """Video packets out to live view and picture checks (`nvr.ingest.tap`)."""
        self.log = logging.getLogger(f"nvr.camera.{camera}")
        self._opener = opener
        self._store = store
        self._segment_seconds = segment_seconds
        self._reserve = reserve_bytes
        self._stall_seconds = stall_seconds
        self._keyframe_wait = keyframe_wait_seconds
        self._audio_note = ""
        """The last reason given for recording without the camera's audio (logged once)."""
        self._audio_reanchored = False
        self._clock = clock or SystemClock()
        self._failures = FailureLog(self.log, camera, self._clock.monotonic)
        self._backoff = backoff or Backoff()
        self._on_segment = on_segment
        self._on_event = on_event
        """Alerts out (`nvr.events`): called on this thread with (kind, data) when the state
        changes or an outage begins or ends; it only queues, never blocks."""
        self._outage_told: tuple[int | None, str] | None = None
        """(start, cause) of the outage last told to `on_event`, while it is open."""
        self._stop = threading.Event()
        self._stop_why = ("daemon-stopped", "recorder stopped")
        self._lock = threading.Lock()
        self._status = RecorderStatus(
            camera,
            "starting",
            self._clock.wall_ms(),
            "",
            None,
            0,
            0,
            0,
            self._clock.monotonic(),
            False,
        )
        self._outage_id: int | None = None
        self._fix_outage: int | None = None
        self._due: _LedgerDue | None = None
        """A ledger write waiting for the index (see `_catch_up`)."""
        self._fix_due: tuple[int, int] | None = None
        """(outage, end): the end of an outage waiting for the index."""
        self._index_error: IndexWriteError | None = None
        """The last index write failure while the index is behind, else None."""
        self._last_progress = self._clock.monotonic()
        self._in_backoff = False
        self._last_end_ms: int | None = None
        self._last_end_mono: float | None = None
        """When the last footage ended on this recorder's monotonic clock (taken over from
        the store's evidence time at start): how much real time a gap after it lasted, when
        the wall clock cannot say (see `_placed`)."""
        self._restarted = False
        """Footage from before this recorder started, with evidence of when it ended."""
        self._real_resume_ms: int | None = None
        """After a start: where the open outage really ended by the monotonic clock (the
        last footage's end plus the real time since), for the first footage (see
        `_outage_end`)."""
        self._step_due: tuple[int, int] | None = None
        """(start, end) of a `clock-step` row waiting for the index (see `_outage_end`)."""
        self._steps = ClockStepDetector()  # server clock steps, checked at every packet
        self._fence = threading.RLock()
        self._abandoned = False
        self.leftover_part: Path | None = None
        """The in-flight `.part` an abandoned thread closed (never indexed by it)."""
        self.thread = threading.Thread(target=self._main, name=f"rec-{camera}", daemon=True)

    # --- control, from any thread -----------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self, cause: str = "daemon-stopped", detail: str = "recorder stopped") -> None:
        """Finish the segment in flight and end the thread; the gap from then on goes into
        the ledger with `cause` (the daemon stopping, or a reload taking the camera away)."""
        self._stop_why = (cause, detail)
        self._stop.set()

    def abandon(self, timeout: float) -> bool:
        """Fence this recorder off for good and ask its thread to end. Once this returns True
        the thread makes no further store write (index row, ledger entry, new file), so a
        replacement can take over the camera. False if the thread is inside a store write
        and did not leave it within `timeout`: then it cannot be replaced safely."""
        if not self._fence.acquire(timeout=timeout):
            return False
        try:
            self._abandoned = True
        finally:
            self._fence.release()
        self._stop.set()
        return True

    @contextlib.contextmanager
    def _fence_for(self, seg: _Segmenting | None = None) -> Iterator[None]:
        """Hold the fence for one store write; raise `RecorderAbandoned` once it is up,
        after closing the in-flight segment's file (`seg`) for the supervisor to salvage."""
        with self._fence:
            if self._abandoned:
                if seg is not None:
                    seg.writer.abandon()
                    self.leftover_part = seg.writer.temp_path
                raise RecorderAbandoned(self.camera)
            yield

    def status(self) -> RecorderStatus:
        with self._lock:
            return replace(
                self._status, last_progress=self._last_progress, in_backoff=self._in_backoff
            )

    def _set(self, **changes: object) -> None:
        previous: str | None = None
        with self._lock:
            if "state" in changes and changes["state"] != self._status.state:
                changes.setdefault("since_ms", self._clock.wall_ms())
                previous = self._status.state
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]
            status = self._status
        if previous is not None and self._on_event is not None:
            self._tell(
                "camera-state",
                {
                    "state": status.state,
                    "previous": previous,
                    "detail": status.detail,
                    "since_ms": status.since_ms,
                },
            )

    def _tell(self, kind: str, data: dict[str, Any]) -> None:
        """Hand an event to `on_event`; its failure (a bug) never touches recording."""
        if self._on_event is None:
            return
        try:
            self._on_event(kind, data)
        except Exception:
            self.log.exception("camera %s: event %s not queued", self.camera, kind)

    def _tell_outage(self, start_ms: int | None, cause: str, detail: str) -> None:
        """An outage began (or its cause changed): told once per (start, cause)."""
        if self._outage_told == (start_ms, cause):
            return
        phase = "began" if self._outage_told is None else "cause-changed"
        self._outage_told = (start_ms, cause)
        self._tell(
            "camera-outage",
            {"phase": phase, "cause": cause, "detail": detail, "start_ms": start_ms},
        )

    def _tell_outage_ended(self, end_ms: int) -> None:
        told, self._outage_told = self._outage_told, None
        start = told[0] if told is not None else None
        self._tell(
            "camera-outage",
            {
                "phase": "ended",
                "cause": told[1] if told is not None else None,
                "start_ms": start,
                "end_ms": end_ms,
                "seconds": (end_ms - start) / 1000 if start is not None else None,
            },
        )

    def _progress(self, in_backoff: bool = False) -> None:
        # Plain attribute stores (atomic in CPython): this runs for every packet.
        self._in_backoff = in_backoff
        self._last_progress = self._clock.monotonic()

    # --- the thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        progress.bind(self._progress)  # deliberate waits inside a source count as progress
        try:
            self._run()
        except RecorderAbandoned:
            self.log.warning(
                "camera %s: replaced recorder thread woke up and ended without writing",
                self.camera,
            )
            self._set(state="abandoned")

    def _run(self) -> None:
        if not self._adopt_ledger_when_readable():
            self._set(state="stopped", detail="")
            return
        first_connect = True
        while not self._stop.is_set():
            if self._index_behind():
                self._pause_for_storage()  # the ledger of the start could not be written
                continue
            self._set(state="connecting" if first_connect else "reconnecting")
            started = self._clock.monotonic()
            try:
                self._session(first_connect)
                cause, detail = "stream-ended", "camera ended the stream"
            except StreamError as err:
                cause, detail = err.cause, str(err)
            except StorageFullError as err:
                cause, detail = "storage-full", str(err)
            except IndexCorruptError as err:
                cause, detail = "index-damaged", str(err)
            except StorageError as err:
                cause, detail = "storage-error", str(err)
            except Exception as err:
                # A bug must not end recording forever (R1): log it whole, then retry.
                self.log.exception("camera %s: unexpected error in recorder", self.camera)
                cause, detail = "internal-error", f"{type(err).__name__}: {err}"
            if self._stop.is_set():
                break
            first_connect = False
            self._note_outage(cause, detail)
            state = {
                "stalled": "stalled",
                "storage-full": "storage-full",
                "storage-error": "storage-error",
                "index-damaged": "index-damaged",
                "config": "config-error",
            }.get(cause, "reconnecting")
            self._set(state=state, detail=detail, reconnects=self._status.reconnects + 1)
            self._failures.failed(cause, detail)
            if cause == "storage-full" or self._index_behind():
                self._pause_for_storage()
            else:
                self._wait_backoff(self._clock.monotonic() - started, cause)
        try:
            self._shutdown_ledger()
        except IndexWriteError as err:
            self.log.error(
                "camera %s: cannot write the outage ledger at stop (%s); the next start "
                "opens a not-running outage from the last footage",
                self.camera,
                err,
            )
        self._set(state="stopped", detail="")

    def _adopt_ledger_when_readable(self) -> bool:
        """`_adopt_ledger`, retried each second while the index cannot be read or written
        (a damaged or full index: the state says why, the thread never dies of it). False
        if stopped first."""
        while not self._stop.is_set():
            self._progress(in_backoff=True)
            try:
                self._adopt_ledger()
                return True
            except IndexWriteError as err:
                self._index_trouble(err)
            self._clock.wait(self._stop, STORAGE_RETRY_SECONDS)
        return False

    def _index_trouble(self, err: IndexWriteError) -> None:
        """Say (state, and the log once) that the index is in the way of recording."""
        if self._index_error is None or type(self._index_error) is not type(err):
            self.log.error(
                "camera %s: %s; recording paused, retrying every second", self.camera, err
            )
        self._index_error = err
        if isinstance(err, IndexCorruptError):
            state = "index-damaged"
        elif isinstance(err, IndexFullError):
            state = "storage-full"
        else:
            state = "storage-error"
        self._set(state=state, detail=str(err))

    @_fenced
    def _adopt_ledger(self) -> None:
        """Continue the ledger across restarts: an open outage stays open until we record;
        a last segment with no open outage means the process died: open one from its end."""
        open_outages = self._store.ledger.open_outages(self.camera)
        last = self._store.last_segment(self.camera)
        if last is not None:
            self._last_end_ms = last.end_ms
            self._set(last_segment_end_ms=last.end_ms)
            since = self._store.time_since_footage(self.camera)
            if since is not None:
                self._last_end_mono = self._clock.monotonic() - since / 1000
                self._restarted = True
        if open_outages:
            self._outage_id = open_outages[-1].id
            self._outage_told = (open_outages[-1].start_ms, open_outages[-1].cause)
        elif last is not None:
            self._due = _LedgerDue(
                None, last.end_ms, "not-running", "recorder was not running (crash or power loss)"
            )
            self._catch_up()

    @_fenced
    def _shutdown_ledger(self) -> None:
        """The recorder is stopping: end the current outage (its cause stays as it was) and
        open one with the cause given to `stop()` (`daemon-stopped`, `config-reload`), closed
        when the camera records again."""
        now = self._clock.wall_ms()
        start = self._last_end_ms if self._last_end_ms is not None else now
        if not self._catch_up():
            raise self._index_error or IndexWriteError("the index is behind")
        if self._outage_id is not None:
            self._store.ledger.close(self._outage_id, now)
            start = now
        self._outage_id = self._store.ledger.open(self.camera, start, *self._stop_why).id

    @_fenced
    def _note_outage(self, cause: str, detail: str) -> None:
        """Open the outage (from the end of the last footage) or give the open one this
        cause; written now if the index can take it, else by `_catch_up` later."""
        if self._due is not None:
            self._due.cause, self._due.detail = cause, detail
        else:
            start = self._last_end_ms if self._last_end_ms is not None else self._clock.wall_ms()
            if self._outage_id is not None and self._outage_told is not None:
                start = self._outage_told[0] or start  # the open outage keeps its start
            self._due = _LedgerDue(self._outage_id, start, cause, detail)
        self._tell_outage(self._due.start_ms, cause, detail)
        self._catch_up()

    def _index_behind(self) -> bool:
        """Whether something of this camera still waits for the index (held segments, a
        ledger write)."""
        return (
            self._due is not None
            or self._fix_due is not None
            or self._step_due is not None
            or bool(self._store.held(self.camera))
        )

    @_fenced
    def _catch_up(self) -> bool:
        """Write what waits for the index, in order: held segments (the store's), the end
        of the outage they closed, the ledger entry. True when nothing waits any more; on
        an index write failure False (the failure in `_index_error`), to be tried again."""
        try:
            for segment in self._store.index_held(self.camera):
                self.log.info(
                    "camera %s: indexed %s, held while the index could not be written",
                    self.camera,
                    segment.path.name,
                )
                self._committed(segment)
            if self._fix_due is not None:
                self._store.ledger.set_end(*self._fix_due)
                self._fix_due = None
            self._write_step_due()
            due = self._due
            if due is not None:
                if due.outage is None:
                    self._outage_id = self._store.ledger.open(
                        self.camera, due.start_ms, due.cause, due.detail
                    ).id
                else:
                    self._store.ledger.reopen(due.outage, due.cause, due.detail)
                    self._outage_id = due.outage
                self._due = None
        except IndexWriteError as err:
            if self._index_error is None or type(self._index_error) is not type(err):
                self.log.error(
                    "camera %s: %s; recording paused, retrying every second", self.camera, err
                )
            self._index_error = err
            return False
        if self._index_error is not None:
            self.log.warning("camera %s: the index can be written again", self.camera)
            self._index_error = None
        return True

    @_fenced
    def _clocks_now(self) -> tuple[int, float]:
        """The wall and monotonic clocks read together, for the step detector and a new
        segment's start: a thread held between two reads (waiting for the GIL or a core on
        a loaded machine) made a late wall reading against an earlier monotonic one look like
        a step of the clock, or a gap. The pair
        is read again (up to three times) while the reads straddle more than 50 ms."""
        mono, wall_ms = self._clock.monotonic, self._clock.wall_ms
        for _ in range(3):
            before = mono()
            wall = wall_ms()
            after = mono()
            if after - before <= 0.05:
                break
        return wall, (before + after) / 2

    def _clock_stepped(self, seg: _Segmenting | None, step: ClockStep) -> None:
        """The server's wall clock stepped (NTP, an operator): one closed `clock-step` row in
        the ledger. Segment times stay safe without more: durations come from media
        timestamps, and `_finish` never starts a segment before the previous one ended."""
        start, end = step.span
        self._store.ledger.add(self.camera, start, end, CLOCK_STEP, step.describe())
        self.log.warning(
            "camera %s: server clock stepped %+.3f s", self.camera, step.step_ms / 1000
        )

    @_fenced
    def _close_outage(self, end_ms: int) -> None:
        if self._outage_id is not None:
            self._store.ledger.close(self._outage_id, end_ms)
            self._failures.recovered()
            self._outage_id = None
            self._tell_outage_ended(end_ms)

    def _wait_backoff(self, connected_for: float, cause: str) -> None:
        """Sit out the back-off; for causes where the camera itself went away, probe it
        (RTSP OPTIONS, `StreamOpener.probe_reachable`) twice a second and go as soon as it
        answers again. Cutting the wait short needs evidence that something changed: a camera
        that did not answer (refused, timed out) or a probe that failed during this wait, or
        a connection that had recorded for a while; so a camera that answers but keeps
        failing the stream stays on the back-off."""
        delay = self._backoff.failure(connected_for)
        deadline = self._clock.monotonic() + delay
        probe = cause in PROBED_CAUSES
        seen_down = cause in ("unreachable", "connect-timeout")  # it did not answer just now
        while not self._stop.is_set():
            self._progress(in_backoff=True)
            began = self._clock.monotonic()
            if began >= deadline:
                return
            if probe:
                if self._opener.probe_reachable():
                    if seen_down or connected_for >= RECORDED_A_WHILE_SECONDS:
                        return  # the camera is back: do not sit out the rest of the back-off
                else:
                    seen_down = True
            now = self._clock.monotonic()
            pause = min(PROBE_INTERVAL_SECONDS - (now - began), deadline - now)
            if self._clock.wait(self._stop, max(0.0, pause)):
                return

    def _storage_short(self) -> str | None:
        """Why there is no room to record (None if there is): free space on the recordings'
        filesystem below the reserve, or the index's reserve used up (its filesystem full,
        perhaps a filesystem of its own that the recordings' free space says nothing about).
        Every recorder pauses then, not only the one whose index write failed: the reserve is
        the room the outage ledger and the held segments need, not room to record into.
        Checked once a second while recording."""
        if self._reserve and self._store.free_bytes() < self._reserve:
            return f"free space below the reserve of {self._reserve} bytes"
        if not self._store.index_has_room():
            return "the index's filesystem is full (its reserve is in use)"
        return None

    def _pause_for_storage(self) -> None:
        """Wait until there is room again (the reserve plus a margin) and the index has
        taken what waited for it (held segments, the ledger), trying each second. Nothing
        is deleted to make room: that is retention's job, outside the window only."""
        needed = self._reserve + RESUME_MARGIN_BYTES
        began = self._clock.monotonic()
        checks = 0
        while not self._stop.is_set():
            self._progress(in_backoff=True)
            checks += 1
            self._set(room_checks=self._status.room_checks + 1)
            try:
                # The index's reserve too: on a filesystem of its own the recordings' free
                # space says nothing about it, and the next ledger entry needs it.
                room = self._store.free_bytes() >= needed and self._store.index_has_room()
            except OSError:
                room = False  # filesystem still failing: keep waiting
            if room and self._catch_up():
                self.log.info(
                    "camera %s: room again, resuming (paused %.1f s, %d checks)",
                    self.camera,
                    self._clock.monotonic() - began,
                    checks,
                )
                return
            if self._index_error is not None:
                self._index_trouble(self._index_error)
            self._clock.wait(self._stop, STORAGE_RETRY_SECONDS)

    # --- one connection -----------------------------------------------------------------------

    def _session(self, first_connect: bool) -> None:
        """Connect and record until the stream fails (raises) or `stop()` (returns)."""
        short = self._storage_short()
        if short is not None:
            raise StorageFullError(short)
        self._progress()  # a connection attempt begins: not in back-off any more
        source = self._opener.open()
        try:
            self._record(source, first_connect)
        finally:
            source.close()

    def _record(self, source: Source, first_connect: bool) -> None:
        video = source.video
        if video is None:
            self._record_audio_only(source, first_connect)
            return
        vtb = video.time_base
        if vtb is None:
            raise UnsupportedStream("video stream has no time base")
        rate = video.guessed_rate or video.average_rate or Fraction(25)
        frame_ticks = max(1, int(1 / (rate * vtb))) if rate else 1
        vclock = StreamTimeline(frame_ticks, jump_ticks=int(2 / vtb))
        audio, note = self._audio_for(source)
        atb = audio.time_base if audio is not None else None
        aclock = StreamTimeline(AUDIO_FRAME_TICKS, jump_ticks=int(2 / atb)) if atb else None
        description = source.description
        if note:
            description += f"; audio not recorded: {note}"
            self._report_audio_note(note)
        self._audio_reanchored = False
        self._set(detail=description)
        self.log.info(
            "camera %s: connected (%s, %s%s)",
            self.camera,
            source.description,
            video.codec_context.name,
            f" + {audio.codec_context.name}" if audio else "",
        )

        target: float = self._segment_seconds
        if first_connect:
            target = max(1.0, target - stagger_phase(self.camera, target))
        seg: _Segmenting | None = None
        cut_pending = False  # cut at the next keyframe
        unchain = False  # ... and start the next segment on the server clock, not chained
        mono = self._clock.monotonic
        connected_at = mono()
        last_space_check = last_tick = connected_at
        video_index = video.index
        try:
            for packet in source.packets():
                now = mono()
                self._last_progress = now
                if now - last_tick >= TICK_SECONDS:
                    # Twice a second, not per packet: stop, clock steps, a missing keyframe,
                    # the segment's settled start, free space.
                    last_tick = now
                    if self._stop.is_set():
                        break
                    step = self._steps.sample(*self._clocks_now())
                    if step is not None:
                        self._clock_stepped(seg, step)
                        cut_pending = unchain = True  # the next segment starts on the stepped clock
                    if seg is None and now - connected_at > self._keyframe_wait:
                        raise UnsupportedStream(
                            "no keyframe within %.0f s of connecting although media kept "
                            "arriving (raise keyframe_wait_seconds for a camera with a longer "
                            "GOP)" % (now - connected_at)
                        )
                    if seg is not None and not seg.settled and now - seg.began >= SETTLE_SECONDS:
                        self._settle(seg)
                    if seg is not None and now - last_space_check >= 1.0:
                        last_space_check = now
                        short = self._storage_short()
                        if short is not None:
                            self._finish(seg, None, vtb, source)
                            seg = None
                            raise StorageFullError(short)
                if packet.stream_index == video_index:
                    dts = packet.dts
                    if seg is not None and dts is not None and not packet.is_keyframe:
                        # The usual frame: clean timestamps without allocating, then mux.
                        out_dts = vclock.advance(packet.pts, dts)
                        if out_dts is not None:
                            seg.write_video(
                                packet, out_dts, vclock.out_pts, packet.duration or frame_ticks, now
                            )
                            continue
                    for item, st in vclock.push(packet, packet.pts, dts, packet.duration or 0):
                        pkt = item if isinstance(item, av.Packet) else packet
                        if st.jump_ticks:
                            cut_pending = unchain = True
                            with self._fence_for(seg):
                                self._store.events.add(
                                    self.camera,
                                    self._clock.wall_ms(),
                                    "discontinuity",
                                    f"timestamps jumped {float(st.jump_ticks * vtb):+.3f} s",
                                    float(st.jump_ticks * vtb),
                                )
                            self.log.warning(
                                "camera %s: timestamp jump of %+.3f s",
                                self.camera,
                                float(st.jump_ticks * vtb),
                            )
                        if pkt.is_keyframe:
                            new = source.video
                            if new is not video and new is not None:
                                # A new SPS (resolution): a new file with the new sample entry.
                                self._new_video(video, new)
                                video = new
                                cut_pending = True  # media time runs on: chained, no discontinuity
                            long_enough = (
                                seg is not None and (st.dts - seg.first_dts) * vtb >= target
                            )
                            if seg is None or long_enough or cut_pending:
                                chained = seg is not None and not unchain
                                if seg is not None:
                                    self._finish(seg, st.dts, vtb, source)
                                    target = self._segment_seconds
                                seg = self._begin(st.dts, video, audio, chained, unchain, now)
                                cut_pending = unchain = False
                                self._set(state="recording", detail=description)
                        if seg is None:
                            continue  # before the first keyframe: nothing can decode it yet
                        seg.write_video(pkt, st.dts, st.pts, st.duration, now)
                elif audio is not None and aclock is not None and seg is not None:
                    for item, st in aclock.push(
                        packet, packet.pts, packet.dts, packet.duration or 0
                    ):
                        pkt = item if isinstance(item, av.Packet) else packet
                        self._write_audio(seg, pkt, st, now)
        except StreamError:
            if seg is not None:
                self._finish(seg, None, vtb, source)
            raise
        except (StorageError, av.FFmpegError, OSError) as err:
            if seg is not None:
                self._abandon(seg)
            if isinstance(err, PacketRejected):
                # What the camera sent (e.g. a stream without its parameter sets), not the
                # disk: reconnect as for any stream error.
                raise StreamError(str(err)) from err
            if isinstance(err, StorageError):
                raise
            raise StorageIOError(f"writing segment: {err}") from err
        if seg is not None:
            self._finish(seg, None, vtb, source)
        if self._stop.is_set():
            return
        raise StreamStalled("stream stopped without an error")

    def _record_audio_only(self, source: Source, first_connect: bool) -> None:
        """A camera without video: its audio alone, cut into segments at any packet once a
        segment is `segment_seconds` long (every audio frame can start playback). Timing,
        discontinuities, clock steps, free space and the ledger as for video."""
        audio, note = self._audio_for(source)
        if audio is None:
            raise UnsupportedStream(f"no video stream, and its audio cannot be kept: {note}")
        atb = audio.time_base
        if atb is None:
            raise UnsupportedStream("audio stream has no time base")
        aclock = StreamTimeline(AUDIO_FRAME_TICKS, jump_ticks=int(2 / atb))
        description = f"{source.description}; audio only (the camera sends no video)"
        self._set(detail=description)
        self.log.info(
            "camera %s: connected (%s, audio only: %s)",
            self.camera,
            source.description,
            audio.codec_context.name,
        )
        target: float = self._segment_seconds
        if first_connect:
            target = max(1.0, target - stagger_phase(self.camera, target))
        seg: _Segmenting | None = None
        cut_pending = False
        mono = self._clock.monotonic
        last_space_check = last_tick = mono()
        try:
            for packet in source.packets():
                now = mono()
                self._last_progress = now
                if now - last_tick >= TICK_SECONDS:
                    last_tick = now
                    if self._stop.is_set():
                        break
                    step = self._steps.sample(*self._clocks_now())
                    if step is not None:
                        self._clock_stepped(seg, step)
                        cut_pending = True
                    if seg is not None and not seg.settled and now - seg.began >= SETTLE_SECONDS:
                        self._settle(seg)
                    if seg is not None and now - last_space_check >= 1.0:
                        last_space_check = now
                        short = self._storage_short()
                        if short is not None:
                            self._finish(seg, None, atb, source)
                            seg = None
                            raise StorageFullError(short)
                for item, st in aclock.push(packet, packet.pts, packet.dts, packet.duration or 0):
                    pkt = item if isinstance(item, av.Packet) else packet
                    if st.jump_ticks:
                        cut_pending = True
                        with self._fence_for(seg):
                            self._store.events.add(
                                self.camera,
                                self._clock.wall_ms(),
                                "discontinuity",
                                f"timestamps jumped {float(st.jump_ticks * atb):+.3f} s",
                                float(st.jump_ticks * atb),
                            )
                        self.log.warning(
                            "camera %s: timestamp jump of %+.3f s",
                            self.camera,
                            float(st.jump_ticks * atb),
                        )
                    if seg is None or cut_pending or (st.dts - seg.first_dts) * atb >= target:
                        chained = seg is not None and not cut_pending
                        if seg is not None:
                            self._finish(seg, st.dts, atb, source)
                            target = self._segment_seconds
                        seg = self._begin(st.dts, None, audio, chained, cut_pending, now)
                        cut_pending = False
                        self._set(state="recording", detail=description)
                    seg.write_audio_only(pkt, st, now)
        except StreamError:
            if seg is not None:
                self._finish(seg, None, atb, source)
            raise
        except (StorageError, av.FFmpegError, OSError) as err:
            if seg is not None:
                self._abandon(seg)
            if isinstance(err, PacketRejected):
                raise StreamError(str(err)) from err
            if isinstance(err, StorageError):
                raise
            raise StorageIOError(f"writing segment: {err}") from err
        if seg is not None:
            self._finish(seg, None, atb, source)
        if self._stop.is_set():
            return
        raise StreamStalled("stream stopped without an error")

    def _begin(
        self,
        first_dts: int,
        video: VideoStream | None,
        audio: AudioStream | None,
        chained: bool,
        discontinuity: bool,
        now: float,
    ) -> _Segmenting:
        """Open the next segment's file at a keyframe (an audio-only camera's at any audio
        packet: `first_dts` is then in the audio's time base). A chained segment is named
        after the previous end; any other after this arrival, provisionally (see `_settle`).
        Closes the open outage, provisionally too (corrected when the start has settled)."""
        atb = audio.time_base if audio is not None else None
        vtb = video.time_base if video is not None else atb
        if vtb is None:
            raise UnsupportedStream("video stream has no time base")
        afirst = int(first_dts * vtb / atb) if atb is not None else 0
        # The wall time at `now` (the keyframe's arrival), not at this call: the previous
        # segment's commit (an fsync, an index write) may have taken a second on a loaded
        # machine, and a start stamped that much late is a gap that never was.
        wall, mono_now = self._clocks_now()
        arrival = wall - max(0, round((mono_now - now) * 1000))
        if chained and self._last_end_ms is not None:
            name_ms = self._last_end_ms
        else:
            name_ms = self._placed(arrival, now)
        with self._fence_for():  # new file and ledger: one step
            writer = self._store.new_writer(self.camera, name_ms, video, audio)
            seg = _Segmenting(writer, first_dts, afirst, arrival, now, vtb, name_ms, video)
            seg.atb_s = float(atb) if atb is not None else 0.0
            if self._tap is not None and video is not None:
                cc = video.codec_context
                seg.tap = self._tap
                name = cc.codec.canonical_name  # "h264" also from the test camera's libx264
                seg.tap_stream = tap_stream(name, cc.width, cc.height, cc.extradata, vtb)
            if self._tap is not None and writer.audio is not None and atb is not None:
                ac = writer.audio.codec_context
                seg.tap = self._tap
                seg.tap_audio = TapAudioStream(
                    ac.codec.canonical_name,
                    ac.sample_rate,
                    ac.channels,
                    bytes(ac.extradata or b""),
                    atb,
                )
            seg.chained_from = self._last_end_ms if chained else None
            seg.settled = chained
            seg.discontinuity = discontinuity
            if self._outage_id is not None:
                self._fix_outage = self._outage_id
                if (
                    self._restarted
                    and self._last_end_ms is not None
                    and self._last_end_mono is not None
                ):
                    gap = round((now - self._last_end_mono) * 1000)
                    self._real_resume_ms = self._last_end_ms + max(0, gap)
                try:
                    self._close_outage(self._outage_end(name_ms))
                except IndexWriteError:
                    self._fix_outage = None
                    seg.closed = True
                    writer.abandon()
                    with contextlib.suppress(StorageError):
                        self._store.salvage(writer.temp_path)  # nothing muxed: removed
                    raise
        return seg

    def _placed(self, start_ms: int, began: float) -> int:
        """The start of a segment not chained to the previous one, from its wall-clock
        estimate `start_ms` and its start `began` on the monotonic clock. Never before the
        previous footage's end: after a step of the server clock back, footage is stamped
        on from that end (the timeline runs ahead of the wall clock until a gap absorbs
        it). A gap there keeps the length the monotonic clock measured (the store's
        evidence time across a restart of this boot), so an outage (a kill: `not-running`)
        spans the real time nothing was recorded instead of nothing; up to `REANCHOR_MS`
        is arrival jitter, not a gap."""
        last = self._last_end_ms
        if last is None or start_ms >= last:
            return start_ms
        if self._last_end_mono is not None:
            gap = round((began - self._last_end_mono) * 1000)
            if gap > REANCHOR_MS:
                return last + gap
        return last

    @_fenced
    def _settle(self, seg: _Segmenting) -> None:
        """The start estimate of a segment named after its first arrival has settled: give
        the `.part` file that start (so a salvage after a crash or a full disk indexes the
        right time) and correct the end of the outage before it."""
        seg.settled = True
        start = self._placed(seg.wall_est, seg.mono_est)
        if abs(start - seg.name_ms) >= SETTLE_MIN_MS:
            try:
                self._store.rename_part(seg.writer, self.camera, start)
                seg.name_ms = start
            except StorageError as err:
                # The provisional name stays: still a valid file, its start a little late.
                self.log.warning("camera %s: %s", self.camera, err)
        if self._fix_outage is not None:
            self._store.ledger.set_end(self._fix_outage, self._outage_end(start))

    def _audio_for(self, source: Source) -> tuple[AudioStream | None, str]:
        """The source's audio stream if a segment can hold it as it is, and why not if not."""
        audio = source.audio
        if audio is None:
            return None, source.audio_note
        name = audio.codec_context.name
        probe = av.open(io.BytesIO(), "w", format=container_format(name))
        try:
            probe.add_stream_from_template(audio)
            return audio, ""
        except (ValueError, av.FFmpegError):
            return None, f"{name} audio cannot be stored in an MP4 or QuickTime file"
        finally:
            probe.close()

    def _report_audio_note(self, note: str) -> None:
        """Say once (log, and an `audio-not-recorded` event in the index) why this camera's
        audio is not in its recordings; again only if the reason changes."""
        if note == self._audio_note:
            return
        self._audio_note = note
        self.log.warning("camera %s: recording video only: %s", self.camera, note)
        with self._fence_for():
            self._store.events.add(self.camera, self._clock.wall_ms(), "audio-not-recorded", note)

    def _new_video(self, old: VideoStream, new: VideoStream) -> None:
        """The camera's video parameters changed (a new SPS): recorded as an event."""
        was, now = old.codec_context, new.codec_context
        detail = f"{was.width}x{was.height} -> {now.width}x{now.height}"
        self.log.warning("camera %s: new video parameters (%s)", self.camera, detail)
        with self._fence_for():
            self._store.events.add(self.camera, self._clock.wall_ms(), "resolution-change", detail)

    def _write_audio(
        self, seg: _Segmenting, packet: av.Packet[Any], st: Stamped, now: float
    ) -> None:
        if seg.writer.audio is None:
            return
        rel = st.dts - seg.audio_first
        if seg.last_audio_dts is None:
            video_at = (seg.last_video_dts - seg.first_dts) * seg.tb_s
            if seg.atb_s and abs(rel * seg.atb_s - video_at) > AUDIO_ANCHOR_SECONDS:
                # Audio timestamps that disagree with the video's (a camera whose RTP-Info
                # does not match its packets): place it with the video, never squeeze it.
                if not self._audio_reanchored:
                    self._audio_reanchored = True
                    self.log.warning(
                        "camera %s: audio timestamps %+.1f s from the video's; audio "
                        "re-anchored to the video",
                        self.camera,
                        rel * seg.atb_s - video_at,
                    )
                seg.audio_first = st.dts - round(video_at / seg.atb_s)
                rel = st.dts - seg.audio_first
            rel = max(rel, 0)
        else:
            rel = max(rel, seg.last_audio_dts + 1)  # late packet at a cut: shift, never drop
        tap = seg.tap
        if tap is not None and tap.audio_wanted and seg.tap_audio is not None:
            at = rel + seg.audio_origin
            tap.publish_audio(TapAudioFrame(seg.tap_audio, bytes(packet), at, st.duration, now))
        packet.stream = seg.writer.audio
        packet.dts = rel
        packet.pts = rel + max(0, st.pts - st.dts)
        packet.duration = st.duration
        seg.writer.mux(packet)
        seg.last_audio_dts = rel

    @_fenced
    def _finish(
        self, seg: _Segmenting, next_dts: int | None, vtb: Fraction, source: Source
    ) -> None:
        if seg.closed:
            return
        end_dts = next_dts if next_dts is not None else seg.last_video_dts + seg.last_video_dur
        duration_ms = int((end_dts - seg.first_dts) * vtb * 1000)
        start_ms = seg.wall_est
        if seg.chained_from is not None:
            drift = seg.wall_est - seg.chained_from
            start_ms = seg.chained_from
            if drift > REANCHOR_MS:
                start_ms = seg.wall_est
                self._store.events.add(
                    self.camera,
                    self._clock.wall_ms(),
                    "reanchor",
                    f"media clock {drift} ms behind the server clock",
                    drift / 1000,
                )
        if self._last_end_ms is not None and start_ms < self._last_end_ms:
            start_ms = self._placed(start_ms, seg.mono_est)  # never overlap the previous one
        elif (
            seg.discontinuity
            and self._last_end_ms is not None
            and start_ms - self._last_end_ms <= REANCHOR_MS
        ):
            # A cut inside a connection (timestamps jumped) while the packets kept arriving:
            # a start within REANCHOR_MS after the previous end is arrival jitter, not a hole,
            # as for a chained segment. A server clock step (>= 1 s) starts on the new clock.
            start_ms = self._last_end_ms
        ctx = seg.template.codec_context if seg.template is not None else None
        info = SegmentInfo(
            camera=self.camera,
            start_ms=start_ms,
            end_ms=start_ms + duration_ms,
            duration_ms=duration_ms,
            frames=seg.frames,
            video_codec=ctx.codec.canonical_name if ctx is not None else None,
            audio_codec=seg.writer.audio.codec_context.codec.canonical_name
            if seg.writer.audio
            else None,
            width=ctx.width if ctx is not None else None,
            height=ctx.height if ctx is not None else None,
            discontinuity=seg.discontinuity,
        )
        try:
            segment = self._store.commit(seg.writer, info)
        except IndexWriteError:
            # The file is durable under its final name; the store holds it and indexes it
            # before anything newer of this camera (`_catch_up`).
            seg.closed = True
            self._last_end_ms = info.end_ms
            self._last_end_mono = seg.mono_est + duration_ms / 1000
            self._set(last_segment_end_ms=info.end_ms)
            raise
        except StorageError:
            self._abandon(seg)
            raise
        seg.closed = True
        self._last_end_mono = seg.mono_est + duration_ms / 1000
        self._committed(segment)

    def _committed(self, segment: Segment) -> None:
        """Bookkeeping for a segment that is now indexed (under the fence)."""
        self._last_end_ms = segment.end_ms
        if self._fix_outage is not None:
            # The outage before this segment ended where it starts; the next segment must
            # not move that end again.
            end = self._outage_end(segment.start_ms)
            self._fix_due = (self._fix_outage, end)
            if end < segment.start_ms:
                self._step_due = (end, segment.start_ms)
            self._fix_outage = None
            self._real_resume_ms = None
            self._restarted = False
        with self._lock:
            self._status = replace(
                self._status,
                last_segment_end_ms=segment.end_ms,
                segments_written=self._status.segments_written + 1,
                bytes_written=self._status.bytes_written + segment.bytes,
            )
        if self._on_segment is not None:
            self._on_segment(segment)
        if self._fix_due is not None:
            self._store.ledger.set_end(*self._fix_due)
            self._fix_due = None
        self._write_step_due()

    def _outage_end(self, start_ms: int) -> int:
        """Where the outage before footage starting at `start_ms` ended. Its start, except
        for the first footage after the recorder started when the wall clock stepped
        forward while it was not running (more than `TOLERANCE_MS` beyond the real time
        since the last footage, by the store's evidence of uptime): then the outage ends
        after the real time, and the rest of the gap is that step's (a `clock-step` row,
        as a running recorder writes for a step), so a `not-running` or `daemon-stopped`
        outage spans the time nothing recorded, not the step."""
        real = self._real_resume_ms
        if real is not None and start_ms - real > TOLERANCE_MS:
            return real
        return start_ms

    def _write_step_due(self) -> None:
        if self._step_due is None:
            return
        start, end = self._step_due
        self._store.ledger.add(
            self.camera,
            start,
            end,
            CLOCK_STEP,
            f"server clock stepped forward {(end - start) / 1000:.3f} s while the recorder was "
            "not running (against the uptime evidence of its restart); no footage is missing "
            "in this span",
        )
        self._step_due = None
        self.log.warning(
            "camera %s: server clock stepped forward %.3f s while the recorder was not running",
            self.camera,
            (end - start) / 1000,
        )

    @_fenced
    def _abandon(self, seg: _Segmenting) -> None:
        """A write failed: keep what reached the disk (salvaged now, else at start-up; a
        file with no sample in it is removed by the salvage). If nothing of the segment was
        indexed, the outage it closed goes on (one gap, one ledger row)."""
        if seg.closed:
            return
        seg.closed = True
        seg.writer.abandon()
        part = seg.writer.temp_path
        try:
            salvaged = self._store.salvage(part)
        except IndexWriteError as err:
            held = self._store.held(self.camera)
            if held:  # salvaged to disk; its row waits for the index
                self._last_end_ms = held[-1].end_ms
                self._set(last_segment_end_ms=held[-1].end_ms)
            self.log.error("camera %s: salvaged %s, not indexed yet: %s", self.camera, part, err)
            return
        except StorageError as err:
            self.log.error("camera %s: salvage of %s failed: %s", self.camera, part.name, err)
            return
        if salvaged is not None:
            self._last_end_mono = seg.mono_est + salvaged.duration_ms / 1000
            self._committed(salvaged)
            return
        # Nothing indexed: an empty file is gone (salvage removes it), a partial one kept.
        if self._fix_outage is not None:
            # The footage that closed the outage came to nothing: the gap goes on.
            self._outage_id = self._fix_outage
            self._fix_outage = None
