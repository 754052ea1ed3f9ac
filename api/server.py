"""`ApiServer`: uvicorn serving the API inside the daemon's event loop (no process, no thread
of its own). uvicorn's own signal capture is switched off: the daemon owns SIGTERM/SIGINT and
stops the server with `stop()`. A server that cannot start (port taken, bad certificate) is
logged and leaves recording running: footage matters more than the API. A port that is taken
(or an address this machine does not have) is said plainly, and tried again with back-off
(2 s up to a minute) until it is free; the API then starts by itself. Forwarded headers
are believed only from `[api] trusted_proxies`; listening beyond loopback without TLS is
warned about at start."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Generator

import uvicorn

from nvr.api.app import create_app
from nvr.api.cameras import LiveStatus
from nvr.api.health import CapacityProvider, GbProvider
from nvr.api.live.service import SubstreamProvider, TapProvider
from nvr.api.services import ApiContext, ConfigReloader, EventEmit
from nvr.config import NvrConfig
from nvr.storage import Segment, SegmentStore

log = logging.getLogger("nvr.api")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


RETRY_S = (2.0, 5.0, 10.0, 30.0, 60.0)
"""Waits between attempts to listen on a port that is taken (the last one repeats)."""


def bind_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port now (None: it can), in plain words. Blocking
    (name resolution): call it through `asyncio.to_thread`."""
    try:
        family, kind, proto, _name, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as err:
        return f"cannot resolve {host!r}: {err.strerror}"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(where)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use by another program "
                    f"(`ss -ltnp 'sport = :{port}'` shows which)"
                )
            if err.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            if err.errno == errno.EACCES:
                return f"port {port} needs privileges (use a port above 1023)"
            return err.strerror or str(err)
    return None


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
        self._config = config
        self._host, self._port = host, port
        self._server = _EmbeddedServer(config)
        self._stopping = asyncio.Event()

    async def serve(self) -> None:
        """Serve until `stop()`. While the address cannot be bound, say why and try again
        (recording goes on); any other failure to start is logged and ends the API."""
        attempt = 0
        while not self._stopping.is_set():
            problem = await asyncio.to_thread(bind_problem, self._host, self._port)
            if problem is None:
                try:
                    await self._server.serve()
                    return
                except SystemExit:
                    # uvicorn exits the process on a start-up failure; here that must
                    # not end recording.
                    if self._server.started:
                        return
                    log.error("the HTTP API could not start on %s (see above)", self.url)
                    return
                except OSError as err:
                    if err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                        log.error(
                            "the HTTP API could not start on %s: %s",
                            self.url,
                            err.strerror or err,
                        )
                        return
                    problem = err.strerror or str(err)
                self._server = _EmbeddedServer(self._config)
            delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            log.error(
                "the HTTP API cannot listen on %s: %s; trying again in %.0f s "
                "(recording goes on)",
                self.url,
                problem,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def stop(self) -> None:
        self._stopping.set()
        self._server.should_exit = True


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
    segment_listeners: list[Callable[[Segment], None]] | None = None,
    taps: TapProvider | None = None,
    substreams: SubstreamProvider | None = None,
    gb28181: GbProvider | None = None,
) -> RunningApi | None:
    """Start serving `[api]` on the running loop (None when the config has no `[api]`).
    `segment_listeners`, `taps`, `substreams`: see `ApiContext`."""
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
            segment_listeners=segment_listeners,
            taps=taps,
            substreams=substreams,
            gb28181=gb28181,
        )
    )
    log.info("HTTP API on %s", server.url)
    return RunningApi(server, asyncio.create_task(server.serve(), name="api"))
