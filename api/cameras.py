"""`CameraDirectory`: which cameras exist, their live state and their recorded timeline.

Cameras are those in the config plus those that only have footage in the index (removed from
the config, footage still kept). Live state comes from the recorders (`LiveStatus`, the
ingest supervisor in the daemon); recorded spans and gaps come from the index, each gap with
the causes the outage ledger gives for it.

Methods are blocking (index queries) and run on worker threads via `asyncio.to_thread`; the
live snapshot is itself thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from nvr.config import NvrConfig
from nvr.ingest.status import PictureStatus, RecorderStatus
from nvr.storage import SegmentStore
from nvr.storage.timestamps import DAY_MS, now_ms

SPAN_TOLERANCE_MS = 500
"""Segments closer than this are one recorded span (a re-anchored clock, not an outage)."""
BITRATE_WINDOW_MS = 10 * 60_000
KNOWN_TTL_S = 30.0


class LiveStatus(Protocol):
    """The recorders' live state (the ingest `Supervisor`)."""

    def snapshot(self) -> list[RecorderStatus]: ...


@runtime_checkable
class PictureSource(Protocol):
    """Each camera's picture health (the ingest `Supervisor`'s picture monitor)."""

    def picture_states(self) -> dict[str, PictureStatus]: ...


class NoRecorders:
    """Live status when the API runs without recorders (tools, tests of the index alone)."""

    def snapshot(self) -> list[RecorderStatus]:
        return []


@dataclass(frozen=True)
class CameraSummary:
    name: str
    state: str
    """recording | connecting | reconnecting | stalled | storage-full | storage-error |
    paused (disabled in the config) | not-running (recorder absent) | removed (footage only)"""
    state_since_ms: int | None
    detail: str
    last_segment_end_ms: int | None
    bitrate_bps: float | None
    """Over the segments that ended in the last 10 minutes."""
    recorded_share_24h: float
    reconnects: int
    stored_bytes: int = 0
    """Bytes of this camera's footage on disk."""
    locked_bytes: int = 0
    """Of those, bytes under an active lock (never purged while it lasts)."""
    oldest_footage_ms: int | None = None
    held_days: float | None = None
    """Days from the oldest footage kept to now."""
    picture: PictureStatus | None = None
    """Picture health (issue 18); None when the camera's pictures are not checked (checks
    disabled, the camera not running, or the API running without recorders)."""


@dataclass(frozen=True)
class Span:
    start_ms: int
    end_ms: int
    segments: int
    bytes: int


@dataclass(frozen=True)
class GapCause:
    cause: str
    detail: str
    outage_start_ms: int
    outage_end_ms: int | None


@dataclass(frozen=True)
class Gap:
    start_ms: int
    end_ms: int
    causes: tuple[GapCause, ...]
    """Outage-ledger rows overlapping the gap; `in-progress` for the segment being written;
    `unknown` when the ledger has nothing (which itself deserves a look)."""


@dataclass(frozen=True)
class Timeline:
    camera: str
    start_ms: int
    end_ms: int
    spans: tuple[Span, ...]
    gaps: tuple[Gap, ...]
    recorded_ms: int


class CameraDirectory:
    def __init__(
        self,
        config: NvrConfig,
        store: SegmentStore,
        live: LiveStatus,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._live = live
        self._clock = clock or now_ms
        self._known: frozenset[str] = frozenset(c.name for c in config.cameras)
        self._known_at = float("-inf")
        self._lock = threading.Lock()

    def reconfigure(self, config: NvrConfig) -> None:
        """A reloaded config (on the event loop; readers see the old or the new one)."""
        self._config = config
        with self._lock:
            self._known_at = float("-inf")  # cameras added by it are known at once

    def now(self) -> int:
        return self._clock()

    def known(self) -> frozenset[str]:
        """Configured cameras and cameras with footage in the index (refreshed every 30 s)."""
        with self._lock:
            fresh = time.monotonic() - self._known_at < KNOWN_TTL_S
            if fresh:
                return self._known
        names = frozenset(c.name for c in self._config.cameras) | frozenset(self._store.cameras())
        with self._lock:
            self._known = names
            self._known_at = time.monotonic()
        return names

    def live(self) -> dict[str, RecorderStatus]:
        return {s.camera: s for s in self._live.snapshot()}

    def pictures(self) -> dict[str, PictureStatus]:
        """Each checked camera's picture health (empty without recorders)."""
        if isinstance(self._live, PictureSource):
            return self._live.picture_states()
        return {}

    def summary(self, name: str, live: dict[str, RecorderStatus], now: int) -> CameraSummary:
        configured = {c.name: c for c in self._config.cameras}
        status = live.get(name)
        cam = configured.get(name)
        if status is not None:
            state, since, detail, reconnects = (
                status.state,
                status.since_ms,
                status.detail,
                status.reconnects,
            )
        elif cam is not None and not cam.enabled:
            state, since, detail, reconnects = "paused", None, "disabled in the config", 0
        elif cam is not None:
            state, since, detail, reconnects = "not-running", None, "no recorder is running", 0
        else:
            state, since, detail, reconnects = "removed", None, "not in the config", 0
        last = self._store.last_segment(name)
        stats = self._store.stats(name, now - BITRATE_WINDOW_MS)
        bitrate = stats.bytes * 8 * 1000 / stats.media_ms if stats.media_ms > 0 else None
        share = self._store.recorded_ms(name, now - DAY_MS, now) / DAY_MS
        kept = self._store.camera_storage(name)
        return CameraSummary(
            stored_bytes=kept.stored_bytes,
            locked_bytes=kept.locked_bytes,
            oldest_footage_ms=kept.oldest_ms,
            held_days=None if kept.oldest_ms is None else max(0, now - kept.oldest_ms) / DAY_MS,
            name=name,
            state=state,
            state_since_ms=since,
            detail=detail,
            last_segment_end_ms=last.end_ms if last else None,
            bitrate_bps=bitrate,
            recorded_share_24h=min(1.0, share),
            reconnects=reconnects,
            picture=self.pictures().get(name),
        )

    def summaries(self, names: list[str]) -> list[CameraSummary]:
        now = self._clock()
        live = self.live()
        return [self.summary(n, live, now) for n in sorted(names)]

    def timeline(self, camera: str, start_ms: int, end_ms: int) -> Timeline:
        """Recorded spans and gaps (with causes) of `camera` within [start_ms, end_ms)."""
        now = self._clock()
        segments = self._store.segments(camera, start_ms, end_ms)
        spans: list[Span] = []
        for seg in segments:
            lo, hi = max(seg.start_ms, start_ms), min(seg.end_ms, end_ms)
            if spans and lo - spans[-1].end_ms <= SPAN_TOLERANCE_MS:
                prev = spans[-1]
                spans[-1] = Span(
                    prev.start_ms, max(prev.end_ms, hi), prev.segments + 1, prev.bytes + seg.bytes
                )
            else:
                spans.append(Span(lo, hi, 1, seg.bytes))
        horizon = min(end_ms, now)
        holes: list[tuple[int, int]] = []
        cursor = start_ms
        for span in spans:
            if span.start_ms - cursor > SPAN_TOLERANCE_MS:
                holes.append((cursor, span.start_ms))
            cursor = max(cursor, span.end_ms)
        if horizon - cursor > SPAN_TOLERANCE_MS:
            holes.append((cursor, horizon))
        outages = self._store.ledger.outages(camera, start_ms) if holes else []
        status = self.live().get(camera)
        gaps: list[Gap] = []
        for lo, hi in holes:
            causes = [
                GapCause(o.cause, o.detail, o.start_ms, o.end_ms)
                for o in outages
                if o.start_ms < hi and (o.end_ms is None or o.end_ms > lo)
            ]
            tail = hi == horizon and horizon == now
            if not causes and tail and status is not None and status.state == "recording":
                causes = [GapCause("in-progress", "segment being written", lo, None)]
            if not causes:
                causes = [GapCause("unknown", "no outage recorded for this gap", lo, hi)]
            gaps.append(Gap(lo, hi, tuple(causes)))
        recorded = sum(s.end_ms - s.start_ms for s in spans)
        return Timeline(camera, start_ms, end_ms, tuple(spans), tuple(gaps), recorded)
