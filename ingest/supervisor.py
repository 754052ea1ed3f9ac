"""`Supervisor`: builds one `CameraRecorder` per configured camera, owns their threads, and
repairs them.

Runs on the asyncio event loop; the recorders run on their own threads (`rec-<camera>`).
Stopping sets each recorder's stop event and joins the threads through `asyncio.to_thread`,
so the loop never blocks.

Self-repair: every recorder reports progress (a packet, or a tick of a deliberate back-off
wait) in `RecorderStatus.last_progress`. One whose thread shows none for `stuck_after` seconds
(or whose thread has ended) is stuck. A Python thread cannot be killed, so the stuck recorder
is fenced (`CameraRecorder.abandon`: it never writes to the store again, even if it wakes), the
gap goes into the outage ledger with cause `recorder-replaced`, and a new recorder takes the
camera over. When an abandoned thread finally ends, the `.part` file it was writing is
salvaged. Replacements per camera are rate-limited (`RepairPolicy`); past the limit the
recorder is left as it is, and the daemon stops vouching for the process to systemd's watchdog
(see `nvr.daemon`), so a fault that replacing threads does not cure ends in a process restart.

Segments: each recorder's `on_segment` calls the functions in `segment_listeners` (on the
recorder's thread) when it has closed and indexed a segment; the daemon adds the API's
playback service there. A listener that raises is logged and never stops recording.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nvr.config import BUILTIN_TEST_PATTERN, CameraConfig, ConfigError, NvrConfig
from nvr.ingest.errors import CameraConfigFault
from nvr.ingest.onvif import OnvifOpener
from nvr.ingest.picture.monitor import PictureMonitor
from nvr.ingest.recorder import CameraRecorder, Clock, SystemClock
from nvr.ingest.sources import RtspOpener, Source, StreamOpener
from nvr.ingest.status import PictureStatus, RecorderStatus
from nvr.ingest.tap import PacketTap
from nvr.ingest.testpattern import TestPatternOpener
from nvr.ingest.timecheck.monitor import ClockMonitor
from nvr.ingest.timecheck.rtcp import ClockedOpener
from nvr.storage import Segment, SegmentStore, StorageError

log = logging.getLogger("nvr.ingest")

OpenerFactory = Callable[[CameraConfig], StreamOpener]
EventEmit = Callable[[str, str | None, dict[str, Any]], None]
"""(kind, camera, data): queues an event for alerts out (`nvr.events.EventBus.emit`)."""


def _camera_event(emit: EventEmit, camera: str, kind: str, data: dict[str, Any]) -> None:
    emit(kind, camera, data)

REPLACED = "recorder-replaced"
"""Outage-ledger cause (and stream-event kind) of a stuck recorder thread that was replaced."""
RELOAD = "config-reload"
"""Outage-ledger cause of a recorder stopped by a reload (camera removed or changed)."""


def _recorder_differs(old: CameraConfig, new: CameraConfig) -> bool:
    """Whether the recorder must restart: anything but `picture` changed."""
    return old.model_copy(update={"picture": new.picture}) != new


def _join(recorders: list[CameraRecorder], grace: float) -> list[CameraRecorder]:
    """Wait up to `grace` seconds in all for the recorders' threads; those still running.
    Blocking: runs on a worker thread."""
    deadline = time.monotonic() + grace
    for recorder in recorders:
        recorder.thread.join(max(0.0, deadline - time.monotonic()))
    return [r for r in recorders if r.thread.is_alive()]


@dataclass(frozen=True)
class RepairPolicy:
    """When a recorder counts as stuck, and how often it may be replaced."""

    stuck_seconds: float = 30.0
    """No progress for this long means stuck; raised per camera to `step_factor` times its
    `stall_seconds`, since every blocking step of a connection (connect, each RTSP request,
    each read) is bounded by that socket timeout and an open takes several of them."""
    step_factor: float = 4.0
    max_replacements: int = 3
    """Replacements of one camera's recorder allowed within `window_seconds`."""
    window_seconds: float = 600.0
    fence_timeout: float = 5.0
    """How long to wait for a stuck thread to leave a store write before giving up."""

    def stuck_after(self, camera: CameraConfig) -> float:
        return max(self.stuck_seconds, self.step_factor * camera.stall_seconds)


@dataclass(frozen=True)
class RecorderHealth:
    """One recorder as the supervisor sees it at one moment."""

    camera: str
    state: str
    idle: float
    """Seconds since the recorder's thread last showed progress."""
    in_backoff: bool
    alive: bool
    """Whether its thread is still running."""
    stuck_after: float
    repairable: bool
    """Whether the supervisor may replace it now (within `RepairPolicy.max_replacements`)."""

    @property
    def stuck(self) -> bool:
        return not self.alive or self.idle > self.stuck_after


def default_opener(camera: CameraConfig) -> StreamOpener:
    """The opener for a configured camera (reads its password now, never logs it)."""
    if camera.onvif is not None:
        return OnvifOpener(
            camera.name,
            camera.onvif,
            username=camera.username,
            password=camera.password(),
            profile=camera.profile,
            transport=camera.transport,
            timeout_s=camera.stall_seconds,
            clock_limit_s=camera.max_clock_offset_seconds,
            keyframe_wait_s=camera.keyframe_wait_seconds,
        )
    if camera.url is None or camera.url == BUILTIN_TEST_PATTERN:
        return TestPatternOpener()
    rtsp = RtspOpener(
        camera.url,
        username=camera.username,
        password=camera.password(),
        transport=camera.transport,
        timeout_s=camera.stall_seconds,
        camera=camera.name,
        keyframe_wait_s=camera.keyframe_wait_seconds,
    )
    return ClockedOpener(rtsp, camera.name, camera.max_clock_offset_seconds)  # RTCP clock check


class ConfigFaultOpener:
    """The opener of a camera whose opener could not be built (`ConfigError`: a secret that
    cannot be read). Each `open()` on the recorder thread tries again and, while it still
    fails, raises `CameraConfigFault` (ledger cause `config`, this camera only); once the
    secret is there it hands over to the real opener."""

    def __init__(
        self,
        camera: CameraConfig,
        factory: OpenerFactory,
        error: ConfigError,
        adopted: Callable[[StreamOpener], None],
    ) -> None:
        self._camera = camera
        self._factory = factory
        self._adopted = adopted
        self.problem = "; ".join(error.problems)
        self._real: StreamOpener | None = None

    def open(self) -> Source:
        if self._real is None:
            try:
                real = self._factory(self._camera)
            except ConfigError as err:
                self.problem = "; ".join(err.problems)
                raise CameraConfigFault(f"cannot start: {self.problem}") from None
            self._adopted(real)
            self._real = real
            log.info("camera %s: its configuration can be used now", self._camera.name)
        return self._real.open()

    def probe_reachable(self) -> bool:
        return self._real.probe_reachable() if self._real is not None else False


class Supervisor:
    """Starts, watches, repairs and stops the recorders."""

    def __init__(
        self,
        config: NvrConfig,
        store: SegmentStore,
        opener_factory: OpenerFactory = default_opener,
        *,
        repair: RepairPolicy | None = None,
        clock: Clock | None = None,
        emit: EventEmit | None = None,
    ) -> None:
        self._config = config
        self._emit = emit
        """Alerts out (`nvr.events.EventBus.emit`): any thread, never blocks."""
        self._store = store
        self._opener_factory = opener_factory
        self._policy = repair or RepairPolicy()
        self._clock = clock or SystemClock()
        self._cameras = {c.name: c for c in config.cameras if c.enabled}
        self.recorders: dict[str, CameraRecorder] = {}
        self.abandoned: list[CameraRecorder] = []
        """Replaced recorders whose thread has not ended yet."""
        self._replaced: dict[str, deque[float]] = {name: deque() for name in self._cameras}
        self._refused: set[str] = set()  # cameras whose "not replaced" was already logged
        self.replacements = 0
        self.clocks = ClockMonitor(store)
        """Server clock and camera clock checks (thread `clock-check`)."""
        self.clocks.notes.listener = emit
        self._changing = asyncio.Lock()
        """Held by a repair and by a reconfiguration, so they never act on one camera at once."""
        self.taps: dict[str, PacketTap] = {}
        """One per camera, kept across recorder replacements and reloads (`tap()`)."""
        self.pictures = PictureMonitor(store, emit=emit)
        """Picture health from the taps' keyframes (thread `picture-check`)."""
        self.segment_listeners: list[Callable[[Segment], None]] = []
        """Called with every segment a recorder closed, on the recorder's thread: quick,
        non-blocking callables (see the module docstring)."""

    def _segment_closed(self, segment: Segment) -> None:
        for listener in list(self.segment_listeners):
            try:
                listener(segment)
            except Exception:
                log.exception("camera %s: a segment listener failed", segment.camera)

    def _build(self, camera: CameraConfig) -> CameraRecorder:
        opener: StreamOpener
        try:
            opener = self._opener_factory(camera)
        except ConfigError as err:
            # One camera's missing secret is that camera's outage, never the others' (R1).
            fault = ConfigFaultOpener(
                camera,
                self._opener_factory,
                err,
                lambda real: self.clocks.adopt(camera.name, real),
            )
            log.error("camera %s cannot start: %s", camera.name, fault.problem)
            opener = fault
        self.clocks.adopt(camera.name, opener)  # device info and clock checks (ONVIF, RTCP)
        return CameraRecorder(
            camera.name,
            opener,
            self._store,
            segment_seconds=camera.segment_seconds,
            reserve_bytes=self._config.storage.reserve_bytes,
            stall_seconds=camera.stall_seconds,
            keyframe_wait_seconds=camera.keyframe_wait_seconds,
            clock=self._clock,
            on_event=(
                None if self._emit is None else partial(_camera_event, self._emit, camera.name)
            ),
            on_segment=self._segment_closed,
            tap=self.tap(camera.name),
        )

    def tap(self, camera: str) -> PacketTap:
        """The camera's video packets as recorded (`nvr.ingest.tap`); for a camera that is
        not recording (yet) the tap simply stays silent."""
        tap = self.taps.get(camera)
        if tap is None:
            tap = self.taps[camera] = PacketTap(camera)
        return tap

    def start(self) -> None:
        for camera in self._cameras.values():
            recorder = self._build(camera)
            self.recorders[camera.name] = recorder
            recorder.start()
        self.clocks.start()
        for camera in self._cameras.values():
            self.pictures.watch(camera, self.tap(camera.name))
        self.pictures.start()
        log.info("started %d recorders", len(self.recorders))

    def snapshot(self) -> list[RecorderStatus]:
        return [r.status() for r in list(self.recorders.values())]

    def picture_states(self) -> dict[str, PictureStatus]:
        """Each checked camera's picture health (`ingest.picture.monitor`); any thread."""
        return self.pictures.states()

    # --- health and repair, on the event loop ---------------------------------------------------

    def _budget_left(self, camera: str, now: float) -> bool:
        times = self._replaced[camera]
        while times and now - times[0] > self._policy.window_seconds:
            times.popleft()
        return len(times) < self._policy.max_replacements

    def health(self) -> list[RecorderHealth]:
        """Every recorder's progress right now (cheap: reads each status under its lock)."""
        now = self._clock.monotonic()
        out = []
        for name, recorder in list(self.recorders.items()):
            status = recorder.status()
            out.append(
                RecorderHealth(
                    camera=name,
                    state=status.state,
                    idle=max(0.0, now - status.last_progress),
                    in_backoff=status.in_backoff,
                    alive=recorder.thread.is_alive(),
                    stuck_after=self._policy.stuck_after(self._cameras[name]),
                    repairable=self._budget_left(name, now),
                )
            )
        return out

    async def repair(self) -> list[str]:
        """Replace every stuck recorder that may still be replaced, and salvage what ended
        abandoned threads left behind. Returns the cameras replaced."""
        async with self._changing:
            return await self._repair()

    async def _repair(self) -> list[str]:
        await self._collect_abandoned()
        replaced = []
        for h in self.health():
            if not h.stuck:
                self._refused.discard(h.camera)
                continue
            if not h.repairable:
                if h.camera not in self._refused:
                    self._refused.add(h.camera)
                    log.error(
                        "camera %s: recorder stuck for %.0f s and already replaced %d times in "
                        "%.0f s; not replacing again (a process restart is left to systemd)",
                        h.camera,
                        h.idle,
                        self._policy.max_replacements,
                        self._policy.window_seconds,
                    )
                continue
            if await self._replace(h):
                replaced.append(h.camera)
        return replaced

    async def _replace(self, h: RecorderHealth) -> bool:
        old = self.recorders[h.camera]
        self._replaced[h.camera].append(self._clock.monotonic())
        why = (
            f"recorder thread ended ({h.state})"
            if not h.alive
            else f"recorder thread stuck: no progress for {h.idle:.1f} s ({h.state})"
        )
        fenced = await asyncio.to_thread(old.abandon, self._policy.fence_timeout)
        if not fenced:
            log.error(
                "camera %s: %s, inside a storage write for over %.0f s; cannot replace it safely",
                h.camera,
                why,
                self._policy.fence_timeout,
            )
            return False
        # From here the old thread never writes again: the ledger and the camera are ours.
        try:
            await asyncio.to_thread(self._record_replacement, h, why)
        except StorageError as err:
            log.error("camera %s: cannot record the replacement in the ledger: %s", h.camera, err)
        new = await asyncio.to_thread(self._build, self._cameras[h.camera])
        self.recorders[h.camera] = new
        new.start()
        if old.thread.is_alive():
            self.abandoned.append(old)
        elif old.leftover_part is not None:
            await self._salvage(old)
        self.replacements += 1
        log.warning("camera %s: %s; replaced by a new recorder", h.camera, why)
        return True

    def _record_replacement(self, h: RecorderHealth, why: str) -> None:
        """Ledger and event log for a replacement. Blocking: runs on a worker thread, after the
        old recorder is fenced and before its replacement starts (which adopts this entry)."""
        wall = self._clock.wall_ms()
        open_now = self._store.ledger.open_outages(h.camera)
        if open_now:
            # Already in a gap (e.g. stuck while reconnecting): it continues, now for this cause.
            last = open_now[-1]
            detail = f"{why}; replaced (gap began as {last.cause}: {last.detail})"
            self._store.ledger.update(last.id, REPLACED, detail[:1000])
        else:
            # Footage stopped when the thread stopped making progress (what it wrote until
            # then is in its `.part` file, salvaged once the thread ends or at the next start).
            start = wall - int(h.idle * 1000)
            previous = self._store.last_segment(h.camera)
            if previous is not None:
                start = max(start, previous.end_ms)
            self._store.ledger.open(h.camera, start, REPLACED, why)
        self._store.events.add(h.camera, wall, REPLACED, why, h.idle)

    async def _collect_abandoned(self) -> None:
        """Forget abandoned threads that ended; salvage the segment each was writing."""
        ended = [r for r in self.abandoned if not r.thread.is_alive()]
        for recorder in ended:
            self.abandoned.remove(recorder)
            log.info("camera %s: abandoned recorder thread has ended", recorder.camera)
            if recorder.leftover_part is not None:
                await self._salvage(recorder)

    async def _salvage(self, recorder: CameraRecorder) -> None:
        part: Path | None = recorder.leftover_part
        if part is None:
            return
        try:
            seg = await asyncio.to_thread(self._store.salvage, part)
        except StorageError as err:
            log.error("camera %s: cannot salvage %s: %s", recorder.camera, part.name, err)
            return
        if seg is None:
            log.warning("camera %s: %s left by the abandoned thread kept", recorder.camera, part)

    # --- reconfiguration (a reload), on the event loop ----------------------------------------

    async def reconfigure(self, config: NvrConfig, grace: float = 10.0) -> None:
        """Apply a new config's cameras: recorders of removed cameras finish their segment and
        stop; changed ones do the same and a new recorder starts with the new settings; added
        ones start. Recorders of unchanged cameras are not touched (not a frame lost). The
        gap of a stopped camera is in the ledger (`config-reload`, its detail says why)."""
        async with self._changing:
            new = {c.name: c for c in config.cameras if c.enabled}
            old = self._cameras
            removed = [n for n in old if n not in new]
            # A change of picture-check settings alone retunes the checks: no recorder restart.
            changed = [n for n in new if n in old and _recorder_differs(old[n], new[n])]
            retuned = [n for n in new if n in old and n not in changed and old[n] != new[n]]
            for name in retuned:
                self.pictures.watch(new[name], self.tap(name))
            added = [n for n in new if n not in old]
            stopping = {n: self.recorders.pop(n) for n in removed}
            for name in removed:
                stopping[name].stop(RELOAD, "removed from the config (reload)")
            for name in changed:
                stopping[name] = self.recorders[name]
                stopping[name].stop(RELOAD, "restarted with a changed config (reload)")
            late = await asyncio.to_thread(_join, list(stopping.values()), grace)
            unfenced: set[str] = set()
            for recorder in late:
                # Fence it off (as a replacement does) so it never writes beside its successor.
                if await asyncio.to_thread(recorder.abandon, self._policy.fence_timeout):
                    self.abandoned.append(recorder)
                    log.error(
                        "camera %s: recorder did not stop within %.0f s; abandoned",
                        recorder.camera,
                        grace,
                    )
                else:
                    unfenced.add(recorder.camera)
                    log.error(
                        "camera %s: recorder did not stop within %.0f s and is inside a "
                        "storage write; the stuck-recorder repair replaces it once it ends",
                        recorder.camera,
                        grace,
                    )
            for name in removed:
                self.clocks.forget(name)
                self.pictures.forget(name)
                self._replaced.pop(name, None)
                self._refused.discard(name)
                if self._emit is not None:  # alerts: Home Assistant forgets the camera
                    self._emit("camera-removed", name, {"reason": "removed from the config"})
            self._config = config
            self._cameras = new
            for name in changed + added:
                self.pictures.watch(new[name], self.tap(name))
                if name in unfenced:
                    continue
                self._replaced.setdefault(name, deque())
                recorder = await asyncio.to_thread(self._build, new[name])
                self.recorders[name] = recorder
                recorder.start()
            if removed or changed or added:
                log.info(
                    "cameras reconfigured: %d started, %d restarted, %d stopped, %d untouched",
                    len(added),
                    len(changed),
                    len(removed),
                    len(new) - len(added) - len(changed),
                )

    # --- stopping -------------------------------------------------------------------------------

    async def stop(self, grace: float = 10.0) -> list[str]:
        """Stop every recorder; returns the cameras whose thread did not end in time."""
        for recorder in self.recorders.values():
            recorder.stop()
        self.clocks.stop()
        self.pictures.stop()

        def join_all() -> list[str]:
            deadline = time.monotonic() + grace
            late = []
            if self.clocks.thread.is_alive():
                self.clocks.thread.join(max(0.0, deadline - time.monotonic()))
            if self.pictures.thread.is_alive():
                self.pictures.thread.join(max(0.0, deadline - time.monotonic()))
            for name, recorder in self.recorders.items():
                recorder.thread.join(max(0.0, deadline - time.monotonic()))
                if recorder.thread.is_alive():
                    late.append(name)
            return late

        late = await asyncio.to_thread(join_all)
        for name in late:
            log.error("camera %s: recorder thread did not stop within %.0f s", name, grace)
        await self._collect_abandoned()
        for recorder in self.abandoned:
            log.warning(
                "camera %s: an abandoned recorder thread is still stuck at exit; its segment "
                "in flight, if any, is salvaged at the next start",
                recorder.camera,
            )
        return late
