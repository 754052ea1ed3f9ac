"""Time checks (R8, "keep the running time accurate"): the server's own clock, each camera's
clock, and steps of the server clock under a running recorder.

Owns:
- `read_server_clock()`: the kernel's synchronisation state through `adjtimex(2)` in read-only
  mode (the unsynchronised flag, the estimated and maximum error). Cheap; any thread.
- `CameraClockReading` and the two ways a camera's clock is read: ONVIF GetSystemDateAndTime
  (in `ingest.onvif`) and RTCP sender reports (`RtcpClockProbe`, fed by `ClockedSource`, on the
  recorder thread, once per connection).
- `ClockStepDetector`: notices the server's wall clock jumping by comparing its progress with the
  monotonic clock's. Pure; the recorder feeds it on its thread (see `CameraRecorder`).
- `ClockNotes`: where findings go: `events` rows (`clock-offset`, value in seconds; the ONVIF
  opener adds `device-info`), audit rows (`clock-warning` / `clock-recovered`, actor `system`)
  when a camera's offset or the server's sync state crosses into or out of a warning, and the
  outage-ledger row of a clock step (`clock-step`). Thread-safe.
- `ClockMonitor`: one thread (`clock-check`) that reads the server clock every minute and runs
  the camera checks that are due (ONVIF cameras: on each connect and hourly). Started and
  stopped by the `Supervisor`; `adopt()` is how each new opener gets its notes and is scheduled.

Segment times themselves are not decided here: the recorder takes wall-clock starts from the
server clock and durations from media timestamps, and uses `ClockStepDetector` so a step never
makes segments overlap or go backwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from ingest.sources import Source, StreamOpener
from storage import SegmentStore, StorageError

log = logging.getLogger("nvr.time")

STEP_THRESHOLD_MS = 1000
"""A server clock step larger than this goes into the outage ledger (`clock-step`)."""
CLOCK_STEP = "clock-step"
CLOCK_OFFSET = "clock-offset"
DEVICE_INFO = "device-info"
"""Stream-event kind of a camera's device information (JSON detail, from ONVIF)."""
CAMERA_CHECK_INTERVAL_S = 3600.0
SERVER_CHECK_INTERVAL_S = 60.0


# --- the server's clock ---------------------------------------------------------------------

TIME_ERROR = 5
"""adjtimex(2) return value: the clock is not synchronised."""
STA_UNSYNC = 0x0040
STA_NANO = 0x2000
_STATES = {0: "ok", 1: "leap second insert", 2: "leap second delete", 3: "leap second", 4: "wait"}


class _Timex(ctypes.Structure):
    """`struct timex` of Linux (LP64: every field a C long except modes, status, shift, tai)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


@dataclass(frozen=True)
class ServerClockState:
    """The kernel's view of the server clock's synchronisation."""

    synchronised: bool
    state: str
    """ok | wait | leap second ... | unsynchronised"""
    est_error_s: float
    """The kernel's estimated error (set by the NTP daemon)."""
    max_error_s: float
    """The kernel's maximum error; it grows by 500 ppm while nothing disciplines the clock."""
    offset_s: float
    """The offset the kernel is still slewing away."""

    def describe(self) -> str:
        if not self.synchronised:
            return (
                f"NOT synchronised (maximum error {self.max_error_s:.3f} s); "
                "start or fix the NTP service (chrony, systemd-timesyncd)"
            )
        return f"synchronised (estimated error {self.est_error_s * 1000:.1f} ms)"


def server_clock_state(
    ret: int, status: int, esterror_us: int, maxerror_us: int, offset: int
) -> ServerClockState:
    """Interpret adjtimex(2)'s answer (pure; `offset` in ns with STA_NANO, else in µs)."""
    unsynced = ret == TIME_ERROR or bool(status & STA_UNSYNC)
    scale = 1e-9 if status & STA_NANO else 1e-6
    return ServerClockState(
        synchronised=not unsynced,
        state="unsynchronised" if unsynced else _STATES.get(ret, f"state {ret}"),
        est_error_s=esterror_us / 1e6,
        max_error_s=maxerror_us / 1e6,
        offset_s=offset * scale,
    )


_libc: Any = None


def read_server_clock() -> ServerClockState:
    """Read the kernel's synchronisation state (adjtimex with modes 0 changes nothing and needs
    no privilege). Raises OSError if the call fails (e.g. forbidden by a seccomp filter)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    ret = int(_libc.adjtimex(ctypes.byref(tx)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {err}")
    return server_clock_state(ret, tx.status, tx.esterror, tx.maxerror, tx.offset)


# --- a camera's clock -----------------------------------------------------------------------


@dataclass(frozen=True)
class CameraClockReading:
    """How far a camera's clock is from the server's, by one method, at one moment."""

    offset_s: float
    """Camera clock minus server clock (positive: the camera is ahead)."""
    uncertainty_s: float
    source: str
    """onvif | rtcp"""
    at_ms: int
    """Server wall-clock time of the reading."""

    def describe(self) -> str:
        return (
            f"{self.source}: camera clock {self.offset_s:+.3f} s from the server's "
            f"(±{self.uncertainty_s:.3f} s)"
        )


class RtcpClockProbe:
    """A camera's clock offset from RTCP sender reports, as FFmpeg exposes them.

    FFmpeg's RTSP demuxer maps the first sender report's NTP time onto the stream's timeline and
    publishes it as `start_time_realtime`: microseconds since the Unix epoch, by the camera's
    clock, at pts 0. A video packet's capture time by the camera's clock is then that plus its
    pts; by the server's clock it is no later than the packet's arrival. So the largest
    (camera time - arrival) over `samples` packets is the offset, low by the shortest delay seen
    (about one frame: FFmpeg's parser hands a frame over when the next one begins).

    FFmpeg keeps only the first report's mapping, so this measures once per connection. A window
    whose values spread by more than 2 s (a timestamp jump) is thrown away and measured again.
    """

    def __init__(
        self,
        realtime_us: Callable[[], int | None],
        time_base: Fraction,
        wall: Callable[[], float] = time.time,
        samples: int = 50,
        uncertainty_s: float = 0.2,
    ) -> None:
        self._realtime_us = realtime_us
        self._tb = time_base
        self._wall = wall
        self._samples = samples
        self._uncertainty = uncertainty_s
        self._values: list[float] = []
        self.done = False

    def observe(self, pts: int | None) -> CameraClockReading | None:
        """Feed one video packet's pts as it arrives; returns the reading once it is made."""
        if self.done or pts is None:
            return None
        start = self._realtime_us()
        if start is None:
            return None  # no sender report yet (or the stream carries none)
        arrival = self._wall()
        self._values.append(start / 1e6 + float(pts * self._tb) - arrival)
        if len(self._values) < self._samples:
            return None
        values, self._values = self._values, []
        if max(values) - min(values) > 2.0:
            return None  # the timeline jumped inside the window: measure again
        self.done = True
        return CameraClockReading(
            offset_s=max(values),
            uncertainty_s=self._uncertainty,
            source="rtcp",
            at_ms=int(arrival * 1000),
        )


# --- where findings go ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockStep:
    """The server's wall clock moved by `step_ms` more than the monotonic clock did."""

    at_ms: int
    """Wall-clock time right after the step."""
    step_ms: int

    @property
    def span(self) -> tuple[int, int]:
        """The stretch of wall-clock time the step jumped over (forward) or will replay
        (backward), as the ledger row's start and end."""
        before = self.at_ms - self.step_ms
        return min(before, self.at_ms), max(before, self.at_ms)

    def describe(self) -> str:
        if self.step_ms > 0:
            return (
                f"server clock stepped forward {self.step_ms / 1000:.3f} s; "
                "no footage is missing in this span"
            )
        return (
            f"server clock stepped back {-self.step_ms / 1000:.3f} s; segments continue from "
            "the previous end (never overlapping), so their times run ahead of the server "
            "clock by up to the step until the next gap absorbs it"
        )


class ClockNotes:
    """Writes clock findings to the index. Warnings are audited when they begin and when they
    clear (so a steady 30 s offset is one audit row per daemon run, not one per hour)."""

    def __init__(self, store: SegmentStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._warning: dict[tuple[str, str], bool] = {}
        self._device: dict[str, str] = {}

    def _transition(self, key: tuple[str, str], warn: bool) -> bool | None:
        """True if a warning begins, False if one ends, None if nothing changed."""
        with self._lock:
            before = self._warning.get(key, False)
            self._warning[key] = warn
        if warn == before:
            return None
        return warn

    def camera_clock(self, camera: str, reading: CameraClockReading, limit_s: float) -> bool:
        """Record a reading; returns whether it is a warning (offset beyond `limit_s`)."""
        warn = abs(reading.offset_s) > limit_s
        detail = reading.describe()
        try:
            self._store.add_event(camera, reading.at_ms, CLOCK_OFFSET, detail, reading.offset_s)
            change = self._transition((camera, reading.source), warn)
            if change is not None:
                self._store.audit(
                    "system",
                    "clock-warning" if change else "clock-recovered",
                    camera,
                    "warning" if change else "ok",
                    {
                        "source": reading.source,
                        "offset_s": round(reading.offset_s, 3),
                        "limit_s": limit_s,
                    },
                    at_ms=reading.at_ms,
                )
        except StorageError as err:
            log.error("camera %s: cannot record its clock reading: %s", camera, err)
        if warn:
            log.warning(
                "camera %s: clock off by %+.3f s (limit %.1f s, %s)",
                camera,
                reading.offset_s,
                limit_s,
                reading.source,
            )
        return warn

    def device_info(self, camera: str, detail: str, at_ms: int | None = None) -> None:
        """Keep a camera's device information (`device-info` event, JSON) when it is new or
        differs from the last one kept (a firmware update, a swapped camera)."""
        with self._lock:
            known = self._device.get(camera)
        try:
            if known is None:
                kept = [e for e in self._store.events(camera) if e.kind == DEVICE_INFO]
                known = kept[-1].detail if kept else ""
            if detail != known:
                when = time.time_ns() // 1_000_000 if at_ms is None else at_ms
                self._store.add_event(camera, when, DEVICE_INFO, detail)
                if known:
                    log.warning("camera %s: device information changed: %s", camera, detail)
        except StorageError as err:
            log.error("camera %s: cannot record its device information: %s", camera, err)
            return
        with self._lock:
            self._device[camera] = detail

    def server_clock(self, state: ServerClockState, at_ms: int) -> None:
        """Audit the server clock becoming unsynchronised, and synchronised again."""
        change = self._transition(("", "server"), not state.synchronised)
        if change is None:
            return
        if change:
            log.warning("server clock %s", state.describe())
        else:
            log.info("server clock %s", state.describe())
        try:
            self._store.audit(
                "system",
                "clock-warning" if change else "clock-recovered",
                "server",
                "warning" if change else "ok",
                {
                    "state": state.state,
                    "est_error_s": state.est_error_s,
                    "max_error_s": state.max_error_s,
                },
                at_ms=at_ms,
            )
        except StorageError as err:
            log.error("cannot record the server clock state: %s", err)


class ClockStepDetector:
    """Notices steps of the wall clock: between two samples the wall clock must advance as the
    monotonic clock does, give or take the kernel's slewing (at most 500 ppm)."""

    def __init__(self, threshold_ms: int = STEP_THRESHOLD_MS, slew_ppm: float = 500.0) -> None:
        self._threshold = threshold_ms
        self._slew = slew_ppm / 1e6
        self._last: tuple[int, float] | None = None

    def sample(self, wall_ms: int, mono_s: float) -> ClockStep | None:
        last, self._last = self._last, (wall_ms, mono_s)
        if last is None:
            return None
        elapsed_ms = (mono_s - last[1]) * 1000
        step = wall_ms - last[0] - elapsed_ms
        if abs(step) <= self._threshold + self._slew * elapsed_ms:
            return None
        return ClockStep(at_ms=wall_ms, step_ms=round(step))


# --- RTCP checks on RTSP streams --------------------------------------------------------------


@runtime_checkable
class CameraRealtime(Protocol):
    """A source that knows the camera's clock at video pts 0 from RTCP sender reports (our
    RTSP client, FFmpeg's demuxer)."""

    def camera_realtime_us(self) -> int | None: ...


class ClockedSource:
    """A `Source` whose video packets also feed an `RtcpClockProbe` (on the recorder thread)."""

    def __init__(
        self,
        inner: Source,
        camera: str,
        report: Callable[[CameraClockReading], object],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._camera = camera
        self._report = report
        self.audio: AudioStream | None = inner.audio
        self.description = inner.description
        self._probe: RtcpClockProbe | None = None
        tb = inner.video.time_base if inner.video is not None else None
        if isinstance(inner, CameraRealtime) and tb is not None:
            self._probe = RtcpClockProbe(inner.camera_realtime_us, tb, wall)

    @property
    def video(self) -> VideoStream | None:
        """The inner source's template (it may change at a keyframe: a new resolution)."""
        return self._inner.video

    @property
    def audio_note(self) -> str:
        return self._inner.audio_note

    def packets(self) -> Iterator[av.Packet[Any]]:
        probe = self._probe
        vindex = self.video.index if self.video is not None else -1
        packets = self._inner.packets()
        for packet in packets:
            if probe is not None and packet.stream_index == vindex:
                reading = probe.observe(packet.pts)
                if reading is not None:
                    self._report(reading)
                if probe.done:
                    yield packet
                    yield from packets  # probe finished: step out of the per-packet path
                    return
            yield packet

    def close(self) -> None:
        self._inner.close()


@runtime_checkable
class ClockAware(Protocol):
    """An opener that reports device and clock findings once it has somewhere to put them."""

    def attach(self, notes: ClockNotes) -> None: ...


@runtime_checkable
class CameraClockCheck(Protocol):
    """An opener that can read its camera's clock out of band (ONVIF), on the monitor thread."""

    camera: str

    def clock_check_due(self, now: float) -> bool:
        """Whether a check should run now (`now` is monotonic seconds)."""
        ...

    def check_clock(self) -> None:
        """Read the camera's clock and report it (blocking, bounded; never raises)."""
        ...

    def set_waker(self, wake: Callable[[], None]) -> None:
        """`wake()` asks the monitor to look for due checks at once (after a connect)."""
        ...


class ClockedOpener:
    """Wraps an RTSP opener so each connection measures the camera clock from RTCP."""

    def __init__(self, inner: StreamOpener, camera: str, limit_s: float) -> None:
        self._inner = inner
        self.camera = camera
        self._limit = limit_s
        self._notes: ClockNotes | None = None

    def attach(self, notes: ClockNotes) -> None:
        self._notes = notes

    def _report(self, reading: CameraClockReading) -> None:
        if self._notes is not None:
            self._notes.camera_clock(self.camera, reading, self._limit)

    def open(self) -> Source:
        return ClockedSource(self._inner.open(), self.camera, self._report)

    def probe_reachable(self) -> bool:
        return self._inner.probe_reachable()


# --- what `nvr status` shows -----------------------------------------------------------------


def server_status_line(read: Callable[[], ServerClockState] = read_server_clock) -> str:
    """`server clock: ...`, prefixed `WARNING` when it is not synchronised."""
    try:
        state = read()
    except OSError as err:
        return f"WARNING server clock: unknown (cannot read its synchronisation state: {err})"
    prefix = "" if state.synchronised else "WARNING "
    return f"{prefix}server clock: {state.describe()}"


@dataclass(frozen=True)
class CameraClock:
    """A camera's newest clock reading by one method, judged against its limit."""

    source: str
    """onvif | rtcp"""
    at_ms: int
    offset_s: float
    limit_s: float

    @property
    def warning(self) -> bool:
        return abs(self.offset_s) > self.limit_s

    def describe(self) -> str:
        limit = f" (limit {self.limit_s:g} s)" if self.warning else ""
        return f"{self.offset_s:+.3f} s from the server's{limit}"


def camera_clocks(store: SegmentStore, camera: str, limit_s: float) -> list[CameraClock]:
    """The newest clock reading of each method (`clock-offset` events), by method name: what
    `nvr status`, `/api/health` and `/metrics` all judge a camera's clock by."""
    newest: dict[str, CameraClock] = {}
    for event in store.latest_events(camera, CLOCK_OFFSET):
        source = event.detail.split(":", 1)[0]
        if event.value is not None and source not in newest:
            newest[source] = CameraClock(source, event.at_ms, event.value, limit_s)
    return [newest[k] for k in sorted(newest)]


def camera_status_lines(
    store: SegmentStore, camera: str, limit_s: float, when: Callable[[int], str] | None = None
) -> list[str]:
    """The camera's device information (ONVIF) and latest clock reading per method, with a
    `WARNING` where the offset is beyond `limit_s`; `when` formats a time (default UTC)."""
    device: str | None = None
    kept = store.latest_events(camera, DEVICE_INFO, limit=1)
    if kept:
        device = kept[0].detail
    lines = []
    if device is not None:
        try:
            info = json.loads(device)
            profile = info.get("profile") or {}
            lines.append(
                f"device: {info.get('manufacturer', '?')} {info.get('model', '?')}, "
                f"firmware {info.get('firmware', '?')}, serial {info.get('serial', '?')}; "
                f"profile {profile.get('token', '?')} ({profile.get('width', '?')}x"
                f"{profile.get('height', '?')} {profile.get('encoding', '?')})"
            )
        except (ValueError, AttributeError):
            lines.append(f"device: {device}")
    fmt = when or (lambda ms: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)))
    for clock in camera_clocks(store, camera, limit_s):
        lines.append(
            f"{'WARNING ' if clock.warning else ''}camera clock ({clock.source}, "
            f"{fmt(clock.at_ms)}): {clock.describe()}"
        )
    return lines


# --- the monitor thread ----------------------------------------------------------------------


class ClockMonitor:
    """Thread `clock-check`: the server clock every `server_interval_s`, and the camera checks
    (`CameraClockCheck`) whenever one is due. One camera's slow check delays the others' (each
    is bounded by its own timeout), never a recorder."""

    def __init__(
        self,
        store: SegmentStore,
        *,
        read_server: Callable[[], ServerClockState] = read_server_clock,
        server_interval_s: float = SERVER_CHECK_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.notes = ClockNotes(store)
        self._read_server = read_server
        self._interval = server_interval_s
        self._monotonic = monotonic
        self._wall_ms = wall_ms
        self._checks: dict[str, CameraClockCheck] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._server_failed = False
        self.thread = threading.Thread(target=self._run, name="clock-check", daemon=True)

    def adopt(self, camera: str, opener: object) -> None:
        """Give a camera's (new) opener its notes and schedule its clock checks, replacing
        the checks of an opener it takes over from. Any thread."""
        if isinstance(opener, ClockAware):
            opener.attach(self.notes)
        with self._lock:
            if isinstance(opener, CameraClockCheck):
                opener.set_waker(self._wake.set)
                self._checks[camera] = opener
            else:
                self._checks.pop(camera, None)

    def forget(self, camera: str) -> None:
        """No more clock checks of a camera taken out of the config (a reload). Any thread."""
        with self._lock:
            self._checks.pop(camera, None)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def check_server(self) -> ServerClockState | None:
        try:
            state = self._read_server()
        except OSError as err:
            if not self._server_failed:
                log.warning("cannot read the server clock's synchronisation state: %s", err)
            self._server_failed = True
            return None
        self.notes.server_clock(state, self._wall_ms())
        return state

    def _run(self) -> None:
        next_server = self._monotonic()
        while not self._stop.is_set():
            now = self._monotonic()
            if now >= next_server:
                self.check_server()
                next_server = now + self._interval
            with self._lock:
                due = [c for c in self._checks.values() if c.clock_check_due(now)]
            for check in due:
                if self._stop.is_set():
                    return
                check.check_clock()
            self._wake.wait(max(0.0, min(next_server - self._monotonic(), 60.0)))
            self._wake.clear()
