"""Prometheus metrics (`GET /metrics`), built at scrape time from the recorders' live state and
the index, in a registry of our own (no process-global state). Per-camera series only for the
cameras the scraping user may see. Also: `nvr_build_info`, the process collector's
`process_*` series, and `HttpMetrics` (requests by route template and status, counted by the
access-log middleware on the event loop; prometheus-client's metrics are thread-safe).

Names follow Prometheus conventions: base units (`_bytes`, `_seconds`, `_bits_per_second`,
`_ratio`), a window before the unit (`_24h_seconds`), counters end in `_total`. Renamed in
issue 16 (old -> new): `nvr_camera_gap_seconds_24h` -> `nvr_camera_gap_24h_seconds`,
`nvr_camera_recorded_ratio_24h` -> `nvr_camera_recorded_24h_ratio`, `nvr_camera_bitrate_bps` ->
`nvr_camera_recorded_10m_bits_per_second`, `nvr_storage_forecast_days` ->
`nvr_storage_forecast_seconds`.

`render` is blocking (index queries): call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nvr.api.cameras import CameraDirectory
from nvr.api.health import HealthService
from nvr.api.playback import PlaybackService
from nvr.ingest.timecheck.notes import camera_clocks
from nvr.storage import SegmentStore
from nvr.storage.timestamps import DAY_MS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = (
    "recording",
    "connecting",
    "reconnecting",
    "stalled",
    "storage-full",
    "storage-error",
    "index-damaged",
    "paused",
    "not-running",
    "removed",
    "starting",
    "stopped",
)


PICTURE_STATES = ("ok", "learning", "covered", "defocused", "repointed", "frozen", "no-signal")


UNMATCHED = "unmatched"
"""The route label of a request no route matched (a 404 or a scan): never the raw path, which
would make a series per URL anyone sends."""


class HttpMetrics:
    """`nvr_http_requests_total{method,route,status}` and
    `nvr_http_request_duration_seconds{method,route}`, by route template (`/api/cameras/{name}`)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "nvr_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=None,
        )
        self.duration = Histogram(
            "nvr_http_request_duration_seconds",
            "Time to answer an HTTP request (until the last byte was handed to the server)",
            ["method", "route"],
            registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        known = method if method in _METHODS else "other"
        where = route or UNMATCHED
        self.requests.labels(known, where, str(status)).inc()
        self.duration.labels(known, where).observe(seconds)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def version() -> str:
    try:
        return importlib.metadata.version("nvr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_COUNTER, _GAUGE = CounterMetricFamily, GaugeMetricFamily
CAMERA_SERIES: tuple[
    tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, tuple[str, ...]], ...
] = (
    (_COUNTER, "recorded_bytes", "Bytes of segments written since the daemon started", ()),
    (_COUNTER, "segments", "Segments written since the daemon started", ()),
    (_COUNTER, "reconnects", "Reconnections since the daemon started", ()),
    (
        _COUNTER,
        "gap_seconds",
        "Seconds of recording lost to outages, over the whole outage ledger",
        (),
    ),
    (_GAUGE, "gap_24h_seconds", "Seconds lost to outages in the last 24 h", ()),
    (_GAUGE, "stalled", "1 while the camera is stalled (connected, no media)", ()),
    (_GAUGE, "recording", "1 while the camera records", ()),
    (_GAUGE, "state", "The recorder's state (1 for the current one)", ("state",)),
    (_GAUGE, "last_segment_age_seconds", "Seconds since the end of the newest indexed segment", ()),
    (_GAUGE, "recorded_24h_ratio", "Share of the last 24 h that is recorded", ()),
    (_GAUGE, "recorded_10m_bits_per_second", "Recorded bitrate over the last 10 minutes", ()),
    (
        _GAUGE,
        "clock_offset_seconds",
        "The camera clock minus the server clock, newest reading of each method",
        ("method",),
    ),
    (_GAUGE, "stored_bytes", "Bytes of the camera's footage on disk", ()),
    (_GAUGE, "locked_bytes", "Bytes of the camera's footage under an active lock", ()),
    (
        _GAUGE,
        "oldest_footage_timestamp_seconds",
        "Start of the camera's oldest footage kept (Unix time)",
        (),
    ),
    (_GAUGE, "held_seconds", "Time from the camera's oldest footage kept to now", ()),
    (
        _GAUGE,
        "picture_state",
        "The camera's picture health (1 for the current one; issue 18)",
        ("state",),
    ),
    (
        _GAUGE,
        "picture_state_since_timestamp_seconds",
        "When the camera's picture state began (Unix time)",
        (),
    ),
    (
        _COUNTER,
        "picture_checks",
        "Keyframes checked for picture health since the daemon started",
        (),
    ),
    (
        _COUNTER,
        "picture_cpu_seconds",
        "CPU time spent decoding and judging keyframes for picture health",
        (),
    ),
)
"""The per-camera families in the order they are exposed: kind, name after `nvr_camera_`,
help, and the labels after `camera`."""


class _Collector(Collector):
    def __init__(
        self,
        store: SegmentStore,
        cameras: CameraDirectory,
        health: HealthService,
        playback: PlaybackService,
        visible: Callable[[str], bool],
    ) -> None:
        self._store = store
        self._cameras = cameras
        self._health = health
        self._playback = playback
        self._visible = visible

    def collect(self) -> Iterator[Metric]:
        now = self._cameras.now()
        live = self._cameras.live()
        names = sorted(n for n in self._cameras.known() if self._visible(n))
        series = {
            suffix: kind(f"nvr_camera_{suffix}", doc, labels=["camera", *more])
            for kind, suffix, doc, more in CAMERA_SERIES
        }
        pictures = self._cameras.pictures()
        for name in names:
            pic = pictures.get(name)
            if pic is not None:
                for s in PICTURE_STATES:
                    series["picture_state"].add_metric([name, s], 1.0 if pic.state == s else 0.0)
                series["picture_state_since_timestamp_seconds"].add_metric(
                    [name], pic.since_ms / 1000
                )
                series["picture_checks"].add_metric([name], pic.checks)
                series["picture_cpu_seconds"].add_metric([name], pic.cpu_seconds)
            for clock in camera_clocks(self._store, name, self._health.clock_limit(name)):
                series["clock_offset_seconds"].add_metric([name, clock.source], clock.offset_s)
            st = live.get(name)
            summary = self._cameras.summary(name, live, now)
            series["recorded_bytes"].add_metric([name], st.bytes_written if st else 0)
            series["segments"].add_metric([name], st.segments_written if st else 0)
            series["reconnects"].add_metric([name], st.reconnects if st else 0)
            total = 0
            recent = 0
            for o in self._store.ledger.outages(name, 0):
                end = o.end_ms if o.end_ms is not None else now
                total += max(0, end - o.start_ms)
                recent += max(0, end - max(o.start_ms, now - DAY_MS)) if end > now - DAY_MS else 0
            series["gap_seconds"].add_metric([name], total / 1000)
            series["gap_24h_seconds"].add_metric([name], recent / 1000)
            series["stalled"].add_metric([name], 1.0 if summary.state == "stalled" else 0.0)
            series["recording"].add_metric([name], 1.0 if summary.state == "recording" else 0.0)
            for s in STATES:
                series["state"].add_metric([name, s], 1.0 if summary.state == s else 0.0)
            if summary.last_segment_end_ms is not None:
                series["last_segment_age_seconds"].add_metric(
                    [name], (now - summary.last_segment_end_ms) / 1000
                )
            series["recorded_24h_ratio"].add_metric([name], summary.recorded_share_24h)
            series["stored_bytes"].add_metric([name], summary.stored_bytes)
            series["locked_bytes"].add_metric([name], summary.locked_bytes)
            if summary.oldest_footage_ms is not None:
                series["oldest_footage_timestamp_seconds"].add_metric(
                    [name], summary.oldest_footage_ms / 1000
                )
                series["held_seconds"].add_metric(
                    [name], max(0, now - summary.oldest_footage_ms) / 1000
                )
            if summary.bitrate_bps is not None:
                series["recorded_10m_bits_per_second"].add_metric([name], summary.bitrate_bps)
        yield from series.values()
        synchronised, _detail = self._health.server_clock()
        yield GaugeMetricFamily(
            "nvr_clock_synchronized",
            "1 while the kernel says the server clock is synchronised (0 also when unreadable)",
            value=1.0 if synchronised else 0.0,
        )
        gb = self._health.gb28181()
        if gb is not None:
            yield GaugeMetricFamily(
                "nvr_gb28181_registered",
                "1 while registered with the GB/T 28181 platform",
                value=1.0 if gb.registered else 0.0,
            )
            gb_offset = GaugeMetricFamily(
                "nvr_gb28181_platform_clock_offset_seconds",
                "The GB/T 28181 platform's clock minus the server clock, at the last registration",
            )
            if gb.clock_offset_s is not None:
                gb_offset.add_metric([], gb.clock_offset_s)
            yield gb_offset
            yield GaugeMetricFamily(
                "nvr_gb28181_streams",
                "Live, playback and download streams open to the GB/T 28181 platform",
                value=gb.streams,
            )
        cap = self._health.capacity()
        yield GaugeMetricFamily(
            "nvr_storage_free_bytes",
            "Free bytes on the recordings filesystem",
            value=cap.free_bytes,
        )
        days = GaugeMetricFamily(
            "nvr_storage_forecast_seconds",
            "How long the disk can hold footage at the current rate (absent while unknown)",
        )
        if cap.forecast_days is not None:
            days.add_metric([], cap.forecast_days * 86_400)
        yield days
        cstate = GaugeMetricFamily(
            "nvr_storage_capacity_state",
            "The capacity forecast state (1 for the current one)",
            labels=["state"],
        )
        for s in ("ok", "warning", "critical", "unknown"):
            cstate.add_metric([s], 1.0 if cap.state == s else 0.0)
        yield cstate
        build = InfoMetricFamily("nvr_build", "The running nvr version")
        build.add_metric([], {"version": version(), "python": platform.python_version()})
        yield build
        yield GaugeMetricFamily(
            "nvr_playback_index_cache_bytes",
            "Memory held by cached segment sample indexes",
            value=self._playback.indexes.used_bytes,
        )


def render(
    store: SegmentStore,
    cameras: CameraDirectory,
    health: HealthService,
    playback: PlaybackService,
    visible: Callable[[str], bool],
    http: HttpMetrics | None = None,
) -> bytes:
    """The Prometheus text exposition for one scrape. Blocking."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(store, cameras, health, playback, visible))
    ProcessCollector(registry=registry)
    if http is not None:
        registry.register(http.requests)
        registry.register(http.duration)
    return generate_latest(registry)
