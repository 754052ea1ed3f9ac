"""Thread `clock-check`: `ClockMonitor` reads the server clock every minute and runs the camera
clock checks that are due (`CameraClockCheck`: ONVIF cameras, on each connect and hourly).
Started and stopped by the `Supervisor`; `adopt()` is how each new opener gets its notes
(`ClockAware`) and is scheduled. Imports go down: `ingest.timecheck.notes`,
`storage` (and its `storage.server_clock`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from nvr.ingest.timecheck.notes import ClockNotes
from nvr.storage import SegmentStore
from nvr.storage.server_clock import ServerClockState, read_server_clock
from nvr.storage.timestamps import now_ms

log = logging.getLogger("nvr.time")

CAMERA_CHECK_INTERVAL_S = 3600.0
"""How often an ONVIF camera's clock is read (besides on each connect)."""
SERVER_CHECK_INTERVAL_S = 60.0


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
        wall_ms: Callable[[], int] = now_ms,
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
