"""Where clock findings go: `CameraClockReading` (one reading of a camera's clock, by ONVIF or
RTCP) and `ClockNotes`, which writes them to the index: `events` rows (`clock-offset`, value in
seconds; the ONVIF opener adds `device-info`), and audit rows (`clock-warning` /
`clock-recovered`, actor `system`) when a camera's offset or the server's sync state crosses
into or out of a warning; and reading them back: `camera_clocks`, each camera's newest reading
by each method, which `nvr status`, `/api/health` and `/metrics` judge a camera's clock by.
Thread-safe: the recorder threads and the `clock-check` thread call it. Warnings beginning and
clearing are also told to `listener` (alerts out, `nvr.events`). Imports go down to
`storage` (and its `storage.server_clock`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvr.storage import SegmentStore, StorageError
from nvr.storage.server_clock import ServerClockState
from nvr.storage.timestamps import now_ms

log = logging.getLogger("nvr.time")

CLOCK_OFFSET = "clock-offset"
"""Stream-event kind of a camera clock reading (value: the offset in seconds)."""
DEVICE_INFO = "device-info"
"""Stream-event kind of a camera's device information (JSON detail, from ONVIF)."""


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


class ClockNotes:
    """Writes clock findings to the index. Warnings are audited when they begin and when they
    clear (so a steady 30 s offset is one audit row per daemon run, not one per hour)."""

    def __init__(self, store: SegmentStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._warning: dict[tuple[str, str], bool] = {}
        self._device: dict[str, str] = {}
        self.listener: Callable[[str, str | None, dict[str, Any]], None] | None = None
        """Alerts out (`nvr.events.EventBus.emit`): told (kind, camera or None for the
        server, data) when a warning begins or clears; never blocks."""

    def _tell(self, camera: str | None, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        try:
            self.listener("clock", camera, data)
        except Exception:
            log.exception("clock event not queued")

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
            self._store.events.add(camera, reading.at_ms, CLOCK_OFFSET, detail, reading.offset_s)
            change = self._transition((camera, reading.source), warn)
            if change is not None:
                self._tell(
                    camera,
                    {
                        "state": "warning" if change else "ok",
                        "source": reading.source,
                        "offset_seconds": round(reading.offset_s, 3),
                        "limit_seconds": limit_s,
                        "detail": detail,
                    },
                )
                self._store.audit.append(
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
                kept = [e for e in self._store.events.since(camera) if e.kind == DEVICE_INFO]
                known = kept[-1].detail if kept else ""
            if detail != known:
                when = now_ms() if at_ms is None else at_ms
                self._store.events.add(camera, when, DEVICE_INFO, detail)
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
        self._tell(
            None,
            {
                "state": "warning" if change else "ok",
                "source": "server",
                "detail": state.describe(),
            },
        )
        try:
            self._store.audit.append(
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
    for event in store.events.latest(camera, CLOCK_OFFSET):
        source = event.detail.split(":", 1)[0]
        if event.value is not None and source not in newest:
            newest[source] = CameraClock(source, event.at_ms, event.value, limit_s)
    return [newest[k] for k in sorted(newest)]
