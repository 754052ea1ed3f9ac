"""`ApiServer`: uvicorn serving the API inside the daemon's event loop (no process, no thread
of its own). uvicorn's own signal capture is switched off: the daemon owns SIGTERM/SIGINT and
stops the server with `stop()`. A server that cannot start (port taken, bad certificate) is
logged and leaves recording running: footage matters more than the API. Forwarded headers
are believed only from `[api] trusted_proxies`; listening beyond loopback without TLS is
warned about at start."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Generator

import uvicorn

from api.app import create_app
from api.cameras import LiveStatus
from api.health import CapacityProvider
from api.services import ApiContext, ConfigReloader, EventEmit
from config import NvrConfig
from storage import SegmentStore

log = logging.getLogger("nvr.api")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon handles signals


class ApiServer:
    def __init__(self, ctx: ApiContext) -> None:
        settings = ctx.settings
        host, port = settings.host_port()
        config = uvicorn.Config(
            create_app(ctx),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            ssl_certfile=str(settings.tls_certificate) if settings.tls_certificate else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
            timeout_graceful_shutdown=5,
            # X-Forwarded-For is believed only from configured proxies (uvicorn's default
            # trusts 127.0.0.1, so any local process could forge the audited address)
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=list(settings.trusted_proxies) or [],
        )
        self.url = f"{'https' if settings.tls_certificate else 'http'}://{settings.listen}"
        if settings.tls_certificate is None and not _loopback(host):
            log.warning(
                "the HTTP API listens on %s without TLS: passwords, tokens and footage cross "
                "the network in clear; set [api] tls_certificate and tls_key",
                settings.listen,
            )
        self._server = _EmbeddedServer(config)
        self._done = asyncio.Event()

    @property
    def started(self) -> bool:
        return self._server.started

    async def serve(self) -> None:
        """Serve until `stop()`. Returns (after logging why) if the server cannot start."""
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process on a start-up failure; here that must not end recording.
            log.error("the HTTP API could not start on %s (see the error above)", self.url)
        except OSError as err:
            log.error("the HTTP API could not start on %s: %s", self.url, err.strerror or err)
        finally:
            self._done.set()

    def stop(self) -> None:
        self._server.should_exit = True

    async def wait_started(self) -> bool:
        """True once the server listens; False if it ended without starting."""
        while not self._server.started:
            if self._done.is_set():
                return False
            await asyncio.sleep(0.05)
        return True


class RunningApi:
    """The API serving as a task of the daemon's loop."""

    def __init__(self, server: ApiServer, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    async def close(self) -> None:
        """Stop accepting requests, let running ones finish (5 s at most), close services."""
        self.server.stop()
        await self.task


def serve_api(
    config: NvrConfig,
    store: SegmentStore,
    live: LiveStatus,
    capacity: CapacityProvider | None = None,
    reloader: ConfigReloader | None = None,
    emit: EventEmit | None = None,
    event_problems: Callable[[], list[str]] | None = None,
) -> RunningApi | None:
    """Start serving `[api]` on the running loop (None when the config has no `[api]`)."""
    if config.api is None:
        return None
    server = ApiServer(
        ApiContext(
            config=config,
            store=store,
            live=live,
            capacity=capacity,
            reloader=reloader,
            emit=emit,
            event_problems=event_problems,
        )
    )
    log.info("HTTP API on %s", server.url)
    return RunningApi(server, asyncio.create_task(server.serve(), name="api"))
