"""`HealthService`: the daemon's health for `GET /api/health` and `/metrics` (R1).

Overall status: `critical` when a camera has been down longer than
`[api] critical_after_seconds`, a camera cannot start as configured (`config-error`, at once),
or the storage forecast is critical; `degraded` when a camera has been down longer than
`degraded_after_seconds`, a camera's picture is not clear (covered, defocused, re-pointed,
frozen or no signal: `ingest.picture`), the forecast is a warning, purging is held back
because the server clock stepped (`storage.clock`), the server clock is not synchronised (or
its state cannot be read), a camera's newest clock reading is beyond its
`max_clock_offset_seconds`, or an alert destination (`[events]`: the MQTT broker, a webhook)
is unreachable, or the GB/T 28181 platform (`[gb28181]`) is not registered with or its clock
differs from ours by more than 2 s; else `ok`.
The clock verdicts are those of `nvr status` and of the `nvr_clock_synchronized` and
`nvr_camera_clock_offset_seconds` metrics (`ingest.timecheck.notes.camera_clocks`).
"Down" means an enabled camera whose recorder is not recording.

Also owns `RecentErrors`, a logging handler that keeps the last warnings and errors of the
`nvr` loggers for the health report (log lines never carry secrets; see STYLE).

Methods are blocking (index queries) and run on worker threads; `RecentErrors` is
thread-safe (logging calls it from every thread).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nvr.api.cameras import CameraDirectory
from nvr.config import NvrConfig
from nvr.config.models import ApiConfig, CameraConfig
from nvr.ingest.status import PictureStatus
from nvr.ingest.timecheck.notes import CameraClock, camera_clocks
from nvr.storage import IndexCorruptError, Outage, SegmentStore
from nvr.storage.server_clock import ServerClockState, read_server_clock
from nvr.storage.timestamps import DAY_MS, iso

PICTURE_PROBLEMS = ("covered", "defocused", "repointed", "frozen", "no-signal")
"""Picture states that make health `degraded` (issue 18)."""
CONFIG_ERROR = "config-error"
"""Recorder state of a camera that cannot start as configured (e.g. its secret is missing)."""


class ForecastLike(Protocol):
    """What health reads from retention's capacity forecast."""

    @property
    def state(self) -> str: ...

    @property
    def forecast_days(self) -> float: ...

    @property
    def free_bytes(self) -> int: ...

    @property
    def detail(self) -> str: ...


CapacityProvider = Callable[[], ForecastLike | None]


@dataclass(frozen=True)
class GbHealth:
    """The GB/T 28181 registration (`nvr.gb28181.device.GbDevice.status_doc`), for health
    and `/metrics`; built by the daemon, so the API needs no SIP code."""

    server_id: str
    server: str
    registered: bool
    last_error: str
    clock_offset_s: float | None
    """The platform's clock minus ours at the last registration (None: no Date seen)."""
    clock_finding: str
    """A warning when the offset is beyond `clock_limit_s`, else empty."""
    clock_limit_s: float
    streams: int


GbProvider = Callable[[], GbHealth | None]


@dataclass(frozen=True)
class Capacity:
    state: str
    """ok | warning | critical | unknown"""
    forecast_days: float | None
    """None when unknown or unbounded (nothing recording)."""
    free_bytes: int
    detail: str
    source: str
    """`retention` (live forecast) or `index` (last recorded state change) or `none`."""


@dataclass(frozen=True)
class CameraHealth:
    name: str
    state: str
    down_for_s: float | None
    last_segment_age_s: float | None
    outages_24h: tuple[Outage, ...]
    gap_seconds_24h: float
    window_days: int
    oldest_segment_ms: int | None
    clocks: tuple[CameraClock, ...] = ()
    """The newest clock reading of each method (ONVIF, RTCP) and its limit."""
    picture: PictureStatus | None = None
    """Picture health (issue 18); None when not checked."""


@dataclass(frozen=True)
class ErrorLine:
    at_ms: int
    level: str
    logger: str
    message: str


@dataclass(frozen=True)
class Health:
    status: str
    reasons: tuple[str, ...]
    cameras: tuple[CameraHealth, ...]
    capacity: Capacity
    retention_compliant: bool | None
    """None while the forecast is unknown."""
    retention_detail: str
    errors: tuple[ErrorLine, ...]
    at_ms: int
    retention_held: bool = False
    """Purging is held back: the server clock stepped (what to do: `retention_clock`)."""
    retention_clock: str = ""
    clock_synchronised: bool | None = None
    """The kernel's sync state of the server clock (adjtimex); None if it cannot be read."""
    clock_detail: str = ""
    gb28181: GbHealth | None = None
    """The GB/T 28181 registration; None without `[gb28181]`."""


class RecentErrors(logging.Handler):
    """Keeps the last `size` WARNING-or-worse records of the `nvr` loggers."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self._lines: collections.deque[ErrorLine] = collections.deque(maxlen=size)
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        line = ErrorLine(int(record.created * 1000), record.levelname, record.name, message[:500])
        with self._mutex:
            self._lines.append(line)

    def lines(self) -> tuple[ErrorLine, ...]:
        with self._mutex:
            return tuple(self._lines)


def _camera_line(line: ErrorLine, visible: Callable[[str], bool]) -> bool:
    prefix = "nvr.camera."
    return line.logger.startswith(prefix) and visible(line.logger.removeprefix(prefix))


class HealthService:
    def __init__(
        self,
        config: NvrConfig,
        api: ApiConfig,
        store: SegmentStore,
        cameras: CameraDirectory,
        capacity: CapacityProvider | None,
        errors: RecentErrors,
        server_clock: Callable[[], ServerClockState] = read_server_clock,
        event_problems: Callable[[], list[str]] | None = None,
        gb28181: GbProvider | None = None,
    ) -> None:
        self._event_problems = event_problems
        self.gb28181: GbProvider = gb28181 or (lambda: None)
        self._config = config
        self._server_clock = server_clock
        self._api = api
        self._store = store
        self._cameras = cameras
        self._capacity = capacity
        self.errors = errors

    def reconfigure(self, config: NvrConfig) -> None:
        """A reloaded config (on the event loop; readers see the old or the new one)."""
        self._config = config

    def capacity(self) -> Capacity:
        """The live forecast from retention if the daemon runs it, else the last state
        recorded in the index; free space is always measured now."""
        free = self._store.free_bytes()
        fc = self._capacity() if self._capacity is not None else None
        if fc is not None:
            days = fc.forecast_days if math.isfinite(fc.forecast_days) else None
            return Capacity(fc.state, days, free, fc.detail, "retention")
        history = self._store.capacity.history(limit=1)
        if history:
            last = history[-1]
            days = last.forecast_days if last.forecast_days >= 0 else None
            return Capacity(last.state, days, free, last.detail, "index")
        return Capacity("unknown", None, free, "no forecast yet", "none")

    def clock_limit(self, name: str) -> float:
        """The camera's `max_clock_offset_seconds` (the default for one no longer configured)."""
        cam = next((c for c in self._config.cameras if c.name == name), None)
        if cam is not None:
            return cam.max_clock_offset_seconds
        default = CameraConfig.model_fields["max_clock_offset_seconds"].default
        return float(default)

    def server_clock(self) -> tuple[bool | None, str]:
        """Whether the kernel says the server clock is synchronised (None: unreadable), and
        what `nvr status` says about it."""
        try:
            state = self._server_clock()
        except OSError as err:
            return None, f"unknown (cannot read its synchronisation state: {err})"
        return state.synchronised, state.describe()

    def camera(self, name: str, now: int) -> CameraHealth:
        live = self._cameras.live()
        summary = self._cameras.summary(name, live, now)
        status = live.get(name)
        down_for: float | None = None
        if status is not None and status.state != "recording":
            down_for = max(0.0, (now - status.since_ms) / 1000)
        outages = tuple(self._store.ledger.outages(name, now - DAY_MS))
        gap_ms = 0
        for o in outages:
            lo = max(o.start_ms, now - DAY_MS)
            hi = o.end_ms if o.end_ms is not None else now
            gap_ms += max(0, hi - lo)
        oldest = self._store.first_segment(name)
        return CameraHealth(
            clocks=tuple(camera_clocks(self._store, name, self.clock_limit(name))),
            name=name,
            state=summary.state,
            down_for_s=down_for,
            last_segment_age_s=(
                (now - summary.last_segment_end_ms) / 1000
                if summary.last_segment_end_ms is not None
                else None
            ),
            outages_24h=outages,
            gap_seconds_24h=gap_ms / 1000,
            window_days=self._store.window_days(name),
            oldest_segment_ms=oldest.start_ms if oldest else None,
            picture=summary.picture,
        )

    def report(self, visible: Callable[[str], bool], everything: bool = False) -> Health:
        """The health report; per-camera details only for cameras `visible` allows, the
        overall status over all of them. Log lines only from the loggers of visible cameras
        unless the user sees `everything` (other lines may name any camera)."""
        now = self._cameras.now()
        reasons: list[str] = []
        status = "ok"

        def worse(level: str) -> None:
            nonlocal status
            order = ("ok", "degraded", "critical")
            if order.index(level) > order.index(status):
                status = level

        enabled = {c.name for c in self._config.cameras if c.enabled}
        hidden_down = 0
        hidden_clock = 0
        shown: list[CameraHealth] = []
        live = self._cameras.live()
        damaged = next((st for st in live.values() if st.state == "index-damaged"), None)
        if damaged is not None:
            # Recording is paused for every camera until the index is sound: critical at once.
            worse("critical")
            reasons.append(f"index damaged, recording paused: {damaged.detail}")
        for name in sorted(self._cameras.known()):
            st = live.get(name)
            if name in enabled and st is not None and st.state != "recording":
                down_s = max(0.0, (now - st.since_ms) / 1000)
                level = (
                    "critical"
                    # a camera that cannot start as configured does not heal by waiting
                    if down_s > self._api.critical_after_seconds or st.state == CONFIG_ERROR
                    else "degraded"
                    if down_s > self._api.degraded_after_seconds
                    else "ok"
                )
                if level != "ok":
                    worse(level)
                    if visible(name):
                        why = f": {st.detail}" if st.state == CONFIG_ERROR else ""
                        reasons.append(f"camera {name} {st.state} for {down_s:.0f} s{why}")
                    else:
                        hidden_down += 1
            try:
                clocks = camera_clocks(self._store, name, self.clock_limit(name))
                if visible(name):
                    shown.append(self.camera(name, now))
            except IndexCorruptError as err:
                if damaged is None:
                    worse("critical")
                    reasons.append(f"index damaged: {err}")
                break
            for clock in clocks:
                if clock.warning:
                    worse("degraded")
                    if visible(name):
                        reasons.append(f"camera {name} clock ({clock.source}): {clock.describe()}")
                    else:
                        hidden_clock += 1
        hidden_picture = 0
        for name, picture in sorted(self._cameras.pictures().items()):
            if picture.state in PICTURE_PROBLEMS and name in enabled:
                worse("degraded")  # recording goes on, but what it records is useless
                if visible(name):
                    reasons.append(
                        f"camera {name} picture {picture.state} since {iso(picture.since_ms)}: "
                        f"{picture.detail}"
                    )
                else:
                    hidden_picture += 1
        if hidden_picture:
            plural = "s" if hidden_picture > 1 else ""
            reasons.append(f"{hidden_picture} other camera picture{plural} not clear")
        if hidden_clock:
            plural = "s" if hidden_clock > 1 else ""
            reasons.append(f"{hidden_clock} other camera clock reading{plural} beyond the limit")
        if hidden_down:
            reasons.append(f"{hidden_down} other camera{'s' if hidden_down > 1 else ''} down")
        synchronised, clock_detail = self.server_clock()
        if not synchronised:
            # The same verdict as `nvr status`'s WARNING line and `nvr_clock_synchronized`.
            worse("degraded")
            reasons.append(f"server clock {clock_detail}")
        cap = self.capacity()
        if cap.state == "critical":
            worse("critical")
            reasons.append(f"storage forecast critical: {cap.detail}")
        elif cap.state == "warning":
            worse("degraded")
            reasons.append(f"storage forecast warning: {cap.detail}")
        window = max(
            [self._config.retention.days]
            + [self._store.window_days(c.name) for c in self._config.cameras]
        )
        if cap.state == "unknown":
            compliant: bool | None = None
            detail = "not enough recorded footage yet to forecast"
        elif cap.forecast_days is None:
            compliant, detail = True, "nothing is recording"
        else:
            compliant = cap.forecast_days >= window
            detail = f"the disk holds {cap.forecast_days:.1f} days; the window is {window} days"
        verdict = self._store.clock_verdict()
        if verdict.held:
            worse("degraded")
            reasons.append(f"purging held back: {verdict.reason}. {verdict.advice}")
        for problem in self._event_problems() if self._event_problems is not None else []:
            # Nobody hears of the next fault while an alert destination is down.
            worse("degraded")
            reasons.append(problem)
        gb = self.gb28181()
        if gb is not None and not gb.registered:
            worse("degraded")  # the police platform cannot reach this site's video (R9)
            why = f": {gb.last_error}" if gb.last_error else ""
            reasons.append(f"gb28181: not registered with {gb.server_id} at {gb.server}{why}")
        if gb is not None and gb.clock_finding:
            worse("degraded")  # the same verdict as `nvr status`'s WARNING gb28181 line
            reasons.append(f"gb28181: {gb.clock_finding}")
        return Health(
            gb28181=gb,
            clock_synchronised=synchronised,
            clock_detail=clock_detail,
            retention_held=verdict.held,
            retention_clock=verdict.describe(),
            status=status,
            reasons=tuple(reasons),
            cameras=tuple(shown),
            capacity=cap,
            retention_compliant=compliant,
            retention_detail=detail,
            errors=tuple(e for e in self.errors.lines() if everything or _camera_line(e, visible)),
            at_ms=now,
        )
