"""The services the API's routes call, built by the app's lifespan from what the daemon hands
over (`ApiContext`: config, the store, the recorders' live state, retention's forecast, the
config reload). Built and closed on the event loop; a reload hands them the new config there."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from nvr.api.auth import LinkSigner, LoginThrottle, ScrapeToken
from nvr.api.cameras import CameraDirectory, LiveStatus, NoRecorders
from nvr.api.exports import ExportService
from nvr.api.health import CapacityProvider, GbProvider, HealthService, RecentErrors
from nvr.api.live.service import LiveService, SubstreamProvider, TapProvider
from nvr.api.masking import MaskService
from nvr.api.metrics import HttpMetrics
from nvr.api.playback import PlaybackService
from nvr.config import NvrConfig
from nvr.config.diff import ReloadOutcome
from nvr.config.models import ApiConfig
from nvr.storage import Segment, SegmentStore
from nvr.storage.exports import Export
from nvr.storage.server_clock import ServerClockState, read_server_clock
from nvr.storage.timestamps import iso

EventEmit = Callable[[str, str | None, dict[str, Any]], None]
"""(kind, camera, data) -> None: `nvr.events.EventBus.emit`."""

HASHING_THREADS = 2
"""Password checks at once: argon2 uses 64 MiB each; a burst of logins queues here."""


class ConfigReloader(Protocol):
    """The daemon's config reload (`nvr.reload.Reloader`), for `POST /api/reload`."""

    async def reload(self, actor: str) -> ReloadOutcome: ...

    def subscribe(self, listener: Callable[[NvrConfig], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[NvrConfig], None]) -> None: ...


@dataclass
class ApiContext:
    """What the daemon gives the API. `api` defaults to `config.api` (or the defaults)."""

    config: NvrConfig
    store: SegmentStore
    live: LiveStatus = field(default_factory=NoRecorders)
    capacity: CapacityProvider | None = None
    api: ApiConfig | None = None
    reloader: ConfigReloader | None = None
    server_clock: Callable[[], ServerClockState] = read_server_clock
    """The kernel's sync state of the server clock (a seam: tests give a synchronised one)."""
    emit: EventEmit | None = None
    """Alerts out (`nvr.events.EventBus.emit`): export requests and decisions."""
    event_problems: Callable[[], list[str]] | None = None
    """Event destinations that are down (`nvr.events.EventBus.problems`), for health."""
    gb28181: GbProvider | None = None
    """The GB/T 28181 registration (`[gb28181]`), for health and metrics."""
    segment_listeners: list[Callable[[Segment], None]] | None = None
    """The recorders' listeners for closed segments (`Supervisor.segment_listeners`): the
    playback service joins them while the API runs."""
    taps: TapProvider | None = None
    """A camera's packet tap (`Supervisor.tap`) for live view; None: no live view."""
    substreams: SubstreamProvider | None = None
    """A camera's `live_url` substream as a packet source (None: the main stream)."""
    throttle_clock: Callable[[], float] = time.monotonic
    mask_hold: threading.Event | None = None
    """A seam for tests: privacy-masked copies in progress wait for it before their last
    frames (`MaskService.before_finish`), so a test sees one being made."""
    """The login throttle's clock, in seconds (a seam: tests move it past a Retry-After
    instead of sleeping)."""

    @property
    def settings(self) -> ApiConfig:
        return self.api or self.config.api or ApiConfig()


@dataclass
class ApiServices:
    config: NvrConfig
    settings: ApiConfig
    store: SegmentStore
    cameras: CameraDirectory
    playback: PlaybackService
    health: HealthService
    exports: ExportService
    throttle: LoginThrottle
    links: LinkSigner
    errors: RecentErrors
    masks: MaskService | None = None
    """Privacy-masked copies of recordings (R10), one at a time."""
    scrape: ScrapeToken = field(default_factory=lambda: ScrapeToken(None))
    """The static `/metrics` token (`[api] metrics_token_file`), if configured."""
    hashing: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="argon2")
    )
    """Password checks (argon2, ~50 ms of CPU and 64 MiB each) run here, never in the
    default pool that playback and the store use."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    reloader: ConfigReloader | None = None
    """The daemon's config reload; None when the API runs without a daemon."""
    http: HttpMetrics = field(default_factory=HttpMetrics)
    """Requests by route and status (counted by the access log, shown by `/metrics`)."""
    emit: EventEmit | None = None
    """Alerts out; None without `[events]`."""
    live: LiveService | None = None
    """Live view (WHEP, MSE WebSocket): hubs on the recorders' packet taps."""

    def tell_export(self, export: Export, actor: str, state: str | None = None) -> None:
        """An export request was made or decided: an `export` event (never blocks). The
        purpose and recipient stay in the register; the event says who and what to open."""
        if self.emit is None:
            return
        self.emit(
            "export",
            export.camera,
            {
                "id": export.id,
                "state": state or export.state,
                "actor": actor,
                "requester": export.requester,
                "start": iso(export.start_ms),
                "end": iso(export.end_ms),
            },
        )

    segment_listeners: list[Callable[[Segment], None]] | None = None
    """Where `playback.segment_closed` listens for closed segments (see `ApiContext`)."""

    def reconfigure(self, config: NvrConfig) -> None:
        """A reloaded config: cameras, sites and windows as the daemon now has them."""
        self.config = config
        self.cameras.reconfigure(config)
        self.health.reconfigure(config)
        self.exports.reconfigure(config)

    @property
    def token_ttl_ms(self) -> int:
        return int(self.settings.token_hours * 3_600_000)


async def open_services(ctx: ApiContext) -> ApiServices:
    """Build the services (the export signing key is read or created at first use)."""
    settings = ctx.settings
    root = ctx.config.storage.root
    key_path = settings.signing_key or root / ".nvr-export-key"
    cameras = CameraDirectory(ctx.config, ctx.store, ctx.live, clock=ctx.store.now)
    playback = PlaybackService(
        ctx.store,
        max_builds=settings.max_plan_builds,
        max_builds_per_user=settings.max_plan_builds_per_user,
    )
    errors = RecentErrors()
    logging.getLogger("nvr").addHandler(errors)
    health = HealthService(
        ctx.config,
        settings,
        ctx.store,
        cameras,
        ctx.capacity,
        errors,
        ctx.server_clock,
        ctx.event_problems,
        ctx.gb28181,
    )
    exports = ExportService(
        ctx.store, playback, key_path, settings.exports_dir or root / "exports", ctx.config
    )
    services = ApiServices(
        config=ctx.config,
        settings=settings,
        store=ctx.store,
        cameras=cameras,
        playback=playback,
        health=health,
        exports=exports,
        throttle=LoginThrottle(clock=ctx.throttle_clock),
        links=LinkSigner(),
        errors=errors,
        scrape=ScrapeToken(settings.metrics_token_file),
        masks=MaskService(root / ".masked", before_finish=ctx.mask_hold),
        reloader=ctx.reloader,
        emit=ctx.emit,
        live=LiveService(ctx.config, settings, ctx.store, ctx.taps, ctx.substreams),
    )
    if services.live is not None:
        services.live.warm(c.name for c in ctx.config.cameras)
    if ctx.reloader is not None:
        ctx.reloader.subscribe(services.reconfigure)
    if services.scrape.configured:
        await asyncio.to_thread(services.scrape.matches, "")  # logs a bad file at start
    await exports.resume()
    services.tasks.append(
        asyncio.create_task(playback.keep_warm(cameras.known, services.stop), name="playback-warm")
    )
    if ctx.segment_listeners is not None:
        ctx.segment_listeners.append(playback.segment_closed)
        services.segment_listeners = ctx.segment_listeners
    return services


async def close_services(services: ApiServices) -> None:
    if services.reloader is not None:
        services.reloader.unsubscribe(services.reconfigure)
    if services.segment_listeners is not None:
        services.segment_listeners.remove(services.playback.segment_closed)
    services.stop.set()
    if services.live is not None:
        await services.live.close()
    for task in services.tasks:
        await task
    await services.exports.close()
    await asyncio.to_thread(services.hashing.shutdown)
    logging.getLogger("nvr").removeHandler(services.errors)
