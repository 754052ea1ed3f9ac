"""`PictureMonitor`: thread `picture-check`, every camera's picture health (issue 18, R8).

It subscribes keyframes-only to each camera's packet tap (`ingest.tap`, the recorder's own
packets, never a second camera connection). The subscriber runs on the recorder's thread and
only hands on: it takes a keyframe when the camera's last one taken is `check_seconds` old and
appends it to one bounded queue (the oldest is dropped when full, and counted), then wakes
the worker. The worker, this module's one thread, at a lower CPU priority (`nice` 10, a
per-thread setting on Linux), decodes the keyframe alone (`decode`), judges it
(`detector.PictureDetector`) and, when a condition is raised or cleared, writes the finding
to the index with its keyframe as a JPEG beside the footage (`storage.pictures`), logs it and
publishes it as a `picture` event (alerts out, `nvr.events`). Never on the event loop.

`states()` (any thread) is what `/api/cameras`, `/api/health`, `/metrics` and `nvr status`
show: each camera's `PictureStatus`. `idle()` lets tests wait for the queue to drain.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nvr.config.models import CameraConfig, PictureConfig
from nvr.ingest.picture import references
from nvr.ingest.picture.decode import (
    PictureDecodeError,
    decode_keyframe,
    grey_picture,
    jpeg_snapshot,
)
from nvr.ingest.picture.detector import CONDITIONS, LEARNING, OK, PictureChange, PictureDetector
from nvr.ingest.status import PictureStatus
from nvr.ingest.tap import PacketTap, TapFrame
from nvr.storage import SegmentStore, StorageError
from nvr.storage.timestamps import iso, now_ms

log = logging.getLogger("nvr.picture")

PICTURE = "picture"
"""Event kind (alerts out, `nvr.events.PICTURE`): data state, previous, since, score, detail,
snapshot."""
QUEUE_SIZE = 16
NICE = 10


@dataclass
class _Camera:
    name: str
    settings: PictureConfig
    detector: PictureDetector
    status: PictureStatus
    unsubscribe: Callable[[], None] = lambda: None
    last_taken: float = float("-inf")
    """Arrival (monotonic) of the last keyframe taken (recorder's thread only)."""
    open_id: int | None = None
    failed: bool = False
    saved_at: float | None = None
    """Picture clock (arrival) of the last save of its references (worker only)."""


@dataclass(frozen=True)
class _Item:
    camera: _Camera
    frame: TapFrame
    wall_ms: int


class PictureMonitor:
    """See the module docstring."""

    def __init__(
        self,
        store: SegmentStore,
        *,
        emit: Callable[[str, str | None, dict[str, Any]], None] | None = None,
        wall_ms: Callable[[], int] = now_ms,
        queue_size: int = QUEUE_SIZE,
        nice: int = NICE,
    ) -> None:
        self._store = store
        self._emit = emit
        self._wall_ms = wall_ms
        self._nice = nice
        self._cameras: dict[str, _Camera] = {}
        self._lock = threading.Lock()
        self._queue: deque[_Item] = deque()
        self._size = queue_size
        self._ready = threading.Condition(self._lock)
        self._busy = False
        self._stop = False
        self.dropped = 0
        """Keyframes dropped because the worker was behind (the queue was full)."""
        self.thread = threading.Thread(target=self._run, name="picture-check", daemon=True)

    # --- cameras (any thread) --------------------------------------------------------------

    def watch(self, camera: CameraConfig, tap: PacketTap) -> None:
        """Check this camera's pictures (again, with its new settings after a reload)."""
        settings = camera.picture
        with self._lock:
            known = self._cameras.get(camera.name)
        if not settings.enabled:
            self.forget(camera.name)
            return
        if known is not None:
            known.settings = settings
            known.detector.reconfigure(settings)
            return
        detector = PictureDetector(settings)
        # The references learned before a restart (`references`): judged against at once.
        detector.restore(references.load(self._store.root, camera.name))
        cam = _Camera(
            camera.name,
            settings,
            detector,
            PictureStatus(camera.name, detector.state, self._wall_ms(), None, "", 0, 0.0),
        )
        with self._lock:
            self._cameras[camera.name] = cam
        cam.unsubscribe = tap.subscribe(lambda frame: self._offer(cam, frame), keyframes_only=True)

    def forget(self, camera: str) -> None:
        with self._lock:
            cam = self._cameras.pop(camera, None)
        if cam is not None:
            cam.unsubscribe()

    def states(self) -> dict[str, PictureStatus]:
        with self._lock:
            return {name: cam.status for name, cam in self._cameras.items()}

    def idle(self) -> bool:
        """Nothing queued and nothing being checked (tests wait on this, never sleep)."""
        with self._lock:
            return not self._queue and not self._busy

    # --- the recorder's side: hand on, never block ----------------------------------------

    def _offer(self, cam: _Camera, frame: TapFrame) -> None:
        if frame.arrival - cam.last_taken < cam.settings.check_seconds:
            return
        cam.last_taken = frame.arrival
        item = _Item(cam, frame, self._wall_ms())
        with self._lock:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._ready.notify()

    # --- the worker ----------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._ready.notify()
        for name in list(self._cameras):
            self.forget(name)

    def _run(self) -> None:
        if self._nice:
            try:  # per thread on Linux: recording keeps its priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except OSError as err:
                log.info("picture checks run at normal priority: %s", err)
        with self._lock:
            watched = list(self._cameras)
        self.close_left_open(watched)  # before any new finding of this run
        while True:
            with self._lock:
                self._busy = False
                while not self._queue and not self._stop:
                    self._ready.wait()
                if self._stop:
                    return
                item = self._queue.popleft()
                self._busy = True
            self.check(item.camera, item.frame, item.wall_ms)

    def check(self, cam: _Camera, frame: TapFrame, wall_ms: int) -> None:
        """Decode, judge and record one keyframe (the worker; tests may call it directly)."""
        started = time.thread_time()
        stream = frame.stream
        try:
            picture = decode_keyframe(stream.codec, stream.extradata, frame.data)
            grey = grey_picture(picture)
        except PictureDecodeError as err:
            if not cam.failed:
                log.warning("camera %s: picture check skipped: %s", cam.name, err)
            cam.failed = True
            return
        cam.failed = False
        changes = cam.detector.feed(frame.arrival, grey)
        self._save_references(cam, frame.arrival, changes)
        snapshot: bytes | None = None
        if any(c.state in CONDITIONS for c in changes):
            snapshot = jpeg_snapshot(picture)
        spent = time.thread_time() - started
        status = cam.status
        for change in changes:
            status = self._record(cam, change, frame.arrival, wall_ms, snapshot, status)
        with self._lock:
            cam.status = replace(
                status, checks=status.checks + 1, cpu_seconds=status.cpu_seconds + spent
            )

    def _save_references(self, cam: _Camera, at: float, changes: list[PictureChange]) -> None:
        """Keep the references in the store: when one is learned, then every SAVE_SECONDS."""
        refs = cam.detector.refs
        if not refs:
            return
        learned = any(c.previous == LEARNING and c.state == OK for c in changes)
        if not learned and cam.saved_at is not None and at - cam.saved_at < references.SAVE_SECONDS:
            return
        cam.saved_at = at
        try:
            references.save(self._store.root, cam.name, refs)
        except OSError as err:
            log.error("camera %s: picture reference not saved: %s", cam.name, err)

    def _record(
        self,
        cam: _Camera,
        change: PictureChange,
        arrival: float,
        wall_ms: int,
        jpeg: bytes | None,
        status: PictureStatus,
    ) -> PictureStatus:
        """Index, log and publish one change; returns the camera's new status."""
        onset_ms = wall_ms - round((arrival - change.onset) * 1000)
        if change.previous in CONDITIONS:
            if cam.open_id is not None:
                try:
                    self._store.pictures.close(cam.open_id, onset_ms)
                except StorageError as err:
                    log.error("camera %s: cannot record the end of %s: %s", cam.name,
                              change.previous, err)
            cam.open_id = None
            log.warning("camera %s: picture %s cleared (%s)", cam.name, change.previous,
                        change.state)
        snap: str | None = None
        if change.state in CONDITIONS:
            if jpeg is not None:
                try:
                    snap = self._store.save_snapshot(cam.name, wall_ms, change.state, jpeg)
                except (StorageError, ValueError) as err:
                    log.error("camera %s: snapshot not kept: %s", cam.name, err)
            try:
                row = self._store.pictures.open(
                    cam.name, change.state, onset_ms, wall_ms, change.score, change.detail, snap
                )
                cam.open_id = row.id
            except StorageError as err:
                log.error("camera %s: cannot record picture %s: %s", cam.name, change.state,
                          err)
            log.warning(
                "camera %s: picture %s since %s: %s",
                cam.name,
                change.state,
                iso(onset_ms),
                change.detail,
            )
        elif change.previous == LEARNING:
            log.info("camera %s: picture reference learned", cam.name)
        if self._emit is not None and (change.state in CONDITIONS or change.previous in CONDITIONS):
            try:
                self._emit(
                    PICTURE,
                    cam.name,
                    {
                        "state": change.state,
                        "previous": change.previous,
                        "since": iso(onset_ms),
                        "score": None if change.score is None else round(change.score, 4),
                        "detail": change.detail,
                        "snapshot": snap,
                    },
                )
            except Exception:
                log.exception("picture event not queued")
        return replace(
            status,
            state=change.state,
            since_ms=onset_ms,
            score=change.score,
            detail=change.detail,
            snapshot=snap,
        )

    def close_left_open(self, cameras: list[str]) -> None:
        """End the findings a previous run left open (it stopped while they lasted): the
        picture is judged afresh from now on. Blocking (index writes)."""
        now = self._wall_ms()
        for name in cameras:
            try:
                n = self._store.pictures.close_open(name, now, "ended: the daemon stopped")
            except StorageError as err:
                log.error("camera %s: cannot end its open picture findings: %s", name, err)
                continue
            if n:
                log.info("camera %s: %d picture findings of the last run ended", name, n)
