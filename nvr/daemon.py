"""The daemon's lifespan on the asyncio event loop: open the store (recover interrupted
writes), start the recorders, publish status, on SIGHUP reload the config file
(`nvr.reload`), and on SIGTERM/SIGINT finish every in-flight segment within 10 s. Blocking
work (opening the store, scans, status files) goes through `asyncio.to_thread`; recorders
run on their own threads.

Under systemd (`systemd/nvr.service`, `Type=notify`) it reports READY=1 once the index is open
and the recorders are started, a one-line STATUS= every few seconds, and STOPPING=1 on the way
out. The `sd-watchdog` task, on this loop, runs the supervisor's self-repair each second and
sends WATCHDOG=1 only while every recorder is healthy: progress within the watchdog timeout,
or a stuck one still waiting for its replacement. A blocked loop sends nothing (the task cannot
run), and so does a process where replacing a recorder did not help; systemd then restarts it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from nvr import memory
from nvr.config import NvrConfig
from nvr.events import EventBus
from nvr.ingest.status import RecorderStatus
from nvr.ingest.substream import Substreams
from nvr.ingest.supervisor import (
    EventEmit,
    OpenerFactory,
    RecorderHealth,
    RepairPolicy,
    Supervisor,
    default_opener,
)
from nvr.reload import LiveConfig, Reloader
from nvr.retention import Forecast, RetentionService
from nvr.sdnotify import Notifier
from nvr.storage import SegmentStore, StorageError
from nvr.storage.clock import ClockVerdict
from nvr.storage.timestamps import now_ms
from nvr.webhooks import WebhookSender, start_webhooks

if TYPE_CHECKING:
    from nvr.gb28181.device import GbDevice

log = logging.getLogger("nvr.daemon")

STATUS_FILE = "status.json"
STATUS_INTERVAL = 2.0
HOUSEKEEPING_INTERVAL = 60.0
"""How often the status loop does its housekeeping (`_housekeeping`): an audit checkpoint
due by time, expired API tokens. The first round runs at start."""
REPAIR_INTERVAL = 1.0
"""Seconds between self-repair checks (and watchdog pings, when systemd asks for them)."""
REPAIR_SLACK = 10.0
"""Seconds a stuck recorder may wait for its replacement before the watchdog pings stop."""
TRIM_INTERVAL = 30.0
"""Seconds between handing free heap pages back to the kernel (nvr/memory.py)."""
GIB = 1024**3


def status_line(
    statuses: list[RecorderStatus],
    health: list[RecorderHealth],
    free_bytes: int,
    forecast: Forecast | None,
    clock: ClockVerdict | None = None,
) -> str:
    """The one-line STATUS= summary: cameras recording, trouble, free space, forecast."""
    recording = sum(1 for s in statuses if s.state == "recording")
    head = f"recording {recording}/{len(statuses)} cameras"
    stuck = {h.camera: h for h in health if h.stuck}
    trouble = [
        f"{s.camera} stuck {stuck[s.camera].idle:.0f}s"
        if s.camera in stuck
        else f"{s.camera} {s.state}"
        for s in statuses
        if s.state != "recording" or s.camera in stuck
    ]
    if trouble:
        more = f" +{len(trouble) - 3} more" if len(trouble) > 3 else ""
        head += " (" + ", ".join(trouble[:3]) + more + ")"
    parts = [head, f"{free_bytes / GIB:.1f} GiB free"]
    if forecast is not None:
        if forecast.state == "unknown" or forecast.forecast_days == float("inf"):
            parts.append("storage forecast unknown yet")
        else:
            parts.append(
                f"storage holds {forecast.forecast_days:.0f} days ({forecast.state}, "
                f"window {forecast.window_days})"
            )
    if clock is not None and clock.held:
        parts.append("PURGING HELD: server clock stepped")
    return "; ".join(parts)


def unhealthy(health: list[RecorderHealth], watchdog: float) -> list[RecorderHealth]:
    """Recorders that keep the daemon from vouching for itself to systemd's watchdog: no
    progress within `watchdog` seconds, unless self-repair may still replace them (then
    they get until `stuck_after` plus the time a replacement takes)."""
    out = []
    for h in health:
        bound = watchdog
        if h.repairable:
            bound = max(watchdog, h.stuck_after + REPAIR_SLACK)
        if h.idle > bound or (not h.alive and not h.repairable):
            out.append(h)
    return out


async def heartbeat(supervisor: Supervisor, notifier: Notifier, stop: asyncio.Event) -> None:
    """Self-repair, and WATCHDOG=1 while healthy. Runs as a task on the daemon's loop, so a
    blocked loop stops the pings. Ends when `stop` is set (after a repair in progress)."""
    watchdog = notifier.watchdog
    period = REPAIR_INTERVAL if watchdog is None else min(REPAIR_INTERVAL, watchdog / 2)
    withheld = False
    while not stop.is_set():
        health = supervisor.health()
        if supervisor.abandoned or any(h.stuck for h in health):
            try:
                await supervisor.repair()
            except StorageError as err:  # the index is unavailable: try again next tick
                log.error("self-repair could not write to the index: %s", err)
            health = supervisor.health()
        if watchdog is not None:
            bad = unhealthy(health, watchdog)
            if not bad:
                notifier.ping()
                if withheld:
                    log.info("all recorders healthy again: watchdog pings resumed")
                    withheld = False
            elif not withheld:
                withheld = True
                log.error(
                    "withholding watchdog pings (systemd will restart the daemon): %s",
                    ", ".join(f"{h.camera} no progress for {h.idle:.0f} s" for h in bad),
                )
        try:
            await asyncio.wait_for(stop.wait(), period)
        except TimeoutError:
            pass


STATUS_ROOM = 16 * 1024
"""status.json is padded (with spaces, which JSON allows) to a multiple of this, at least twice
its text, so that on a full disk it can be rewritten in place in the blocks it already has."""


def write_status(
    root: Path,
    supervisor: Supervisor,
    running: bool,
    bus: EventBus | None = None,
    retention: RetentionService | None = None,
    gb28181: dict[str, object] | None = None,
) -> None:
    """Atomically publish the recorders' live state (and the alert destinations',
    retention's passes and the GB/T 28181 registration) for `nvr status` (another
    process). On a full disk (no room for the new file) the old one is overwritten in place
    instead, so the alarm still shows.
    Blocking: runs on a worker thread."""
    doc = {
        "pid": os.getpid(),
        "running": running,
        "written_ms": now_ms(),
        "cameras": {s.camera: asdict(s) for s in supervisor.snapshot()},
        "pictures": {name: asdict(p) for name, p in supervisor.picture_states().items()},
        "events": [asdict(d) for d in bus.destinations()] if bus is not None else [],
        "retention": retention.progress() if retention is not None else None,
        "gb28181": gb28181,
    }
    text = json.dumps(doc, indent=1).encode("utf-8")
    size = -(-2 * len(text) // STATUS_ROOM) * STATUS_ROOM
    tmp = root / (STATUS_FILE + ".tmp")
    try:
        tmp.write_bytes(text.ljust(size))
        os.replace(tmp, root / STATUS_FILE)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        tmp.unlink(missing_ok=True)
        _rewrite_in_place(root / STATUS_FILE, text, err)


def _rewrite_in_place(path: Path, text: bytes, full: OSError) -> None:
    """Overwrite `path` without growing it (a reader may catch it half-written and retry)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise full from None
    try:
        size = os.fstat(fd).st_size
        if len(text) > size:
            raise full
        os.pwrite(fd, text.ljust(size), 0)
    finally:
        os.close(fd)


class _Publisher:
    """status.json and free space, each round; a full or failing disk is logged once and
    never stops the daemon (the recorders handle it: pause, ledger, resume)."""

    def __init__(
        self,
        root: Path,
        supervisor: Supervisor,
        store: SegmentStore,
        bus: EventBus | None,
        retention: RetentionService | None = None,
    ) -> None:
        self._root = root
        self._retention = retention
        self._bus = bus
        self._supervisor = supervisor
        self._store = store
        self._failing: str | None = None
        self._trimmed = time.monotonic()
        self.free_bytes = 0
        self.clock: ClockVerdict | None = None
        self.gb: GbDevice | None = None
        self._gb_doc: dict[str, object] | None = None

    def _round(self, running: bool) -> None:
        """Blocking: runs on a worker thread."""
        now = time.monotonic()
        if now - self._trimmed >= TRIM_INTERVAL:
            self._trimmed = now
            memory.trim()
        try:
            # The run's heartbeat: a step of the wall clock shows against uptime here.
            self.clock = self._store.clock_heartbeat()
        except StorageError as err:
            log.error("cannot record the recorder's heartbeat: %s", err)
        try:
            self.free_bytes = self._store.free_bytes()
            write_status(
                self._root, self._supervisor, running, self._bus, self._retention, self._gb_doc
            )
        except OSError as err:
            if self._failing is None:
                log.warning("cannot publish %s: %s", STATUS_FILE, err)
            self._failing = str(err)
            return
        if self._failing is not None:
            log.info("%s published again", STATUS_FILE)
            self._failing = None

    async def publish(self, running: bool) -> None:
        self._gb_doc = self.gb.status_doc() if self.gb is not None else None  # on the loop
        await asyncio.to_thread(self._round, running)


async def run_daemon(
    config: NvrConfig,
    *,
    stop: asyncio.Event | None = None,
    opener_factory: OpenerFactory = default_opener,
    notifier: Notifier | None = None,
    repair: RepairPolicy | None = None,
    config_path: Path | None = None,
) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT arrives; SIGHUP reloads `config_path` (the
    file `config` came from; `nvr.reload`). `notifier` defaults to the one systemd's
    environment asks for (none outside systemd)."""
    stop = stop or asyncio.Event()
    notifier = notifier or Notifier.from_environment()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Until the reloader exists a SIGHUP is noted, not fatal (its default action ends us).
    hups: list[str] = []
    loop.add_signal_handler(signal.SIGHUP, hups.append, "signal:SIGHUP")
    live = LiveConfig(config)
    root = config.storage.root
    store = await asyncio.to_thread(
        partial(
            SegmentStore,
            retention_days=live.retention_days,
            migrate_in_child=True,
            max_lock_years=config.evidence.max_lock_years,
            signing_key=config.signing_key_path(),
            checkpoint_entries=config.evidence.checkpoint_entries,
            checkpoint_ms=config.evidence.checkpoint_minutes * 60_000,
            clock_stable_s=config.retention.clock_stable_minutes * 60,
        ),
        root,
        config.storage.index_url(),
    )
    alerts: Alerts | None = None
    try:
        salvaged = await asyncio.to_thread(store.recover)
        if salvaged:
            log.warning("recovered %d interrupted segments", len(salvaged))
        alerts = Alerts.start(config)  # before the recorders: their first states are events
        supervisor = Supervisor(config, store, opener_factory, repair=repair, emit=alerts.emit)
        supervisor.start()
        check = asyncio.create_task(_consistency(store), name="consistency-check")
        retention = RetentionService(config, store)
        retention.listener = alerts.emit
        retention_task = asyncio.create_task(retention.run(stop), name="retention")
        log.info("recording %d cameras into %s", len(supervisor.recorders), root)
        publisher = _Publisher(root, supervisor, store, alerts.bus, retention)
        await publisher.publish(True)
        reloader = Reloader(live, config_path, supervisor, store, notifier)
        reloader.subscribe(retention.reconfigure)
        substreams = Substreams(config)  # live_url: pulled only while watched live
        reloader.subscribe(substreams.reconfigure)
        reloads: set[asyncio.Task[object]] = set()

        def reload_on_signal(actor: str) -> None:
            if stop.is_set():
                log.warning("%s: not reloading, the daemon is stopping", actor)
                return
            log.info("%s: reloading the configuration", actor)
            task = asyncio.create_task(reloader.reload(actor), name="sighup-reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload_on_signal, "signal:SIGHUP")
        for actor in hups:
            reload_on_signal(actor)
        api = None
        if config.api is not None:
            # Imported only when served: FastAPI, uvicorn, the pages and playback's numpy
            # would stay resident (~20 MiB) in a daemon that only records.
            from nvr.api.server import serve_api

            api = serve_api(
                config,
                store,
                supervisor,
                lambda: retention.last_forecast,
                reloader=reloader,
                emit=alerts.emit,
                event_problems=alerts.problems,
                segment_listeners=supervisor.segment_listeners,
                taps=supervisor.tap,
                substreams=substreams.source,
                gb28181=lambda: publisher.gb.health() if publisher.gb is not None else None,
            )
        publisher.gb = await _start_gb28181(config, store, supervisor)
        gb_reload = _GbReload(publisher, config, store, supervisor)
        reloader.subscribe(gb_reload)
        line = status_line(supervisor.snapshot(), supervisor.health(), publisher.free_bytes, None)
        notifier.ready(line)
        if notifier.watchdog is not None:
            log.info("systemd watchdog: %.0f s", notifier.watchdog)
        beat = asyncio.create_task(heartbeat(supervisor, notifier, stop), name="sd-watchdog")
        beat.add_done_callback(_report_crash)
        next_housekeeping = time.monotonic()
        while not stop.is_set():
            await publisher.publish(True)
            if time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
                await _housekeeping(store)
            new_line = status_line(
                supervisor.snapshot(),
                supervisor.health(),
                publisher.free_bytes,
                retention.last_forecast,
                publisher.clock,
            )
            if new_line != line:
                notifier.status(new_line)
                line = new_line
            try:
                await asyncio.wait_for(stop.wait(), STATUS_INTERVAL)
            except TimeoutError:
                pass
        log.info("stopping: finishing in-flight segments")
        notifier.stopping("stopping: finishing in-flight segments")
        if api is not None:
            await api.close()
        await reloader.close()  # a reload in progress finishes before the recorders stop
        await gb_reload.close()
        if publisher.gb is not None:
            await publisher.gb.stop()  # BYE to its streams, then unregister
        await asyncio.wait([beat])  # ends at `stop`; a failure was logged when it happened
        check.cancel()
        await supervisor.stop(grace=10.0)
        await retention_task
        await publisher.publish(False)
    finally:
        if alerts is not None:
            await alerts.close()  # the recorders' last states go out, then `offline`
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(store.close)
        notifier.close()
    log.info("stopped")


class Alerts:
    """The event bus and its publishers (`[events]`): the MQTT task on this loop, a thread
    per webhook. Without `[events]` it is inert (`emit` None)."""

    CLOSE_TIMEOUT = 5.0

    def __init__(
        self,
        bus: EventBus | None,
        mqtt: asyncio.Task[None] | None,
        senders: list[WebhookSender],
        stop: asyncio.Event,
    ) -> None:
        self.bus = bus
        self._mqtt = mqtt
        self._senders = senders
        self._stop = stop

    @classmethod
    def start(cls, config: NvrConfig) -> Alerts:
        events = config.events
        stop = asyncio.Event()
        if events is None:
            return cls(None, None, [], stop)
        bus = EventBus(events.site, events.queue_size)
        senders = start_webhooks(bus, list(events.webhooks))
        task = None
        if events.mqtt is not None:
            from nvr.mqtt import MqttPublisher  # aiomqtt and paho (~4 MiB) only when used

            publisher = MqttPublisher(events, bus)
            task = asyncio.create_task(publisher.run(stop), name="mqtt")
            task.add_done_callback(_report_crash)
        log.info(
            "events: site %s, %s, %d webhooks",
            events.site,
            events.mqtt or "no MQTT broker",
            len(senders),
        )
        return cls(bus, task, senders, stop)

    @property
    def emit(self) -> EventEmit | None:
        return self.bus.emit if self.bus is not None else None

    @property
    def problems(self) -> Callable[[], list[str]] | None:
        return self.bus.problems if self.bus is not None else None

    async def close(self) -> None:
        """Stop the publishers: MQTT publishes what is queued it can within the timeout,
        then `offline`; webhooks end after the delivery in progress."""
        self._stop.set()
        if self._mqtt is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._mqtt), self.CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("events: the MQTT broker did not take the last messages in time")
                self._mqtt.cancel()
        for sender in self._senders:
            await asyncio.to_thread(sender.stop, self.CLOSE_TIMEOUT)


def _gb_key(config: NvrConfig) -> object:
    """What the GB/T 28181 device is built from: `[gb28181]` and the cameras' channel ids,
    names, enabled flags and masks (the channels it offers)."""
    cams = tuple((c.name, c.enabled, c.location, c.privacy_masks) for c in config.cameras)
    return (config.gb28181, config.gb_channel_ids(), cams)


class _GbReload:
    """A reload listener (on the loop) that applies `[gb28181]` changes and changes of the
    offered channels: the running device ends its streams (BYE) and unregisters, and a new
    one registers with the new settings (none if the table was removed). One at a time."""

    def __init__(
        self, publisher: _Publisher, config: NvrConfig, store: SegmentStore, supervisor: Supervisor
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._supervisor = supervisor
        self._key = _gb_key(config)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, new: NvrConfig) -> None:
        key = _gb_key(new)
        if key == self._key:
            return
        self._key = key
        task = asyncio.create_task(self._apply(new), name="gb28181-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, new: NvrConfig) -> None:
        async with self._lock:
            old, self._publisher.gb = self._publisher.gb, None
            if old is not None:
                log.info("GB/T 28181: configuration changed; unregistering to apply it")
                await old.stop()
            self._publisher.gb = await _start_gb28181(new, self._store, self._supervisor)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks))


async def _start_gb28181(
    config: NvrConfig, store: SegmentStore, supervisor: Supervisor
) -> GbDevice | None:
    """The GB/T 28181 device (`[gb28181]`), or None. A device that cannot open its SIP port
    is logged and left out: recording never depends on the platform."""
    if config.gb28181 is None:
        return None
    # Loaded only where a platform is configured: its SIP library stays out of every other
    # recorder's memory (issue 12's per-camera budget).
    from nvr.gb28181.device import device_for

    device = device_for(config, store, supervisor)
    try:
        await device.start()
    except OSError as err:
        log.error("GB/T 28181: cannot open SIP port %d: %s", config.gb28181.local_port, err)
        return None
    return device


def _report_crash(task: asyncio.Task[None]) -> None:
    """A bug in the heartbeat must not pass silently: without it there is no self-repair, and
    under systemd no watchdog ping either (so systemd restarts the daemon)."""
    if not task.cancelled() and task.exception() is not None:
        log.critical(
            "%s task failed: no more self-repair or watchdog pings",
            task.get_name(),
            exc_info=task.exception(),
        )


async def _housekeeping(store: SegmentStore) -> None:
    """Every `HOUSEKEEPING_INTERVAL`: sign an audit checkpoint when `[evidence]
    checkpoint_minutes` have passed since the last one and entries came after it (issue 14,
    item 3: every N entries and every hour), and forget bearer tokens that expired or were
    revoked more than a day ago (else the token table grows with every login)."""
    try:
        await asyncio.to_thread(store.audit.checkpoint)
    except StorageError as err:
        log.error("cannot write an audit checkpoint: %s", err)
    try:
        dropped = await asyncio.to_thread(store.accounts.drop_expired_tokens)
    except StorageError as err:
        log.error("cannot drop expired API tokens: %s", err)
    else:
        if dropped:
            log.info("dropped %d expired API tokens", dropped)


async def _consistency(store: SegmentStore) -> None:
    """Index complete files that have no row (left by a crash before start-up recovery
    looked only at the newest folders); report the rest (never deleted)."""
    try:
        report = await asyncio.to_thread(store.consistency)
    except StorageError as err:  # a damaged index: the recorders say so and what to do
        log.error("consistency check not done: %s", err)
        return
    unindexed = []
    for path in report.files_without_rows:
        try:
            seg = await asyncio.to_thread(store.index_unindexed, path)
        except StorageError as err:  # the index cannot take it now: the next start will
            log.error("cannot index %s: %s", path, err)
            seg = None
        if seg is None and path.exists():
            unindexed.append(path)
    for path in unindexed[:20]:
        log.warning("file without index row (kept, not deleted): %s", path)
    for path in report.rows_without_files[:20]:
        log.error("index row without file (missing footage): %s", path)
    for path in report.unsalvageable_parts[:20]:
        log.warning("partial file with no complete fragment (kept): %s", path)
    if unindexed or report.rows_without_files:
        log.warning(
            "consistency: %d files without rows, %d rows without files",
            len(unindexed),
            len(report.rows_without_files),
        )
