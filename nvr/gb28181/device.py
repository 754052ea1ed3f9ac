"""`GbDevice`: the recorder as a GB/T 28181 device on one platform. Owns the registration
(REGISTER with Digest, renewed before it expires, `Expires: 0` on stop, back-off while the
platform is away), the keepalive (`Notify/Keepalive` every `keepalive_seconds`; three
unanswered = offline, register again), the answers to the platform's queries (Catalog,
DeviceInfo, DeviceStatus, RecordInfo) and, through `nvr.gb28181.session`, its media
dialogs (INVITE/ACK/BYE/INFO).

Runs on the daemon's event loop: `start()` opens the SIP socket and the registration task,
`stop()` unregisters and ends every stream. Index queries go through `asyncio.to_thread`.
The platform's `Date` header is compared with our clock at each registration: an offset is
logged and shown in `status()` (the clock is never set from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import importlib.metadata
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from aiosipua import SipRequest, SipResponse

from nvr.api.health import GbHealth
from nvr.config import ConfigError
from nvr.config.models import Gb28181Config, NvrConfig
from nvr.gb28181 import manscdp, sip
from nvr.gb28181.errors import AuthFailed, GbError, SipRejected, SipTimeout
from nvr.gb28181.manscdp import Channel, Span
from nvr.gb28181.session import Sessions
from nvr.ingest.supervisor import Supervisor
from nvr.storage import Segment, SegmentStore

log = logging.getLogger("nvr.gb28181")

KEEPALIVE_MISSES = 3
"""Unanswered keepalives after which the platform is taken as gone (GB/T 28181 9.6)."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
RENEW_AT = 0.75
"""Re-register when this share of `register_expires` has passed."""
CATALOG_PER_MESSAGE = 4
"""Catalog items per MESSAGE: keeps a GB 18030 body well inside one UDP datagram."""
RECORDS_PER_MESSAGE = 8
CLOCK_WARN_SECONDS = 2.0
SPAN_JOIN_MS = 1500
"""Segments closer than this are one recorded span (the recorder cuts segments end to end)."""
UNREGISTER_TIMEOUT = 2.0


class SegmentIndex(Protocol):
    """What the device reads from the index (a `SegmentStore`)."""

    def segments(
        self, camera: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Segment]: ...


class Audit(Protocol):
    def __call__(
        self, actor: str, action: str, target: str, outcome: str, detail: dict[str, Any]
    ) -> object: ...


@dataclass(frozen=True)
class ChannelConfig:
    """A camera offered to the platform."""

    camera: str
    channel_id: str
    name: str
    address: str = ""
    masked: bool = False
    """The camera has privacy masks the platform may not see behind: its streams are refused
    (they carry the camera's own bitstream, never a masked copy)."""


@dataclass
class DeviceStatus:
    """What the device knows about its platform (for logs, status and tests)."""

    registered: bool = False
    registered_since: float | None = None
    registrations: int = 0
    last_error: str = ""
    keepalives_sent: int = 0
    keepalives_answered: int = 0
    keepalive_misses: int = 0
    clock_offset_s: float | None = None
    """Platform clock minus ours, from its Date header at the last registration."""
    clock_finding: str = ""


def spans_of(segments: Sequence[Segment], start_ms: int, end_ms: int) -> list[Span]:
    """Recorded spans in [start_ms, end_ms): segments joined where they touch, clipped."""
    out: list[Span] = []
    for seg in sorted(segments, key=lambda s: s.start_ms):
        lo, hi = max(seg.start_ms, start_ms), min(seg.end_ms, end_ms)
        if hi <= lo:
            continue
        if out and lo - out[-1].end_ms <= SPAN_JOIN_MS:
            out[-1] = Span(out[-1].start_ms, max(out[-1].end_ms, hi))
        else:
            out.append(Span(lo, hi))
    return out


def parse_date(value: str, tz: tzinfo | None) -> float | None:
    """A Date header as seconds since the epoch: GB/T 28181's local ISO time
    (`2026-12-02T14:40:16.123`, A.2.1) or RFC 3261's RFC 1123 form."""
    value = value.strip()
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        try:
            return email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz) if tz is not None else dt.astimezone()
    return dt.timestamp()


class MediaHandler(Protocol):
    """The media side (`nvr.gb28181.session.Sessions`): INVITE, ACK, BYE and INFO."""

    async def handle(self, req: SipRequest, addr: sip.Addr) -> SipResponse | None: ...

    async def close(self, bye: bool = True) -> None: ...

    def cache_live(self, on: bool) -> None: ...


@dataclass
class GbDevice:
    """See the module docstring."""

    config: Gb28181Config
    channels: Sequence[ChannelConfig]
    index: SegmentIndex
    online: Callable[[str], bool]
    """Whether a camera is recording now (its recorder's state)."""
    tz: tzinfo | None = None
    """Zone of the GB local times (the site's; default the system's)."""
    device_name: str = "nvr"
    version: str = "0"
    bind_host: str = "0.0.0.0"
    clock: Callable[[], float] = time.time
    status: DeviceStatus = field(default_factory=DeviceStatus)
    media: MediaHandler | None = None
    audit: Audit | None = None
    """Where refusals of queries are recorded (streams are audited by `media`)."""
    _endpoint: sip.SipEndpoint | None = None
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _cseq: int = 0
    _sn: int = 0
    _reg_call_id: str = ""
    _from_tag: str = field(default_factory=sip.new_tag)
    _challenge: str | None = None
    _local_ip: str = "127.0.0.1"
    _answers: set[asyncio.Task[None]] = field(default_factory=set)
    _audits: set[asyncio.Task[object]] = field(default_factory=set)

    @property
    def principal(self) -> str:
        """The platform's name in the audit log."""
        return f"gb28181:{self.config.server_id}"

    @property
    def server(self) -> sip.Addr:
        return (self.config.server_host, self.config.server_port)

    @property
    def local(self) -> sip.Addr:
        assert self._endpoint is not None
        return (self._local_ip, self._endpoint.transport.local[1])

    def status_doc(self) -> dict[str, object]:
        """The registration's state for status.json and `nvr status` (on the loop)."""
        doc: dict[str, object] = {
            "server_id": self.config.server_id,
            "server": f"{self.config.server_host}:{self.config.server_port}",
            **asdict(self.status),
        }
        sessions = getattr(self.media, "sessions", None)
        doc["streams"] = len(sessions) if isinstance(sessions, dict) else 0
        return doc

    def health(self) -> GbHealth:
        """The registration for `/api/health` and `/metrics` (read from the API's threads)."""
        sessions = getattr(self.media, "sessions", None)
        return GbHealth(
            server_id=self.config.server_id,
            server=f"{self.config.server_host}:{self.config.server_port}",
            registered=self.status.registered,
            last_error=self.status.last_error,
            clock_offset_s=self.status.clock_offset_s,
            clock_finding=self.status.clock_finding,
            clock_limit_s=CLOCK_WARN_SECONDS,
            streams=len(sessions) if isinstance(sessions, dict) else 0,
        )

    def channel(self, channel_id: str) -> ChannelConfig | None:
        for ch in self.channels:
            if ch.channel_id == channel_id:
                return ch
        return None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the SIP transport and start registering (returns at once)."""
        cfg = self.config
        transport: sip.Transport
        if cfg.transport == "udp":
            udp = sip.UdpTransport()
            await udp.open(self.bind_host, cfg.local_port)
            transport = udp
        else:
            transport = sip.TcpTransport(cfg.server_host, cfg.server_port, cfg.local_port)
        self._local_ip = await asyncio.to_thread(
            sip.local_address_towards, cfg.server_host, cfg.server_port
        )
        self._endpoint = sip.SipEndpoint(transport, self._on_request)
        self._reg_call_id = sip.new_call_id(self._local_ip)
        self._task = asyncio.create_task(self._run(), name="gb28181-register")
        log.info(
            "GB/T 28181: device %s, platform %s at %s:%d over %s, %d channels",
            cfg.device_id,
            cfg.server_id,
            cfg.server_host,
            cfg.server_port,
            cfg.transport.upper(),
            len(self.channels),
        )

    async def stop(self) -> None:
        """End every stream (BYE), unregister (`Expires: 0`) and close the socket."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.media is not None:
            self.media.cache_live(False)
            await self.media.close()
        if self.status.registered:
            try:
                await self._register(0, wait_s=UNREGISTER_TIMEOUT)
                log.info("GB/T 28181: unregistered from %s", self.config.server_id)
            except (GbError, OSError) as err:
                log.warning("GB/T 28181: could not unregister: %s", err)
            self.status.registered = False
        for task in list(self._answers):
            task.cancel()
        if self._audits:  # refusals are recorded before we go
            await asyncio.gather(*self._audits, return_exceptions=True)
        if self._endpoint is not None:
            await self._endpoint.close()

    # --- registration and keepalive --------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        cfg = self.config
        while not self._stop.is_set():
            try:
                await self._register(cfg.register_expires)
                backoff = BACKOFF_FIRST
                await self._stay_registered()
            except AuthFailed as err:
                await self._lost(str(err))
                log.error("GB/T 28181: %s; check [gb28181] password (retrying)", err)
                backoff = BACKOFF_MAX
            except ConfigError as err:  # the password cannot be read (now)
                await self._lost(str(err))
                log.error("GB/T 28181: %s", err)
                backoff = BACKOFF_MAX
            except (GbError, OSError) as err:
                await self._lost(str(err))
                log.warning(
                    "GB/T 28181: platform %s:%d unavailable (%s); retrying in %.0f s",
                    cfg.server_host,
                    cfg.server_port,
                    err,
                    backoff,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _lost(self, why: str) -> None:
        """Offline: the platform's streams end with it (a restarted platform knows none of
        them; UDP media would otherwise flow on to nobody)."""
        was = self.status.registered
        self.status.registered = False
        self.status.last_error = why
        if was:
            log.warning("GB/T 28181: offline from platform %s: %s", self.config.server_id, why)
        if self.media is not None:
            self.media.cache_live(False)
            if was:
                await self.media.close(bye=False)

    async def _stay_registered(self) -> None:
        """Keepalives and renewals until the platform stops answering (GbError)."""
        cfg = self.config
        renew_at = time.monotonic() + cfg.register_expires * RENEW_AT
        next_keepalive = time.monotonic() + cfg.keepalive_seconds
        misses = 0
        while not self._stop.is_set():
            now = time.monotonic()
            wake = min(renew_at, next_keepalive)
            if wake > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wake - now)
                continue
            if now >= renew_at:
                await self._register(cfg.register_expires)
                renew_at = time.monotonic() + cfg.register_expires * RENEW_AT
            if now >= next_keepalive:
                next_keepalive = time.monotonic() + cfg.keepalive_seconds
                if await self._keepalive():
                    misses = 0
                else:
                    misses += 1
                    self.status.keepalive_misses += 1
                    lost_tcp = isinstance(self._transport, sip.TcpTransport) and not (
                        self._transport.connected
                    )
                    if misses >= KEEPALIVE_MISSES or lost_tcp:
                        raise SipTimeout(f"{misses} keepalives unanswered")

    @property
    def _transport(self) -> sip.Transport:
        assert self._endpoint is not None
        return self._endpoint.transport

    async def _keepalive(self) -> bool:
        body = manscdp.keepalive(self.next_sn(), self.config.device_id)
        self.status.keepalives_sent += 1
        try:
            res = await self.send_message(body, wait_s=min(sip.TRANSACTION_TIMEOUT, 5.0))
        except (GbError, OSError) as err:
            log.info("GB/T 28181: keepalive unanswered: %s", err)
            return False
        if res.status_code != 200:
            log.info("GB/T 28181: keepalive refused: %d %s", res.status_code, res.reason_phrase)
            return False
        self.status.keepalives_answered += 1
        return True

    def _device_uri(self) -> str:
        return f"sip:{self.config.device_id}@{self.config.domain}"

    def _server_uri(self) -> str:
        return f"sip:{self.config.server_id}@{self.config.domain}"

    def new_request(
        self,
        method: str,
        uri: str,
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to: str | None = None,
        from_header: str | None = None,
    ) -> SipRequest:
        """A request from the device: Via (our address, rport), From, To, Call-ID, CSeq."""
        self._cseq += 1
        local_ip, local_port = self.local
        req = SipRequest(method=method, uri=uri)
        req.headers.set_single(
            "Via",
            f"SIP/2.0/{self._transport.name} {local_ip}:{local_port};rport;"
            f"branch={sip.new_branch()}",
        )
        req.headers.set_single(
            "From", from_header or f"<{self._device_uri()}>;tag={from_tag or sip.new_tag()}"
        )
        req.headers.set_single("To", to or f"<{self._server_uri()}>")
        req.headers.set_single("Call-ID", call_id or sip.new_call_id(local_ip))
        req.headers.set_single("CSeq", f"{self._cseq} {method}")
        req.headers.set_single("Max-Forwards", "70")
        req.headers.set_single("User-Agent", sip.USER_AGENT)
        return req

    def next_sn(self) -> int:
        """The next MANSCDP serial number of a message we start."""
        self._sn += 1
        return self._sn

    async def send_request(
        self, req: SipRequest, wait_s: float = sip.TRANSACTION_TIMEOUT
    ) -> SipResponse:
        """Send a request of ours to the platform; its final response."""
        return await self._send(req, wait_s)

    async def _send(self, req: SipRequest, wait_s: float = sip.TRANSACTION_TIMEOUT) -> SipResponse:
        assert self._endpoint is not None
        if isinstance(self._transport, sip.TcpTransport):
            await self._transport.ensure()
        return await self._endpoint.request(req, self.server, wait_s)

    async def _register(self, expires: int, wait_s: float = sip.TRANSACTION_TIMEOUT) -> None:
        cfg = self.config
        local_ip, local_port = self.local
        uri = self._server_uri()

        def build(auth: tuple[str, str] | None) -> SipRequest:
            req = self.new_request(
                "REGISTER",
                uri,
                call_id=self._reg_call_id,
                from_tag=self._from_tag,
                to=f"<{self._device_uri()}>",
            )
            req.headers.set_single("Contact", f"<sip:{cfg.device_id}@{local_ip}:{local_port}>")
            req.headers.set_single("Expires", str(expires))
            req.headers.set_single("X-GB-Ver", "2.0")  # 2016 edition (GB/T 28181-2022 is 3.0)
            if auth is not None:
                req.headers.set_single(*auth)
            return req

        res = await self._send(build(None), wait_s)
        if res.status_code in (401, 407):
            auth = sip.authorization(
                res, username=cfg.device_id, password=cfg.password(), method="REGISTER", uri=uri
            )
            if auth is None:
                raise AuthFailed("REGISTER", res.status_code, "a challenge we cannot answer")
            res = await self._send(build(auth), wait_s)
            if res.status_code in (401, 403, 407):
                raise AuthFailed("REGISTER", res.status_code, res.reason_phrase)
        if res.status_code != 200:
            raise SipRejected("REGISTER", res.status_code, res.reason_phrase)
        if expires == 0:
            return
        self._check_clock(res)
        if not self.status.registered:
            self.status.registered_since = self.clock()
            log.info("GB/T 28181: registered with %s (expires %d s)", cfg.server_id, expires)
        self.status.registered = True
        if self.media is not None:
            self.media.cache_live(True)
        self.status.registrations += 1
        self.status.last_error = ""

    def _check_clock(self, res: SipResponse) -> None:
        date = res.headers.get_first("Date")
        if not date:
            return
        theirs = parse_date(date, self.tz)
        if theirs is None:
            log.info("GB/T 28181: platform Date header not understood: %r", date[:64])
            return
        offset = theirs - self.clock()
        self.status.clock_offset_s = offset
        if abs(offset) > CLOCK_WARN_SECONDS:
            finding = (
                f"platform clock differs from ours by {offset:+.1f} s "
                "(our clock is not changed; check NTP on both)"
            )
            if finding != self.status.clock_finding:
                log.warning("GB/T 28181: %s", finding)
            self.status.clock_finding = finding
        else:
            self.status.clock_finding = ""

    async def send_message(
        self, body: bytes, wait_s: float = sip.TRANSACTION_TIMEOUT
    ) -> SipResponse:
        """A MANSCDP MESSAGE to the platform; its final response."""
        req = self.new_request("MESSAGE", self._server_uri())
        req.headers.set_single("Content-Type", manscdp.CONTENT_TYPE)
        req.body = body
        return await self._send(req, wait_s)

    # --- requests from the platform ------------------------------------------------------

    async def _on_request(self, req: SipRequest, addr: sip.Addr) -> SipResponse | None:
        method = req.method
        if method == "MESSAGE":
            return self._on_message(req)
        if method in ("INVITE", "ACK", "BYE", "INFO", "CANCEL"):
            if self.media is None:
                return None if method == "ACK" else sip.response_to(req, 488, "Not Acceptable")
            return await self.media.handle(req, addr)
        if method == "OPTIONS":
            return sip.response_to(req, 200, "OK")
        return sip.response_to(req, 405, "Method Not Allowed")

    def _on_message(self, req: SipRequest) -> SipResponse:
        try:
            query = manscdp.parse(req.body)
        except manscdp.ManscdpError as err:
            log.info("GB/T 28181: unreadable MESSAGE body: %s", err)
            return sip.response_to(req, 400, "Bad Request")
        if query.root != "Query" or query.cmd not in (
            "Catalog",
            "DeviceInfo",
            "DeviceStatus",
            "RecordInfo",
        ):
            log.info("GB/T 28181: %s/%s not supported (answered 200)", query.root, query.cmd)
            return sip.response_to(req, 200, "OK")
        if (
            query.cmd in ("DeviceStatus", "RecordInfo")
            and query.device_id != self.config.device_id
            and self.channel(query.device_id) is None
        ):
            self._refuse_query(query)
            return sip.response_to(req, 404, "Not Found")
        task = asyncio.create_task(self._answer(query), name=f"gb28181-{query.cmd}")
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)
        return sip.response_to(req, 200, "OK")

    def _refuse_query(self, query: manscdp.Query) -> None:
        """A query about a channel the platform may not see (not in `[gb28181] cameras`, or
        no camera at all): refused with 404 and audited as refused (R5, R7)."""
        log.info(
            "GB/T 28181: %s for channel %s refused (not offered to the platform)",
            query.cmd,
            query.device_id[:20],
        )
        if self.audit is None:
            return
        detail: dict[str, object] = {
            "cmd": query.cmd,
            "channel": query.device_id[:20],
            "reason": "no such channel",
        }
        task = asyncio.create_task(
            asyncio.to_thread(self.audit, self.principal, "query", "?", "refused", detail),
            name=f"gb28181-audit-{query.cmd}",
        )
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _answer(self, query: manscdp.Query) -> None:
        """Send the answer to a query as MESSAGEs of our own (after our 200 to theirs)."""
        try:
            bodies = await self._bodies(query)
        except manscdp.ManscdpError as err:
            log.info("GB/T 28181: %s query not answered: %s", query.cmd, err)
            return
        for body in bodies:
            try:
                res = await self.send_message(body)
            except (GbError, OSError) as err:
                log.warning("GB/T 28181: %s answer not delivered: %s", query.cmd, err)
                return
            if res.status_code != 200:
                log.warning("GB/T 28181: %s answer refused: %d", query.cmd, res.status_code)
                return

    async def _bodies(self, query: manscdp.Query) -> list[bytes]:
        cfg = self.config
        if query.cmd == "Catalog":
            items = [
                Channel(ch.channel_id, ch.camera, ch.name, ch.address, self.online(ch.camera))
                for ch in self.channels
            ]
            return manscdp.catalog(
                query.sn, cfg.device_id, cfg.domain[:6], items, CATALOG_PER_MESSAGE
            )
        if query.cmd == "DeviceInfo":
            return [
                manscdp.device_info(
                    query.sn, cfg.device_id, self.device_name, self.version, len(self.channels)
                )
            ]
        now_ms = int(self.clock() * 1000)
        if query.cmd == "DeviceStatus":
            ch = self.channel(query.device_id)
            if ch is not None:
                up = self.online(ch.camera)
                target = ch.channel_id
            else:
                up = True
                target = cfg.device_id
            recording = any(self.online(c.camera) for c in self.channels) if ch is None else up
            return [
                manscdp.device_status(
                    query.sn, target, online=up, recording=recording, now_ms=now_ms, tz=self.tz
                )
            ]
        # RecordInfo
        ch = self.channel(query.device_id)
        if ch is None:
            raise manscdp.ManscdpError(f"no channel {query.device_id}")
        start = manscdp.parse_gb_time(query.fields.get("StartTime", ""), self.tz)
        end = manscdp.parse_gb_time(query.fields.get("EndTime", ""), self.tz)
        segments = await asyncio.to_thread(self.index.segments, ch.camera, start, end)
        spans = spans_of(segments, start, end)
        return manscdp.record_info(
            query.sn, ch.channel_id, ch.name, spans, self.tz, RECORDS_PER_MESSAGE
        )


def channels_of(config: NvrConfig) -> list[ChannelConfig]:
    """The channels the platform may see: the enabled cameras listed in `[gb28181] cameras`
    (none when it lists none), id from `NvrConfig.gb_channel_ids()`, name from the camera's
    `location` (Chinese names welcome) or else its name, address its location; masked when
    the camera has privacy masks and the platform is not `unmasked`."""
    ids = config.gb_channel_ids()
    unmasked = config.gb28181 is not None and config.gb28181.unmasked
    offered = set(config.gb28181.cameras) if config.gb28181 is not None else set()
    return [
        ChannelConfig(
            cam.name,
            ids[cam.name],
            cam.location or cam.name,
            cam.location,
            masked=bool(cam.privacy_masks) and not unmasked,
        )
        for cam in config.cameras
        if cam.enabled and cam.name in offered
    ]


def device_for(config: NvrConfig, store: SegmentStore, supervisor: Supervisor) -> GbDevice:
    """The daemon's device: channels from the config, online = the recorder is recording,
    GB local times in the site's zone, live from the supervisor's packet taps, every stream
    in the store's audit log."""
    assert config.gb28181 is not None

    def online(camera: str) -> bool:
        return any(s.camera == camera and s.state == "recording" for s in supervisor.snapshot())

    try:
        version = importlib.metadata.version("nvr")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    tz = ZoneInfo(config.site.timezone) if config.site.timezone else None
    device = GbDevice(
        config.gb28181,
        channels_of(config),
        store,
        online,
        tz=tz,
        device_name=config.site.name or "nvr",
        version=version,
        audit=store.audit.append,
    )
    device.media = Sessions(device, store, supervisor.tap, store.audit.append)
    return device
