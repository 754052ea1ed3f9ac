"""`Reloader`: a new configuration applied to the running daemon (SIGHUP, `systemctl reload
nvr`, `POST /api/reload`), or refused with every problem logged and the running one kept.

What a reload changes is `config.diff.diff_configs`: cameras added start, removed ones finish
their segment and stop, changed ones restart, unchanged ones are not touched (not a frame
lost); `log_level` and `site` apply at once; `[gb28181]` and the channels it offers
re-register the GB/T 28181 device (a listener in `nvr.daemon`). Settings read once at start
(`[storage]`, `[api]`, `[retention]`, `[evidence]`, `[events]`) are refused with a message
that a restart is needed.
Every reload, applied or refused, is audited with who asked and what changed (key names, never
values). One reload at a time; runs on the daemon's event loop, the file is read on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from nvr.config import ConfigError, NvrConfig, load_config
from nvr.config.diff import ConfigDiff, ReloadOutcome, diff_configs
from nvr.ingest.supervisor import Supervisor
from nvr.sdnotify import Notifier
from nvr.storage import SegmentStore, StorageError

log = logging.getLogger("nvr.reload")

Listener = Callable[[NvrConfig], None]


class LiveConfig:
    """The configuration in force right now (read from any thread: one attribute)."""

    def __init__(self, config: NvrConfig) -> None:
        self.config = config

    def retention_days(self, camera: str) -> int:
        return self.config.retention_days(camera)


class Reloader:
    def __init__(
        self,
        live: LiveConfig,
        path: Path | None,
        supervisor: Supervisor,
        store: SegmentStore,
        notifier: Notifier | None = None,
    ) -> None:
        self._live = live
        self._path = path
        self._supervisor = supervisor
        self._store = store
        self._notifier = notifier
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[ReloadOutcome]] = set()
        self._closed = False

    @property
    def config(self) -> NvrConfig:
        return self._live.config

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(new_config)` on the loop after each applied reload."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def reload(self, actor: str) -> ReloadOutcome:
        """Read the config file again and apply it, or refuse it (logged and audited). The
        work runs as a task of its own: a caller that gives up (an HTTP client gone) never
        leaves the recorders half reconfigured."""
        if self._closed:
            return ReloadOutcome(False, None, ("the daemon is stopping",))
        task = asyncio.create_task(self._serialized(actor), name="config-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Refuse further reloads and wait for one in progress (before the recorders stop)."""
        self._closed = True
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _serialized(self, actor: str) -> ReloadOutcome:
        async with self._lock:
            if self._notifier is not None:
                self._notifier.reloading(f"reloading the configuration ({actor})")
            try:
                outcome = await self._reload(actor)
            finally:
                if self._notifier is not None:
                    self._notifier.ready("configuration reloaded")
            return outcome

    async def _reload(self, actor: str) -> ReloadOutcome:
        if self._path is None:
            return await self._refuse(
                actor,
                None,
                ["the daemon runs on the embedded default (no -c FILE): no file to reload"],
            )
        try:
            new = await asyncio.to_thread(load_config, self._path)
        except ConfigError as err:
            return await self._refuse(actor, None, err.problems)
        diff = diff_configs(self.config, new)
        if diff.restart_needed:
            return await self._refuse(
                actor,
                diff,
                [
                    f"{key}: changed, and this setting is read only at start: restart the "
                    "daemon (systemctl restart nvr) instead of reloading"
                    for key in diff.restart_needed
                ],
            )
        await self._supervisor.reconfigure(new)
        self._live.config = new
        logging.getLogger().setLevel(new.log_level.upper())
        for listener in list(self._listeners):
            listener(new)
        log.info("configuration reloaded from %s by %s: %s", self._path, actor, diff.summary())
        await self._audit(actor, "ok", {**diff.as_dict(), "file": str(self._path)})
        return ReloadOutcome(True, diff)

    async def _refuse(
        self, actor: str, diff: ConfigDiff | None, problems: list[str]
    ) -> ReloadOutcome:
        log.error(
            "configuration reload by %s refused; the running configuration is kept:\n  %s",
            actor,
            "\n  ".join(problems),
        )
        detail: dict[str, object] = {"file": str(self._path), "problems": problems}
        if diff is not None:
            detail["restart_needed"] = list(diff.restart_needed)
        await self._audit(actor, "refused", detail)
        return ReloadOutcome(False, diff, tuple(problems))

    async def _audit(self, actor: str, outcome: str, detail: dict[str, object]) -> None:
        try:
            await asyncio.to_thread(
                self._store.audit.append, actor, "config-reload", "config", outcome, detail
            )
        except StorageError as err:
            log.error("cannot audit the configuration reload by %s: %s", actor, err)
