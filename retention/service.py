"""`RetentionService`: the daemon's retention loop on the asyncio event loop.

Every `interval` seconds: purge footage past its window and not locked (driven by the index,
in batches, through the storage door which re-checks every segment), then compute the
capacity forecast and record state changes. Blocking work runs via `asyncio.to_thread`.

A pass runs only when the server clock is not suspicious (`storage.clock`: no step of the
wall clock against the recorder's uptime since it was last trusted) or an operator confirmed
it; what it deletes is also old enough by the evidence time (docs/retention-clock.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from nvr.config import NvrConfig
from nvr.retention.capacity import Forecast, forecast
from nvr.retention.policy import SegmentSpan, plan_purge
from nvr.storage import ClockSuspicious, RetentionViolation, SegmentStore, StorageError
from nvr.storage.clock import ClockVerdict
from nvr.storage.timestamps import DAY_MS

log = logging.getLogger("nvr.retention")

ACTOR = "retention"
BATCH = 5000


class RetentionService:
    def __init__(
        self, config: NvrConfig, store: SegmentStore, clock: Callable[[], int] | None = None
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock or store.now
        self.last_forecast: Forecast | None = None
        self.last_verdict: ClockVerdict | None = None
        """The clock verdict of the last pass (health and status show a hold)."""
        self.passes = 0
        """Passes `run` has finished in this process (held ones and failed ones too): the
        daemon publishes it in status.json, so a test or an operator waits for the next
        pass instead of guessing how long one takes."""
        self.last_pass_ms: int | None = None
        """The store's clock when the last pass finished."""
        self.listener: Callable[[str, str | None, dict[str, Any]], None] | None = None
        """Alerts out (`nvr.events.EventBus.emit`): told the first forecast of the run and
        every change of its state; never blocks."""

    def reconfigure(self, config: NvrConfig) -> None:
        """A reloaded config (its cameras' windows count in the next forecast); on the loop."""
        self._config = config

    def purge_once(self, *, clock_confirmed_by: str | None = None) -> int:
        """One purge pass over every camera in the index; returns segments deleted.

        Nothing while the server clock is suspicious, unless `clock_confirmed_by` (an
        operator who checked it, already audited by `SegmentStore.confirm_clock`).
        Candidates come from index queries that skip locked footage (so locked footage never
        stalls a pass, however much of it there is) and are deleted in guarded batches of
        `BATCH`."""
        verdict = self._store.clock_verdict()
        before, self.last_verdict = self.last_verdict, verdict
        if verdict.held and clock_confirmed_by is None:
            if before is None or before.reason != verdict.reason:
                log.error("purging held back: %s. %s", verdict.reason, verdict.advice)
            return 0
        if before is not None and before.held and not verdict.held:
            log.warning("purging resumed: the server clock is trusted again")
        now = self._clock()
        deleted = 0
        while True:
            candidates = self._store.purge_candidates(
                limit=BATCH, clock_confirmed=clock_confirmed_by is not None
            )
            if not candidates:
                break
            full = len(candidates) == BATCH
            spans = [SegmentSpan(s.id, s.camera, s.start_ms, s.end_ms) for s in candidates]
            locks = self._store.locks.find(
                start_ms=min(s.start_ms for s in spans), end_ms=max(s.end_ms for s in spans)
            )
            ids = plan_purge(spans, locks, now_ms=now, window_days=self._store.window_days)
            if not ids:
                break
            try:
                deleted += len(
                    self._store.delete_segments(
                        ids, actor=ACTOR, clock_confirmed_by=clock_confirmed_by
                    )
                )
            except ClockSuspicious as err:
                log.error("purge refused by storage: %s", err.reason)
                break
            except RetentionViolation as err:
                # The door disagreed with the plan (a lock or a longer window committed since
                # it was made, or a bug): never a reason to force it; the next pass re-plans.
                log.warning("purge refused by storage: %s", err.reason)
                break
            if not full:
                break
        if deleted:
            log.info("purged %d segments past their retention window", deleted)
        return deleted

    def capacity_once(self) -> Forecast:
        """Forecast from the last 24 h of cameras that recorded in it; record state changes."""
        now = self._clock()
        since = now - DAY_MS
        total_bytes = total_media = 0
        active = 0
        for camera in self._store.cameras():
            st = self._store.stats(camera, since)
            total_bytes += st.bytes
            total_media += st.media_ms
            active += 1 if st.segments else 0
        # The longest window any footage was promised: stored ones included (a camera
        # dropped from the config keeps its footage for its own window).
        window = max(
            [self._config.retention.days]
            + [self._store.window_days(c) for c in self._store.cameras()]
            + [c.retention_days or 0 for c in self._config.cameras]
        )
        fc = forecast(
            recorded_bytes_24h=total_bytes,
            recorded_media_ms_24h=total_media,
            cameras_recording=active,
            free_bytes=self._store.free_bytes(),
            reserve_bytes=self._config.storage.reserve_bytes,
            stored_bytes=self._store.stored_bytes(),
            locked_bytes=self._store.locked_bytes(),
            window_days=window,
        )
        days = fc.forecast_days if math.isfinite(fc.forecast_days) else -1.0
        changed = self._store.capacity.record(fc.state, days, fc.free_bytes, fc.detail)
        if changed:
            level = logging.WARNING if fc.state in ("warning", "critical") else logging.INFO
            log.log(level, "storage capacity %s: %s", fc.state, fc.detail)
        before, self.last_forecast = self.last_forecast, fc
        if self.listener is not None and (changed or before is None or before.state != fc.state):
            self.listener(
                "storage-forecast",
                None,
                {
                    "state": fc.state,
                    "forecast_days": round(days, 1) if days >= 0 else None,
                    "window_days": fc.window_days,
                    "free_bytes": fc.free_bytes,
                    "detail": fc.detail,
                },
            )
        return fc

    def progress(self) -> dict[str, Any]:
        """What status.json says of retention: passes finished, when the last one finished,
        and whether it was held back by the clock."""
        verdict = self.last_verdict
        return {
            "passes": self.passes,
            "last_pass_ms": self.last_pass_ms,
            "held": verdict.held if verdict is not None else None,
        }

    async def run(self, stop: asyncio.Event, interval: float | None = None) -> None:
        """A pass every `interval` seconds (the config's) until `stop`; `passes` counts them."""
        if interval is None:
            interval = float(self._config.retention.interval_seconds)
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.purge_once)
                await asyncio.to_thread(self.capacity_once)
            except StorageError as err:
                log.error("retention pass failed (will retry): %s", err)
            self.passes += 1
            self.last_pass_ms = self._clock()
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
