"""SIP for the GB/T 28181 device: transports (UDP, TCP with RFC 3261 stream framing), client
transactions (send a request, retransmit over UDP, await the final response), server side
(answer requests, replay the answer to a retransmitted request) and Digest authentication.

Messages are parsed and built, and Digest challenges answered, with `aiosipua` (typed, pure
Python, no dependencies). It keeps the request URI as text: GB/T 28181 addresses devices as
`sip:<20 digits>@<10-digit domain>`, which RFC 3261's host grammar refuses (a top label must
start with a letter), so the stricter `sipmessage` cannot parse the standard's own request
lines. Its transaction and dialog layers are written for telephony (INVITE with SDP
answer/offer, RTP bridging); the small client/server transaction layer GB needs (UDP
retransmission, answer replay, TCP stream framing) is this module's. Runs on the daemon's
event loop; nothing here blocks.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiosipua import SipMessage, SipRequest, SipResponse
from aiosipua.auth import SipDigestAuth, answer_challenge
from aiosipua.headers import AuthCredentials, parse_auth, stringify_auth

from nvr.gb28181.errors import SipTimeout

log = logging.getLogger("nvr.gb28181.sip")

T1 = 0.5
"""RFC 3261's round-trip estimate: UDP retransmissions start at T1 and double to T2."""
T2 = 4.0
TRANSACTION_TIMEOUT = 8.0
"""Seconds a request waits for its final answer (RFC 3261's 64*T1 is 32 s; a platform that
has not answered in 8 s is treated as away, so the device notices a lost platform sooner)."""
ANSWER_MEMORY = 32.0
"""Seconds an answer is kept to replay it to a retransmitted request (64*T1)."""
MAX_MESSAGE = 65_535
USER_AGENT = "nvr-gb28181"

Addr = tuple[str, int]
RequestHandler = Callable[[SipRequest, Addr], Awaitable[SipResponse | None]]


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


def parse(data: bytes) -> SipRequest | SipResponse | None:
    """One message, or None (logged) when it is not SIP."""
    try:
        return SipMessage.parse(data)
    except (ValueError, IndexError) as err:
        log.warning("dropping a malformed SIP message (%d bytes): %s", len(data), err)
        return None


def serialize(msg: SipRequest | SipResponse) -> bytes:
    return bytes(msg)  # with an exact Content-Length


def local_address_towards(host: str, port: int) -> str:
    """The local IP the kernel would use to reach host:port (for Via and Contact)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


# --- Digest ----------------------------------------------------------------------------------


def authorization(
    res: SipResponse, *, username: str, password: str, method: str, uri: str
) -> tuple[str, str] | None:
    """The (header, value) answering the Digest challenge of a 401/407 `res`: MD5 (GB/T
    28181-2016 9.1.2; `aiosipua`'s Digest), or SM3 when the platform asks for it (GB/T
    28181-2022), qop=auth when offered. None when it cannot be answered."""
    header = "WWW-Authenticate" if res.status_code == 401 else "Proxy-Authenticate"
    raw = res.headers.get_first(header)
    if raw is None:
        return None
    challenge = parse_auth(raw)
    if challenge.params.get("algorithm", "MD5").upper() == "SM3":
        return _sm3_authorization(
            challenge.params, res.status_code, username, password, method, uri
        )
    return answer_challenge(SipDigestAuth(username, password), res, res.status_code, method, uri)


def _sm3(text: str) -> str:
    return hashlib.new("sm3", text.encode("utf-8")).hexdigest()


def _sm3_authorization(
    params: dict[str, str], status: int, username: str, password: str, method: str, uri: str
) -> tuple[str, str] | None:
    """Digest with SM3 (GM/T 0004) in place of MD5: H(A1), H(A2) and the response alike."""
    nonce = params.get("nonce", "")
    if not nonce or "sm3" not in hashlib.algorithms_available:
        return None
    realm = params.get("realm", "")
    ha1 = _sm3(f"{username}:{realm}:{password}")
    ha2 = _sm3(f"{method}:{uri}")
    out = {"username": username, "realm": realm, "nonce": nonce, "uri": uri}
    qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce = secrets.token_hex(8)
        out["response"] = _sm3(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        out |= {"qop": "auth", "nc": "00000001", "cnonce": cnonce}
    elif qops:
        return None
    else:
        out["response"] = _sm3(f"{ha1}:{nonce}:{ha2}")
    out["algorithm"] = "SM3"
    if "opaque" in params:
        out["opaque"] = params["opaque"]
    name = "Authorization" if status == 401 else "Proxy-Authorization"
    return name, stringify_auth(AuthCredentials(scheme="Digest", params=out))


# --- transports ------------------------------------------------------------------------------


class Transport(abc.ABC):
    """Sends bytes to the platform (or an address) and hands received messages on."""

    name = "UDP"

    def __init__(self) -> None:
        self.on_message: Callable[[SipRequest | SipResponse, Addr], None] = lambda m, a: None
        self.local: Addr = ("0.0.0.0", 0)

    @abc.abstractmethod
    def send(self, data: bytes, addr: Addr) -> None:
        """Queue `data` for `addr` (UDP) or the connection (TCP); never blocks."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop receiving and release the socket."""

    @property
    def reliable(self) -> bool:
        return False


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        msg = parse(data)
        if msg is not None:
            self._owner.on_message(msg, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable (the platform is down): the transaction timeout reports it.
        log.debug("UDP error: %s", exc)


class UdpTransport(Transport):
    """One UDP socket bound to `local_port` on all addresses."""

    name = "UDP"

    def __init__(self) -> None:
        super().__init__()
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self, bind_host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(bind_host, port)
        )
        self._transport = transport
        sock = transport.get_extra_info("sockname")
        self.local = (str(sock[0]), int(sock[1]))

    def send(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One SIP message from a stream (RFC 3261 18.3: headers, then Content-Length bytes);
    None at the end of the stream. Leading CRLF keepalives are skipped."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as err:
        raise ConnectionError("SIP header section too long") from err
    head = head.lstrip(b"\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            try:
                length = int(value.strip())
            except ValueError as err:
                raise ConnectionError("bad Content-Length") from err
    if not 0 <= length <= MAX_MESSAGE:
        raise ConnectionError(f"Content-Length {length} out of range")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    return head + body


class TcpTransport(Transport):
    """One TCP connection to the platform, opened by us (GB/T 28181 over TCP: the device
    connects). A lost connection is reopened at the next send by `ensure`."""

    name = "TCP"

    def __init__(self, host: str, port: int, local_port: int) -> None:
        super().__init__()
        self._remote = (host, port)
        self._local_port = local_port
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def reliable(self) -> bool:
        return True

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def ensure(self) -> None:
        """Connect if not connected (OSError when the platform does not accept)."""
        async with self._lock:
            if self.connected:
                return
            local = ("0.0.0.0", self._local_port) if self._local_port else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self._remote, local_addr=local), TRANSACTION_TIMEOUT
            )
            sock = writer.get_extra_info("sockname")
            self.local = (str(sock[0]), int(sock[1]))
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer), name="gb-sip-tcp")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await read_message(reader)
                if data is None:
                    break
                msg = parse(data)
                if msg is not None:
                    self.on_message(msg, self._remote)
        except (ConnectionError, OSError) as err:
            log.info("SIP TCP connection to the platform lost: %s", err)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None

    def send(self, data: bytes, addr: Addr) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


# --- the user agent core -------------------------------------------------------------------


@dataclass
class _Pending:
    future: asyncio.Future[SipResponse]
    data: bytes
    addr: Addr


@dataclass
class _Answered:
    data: bytes
    at: float


@dataclass
class SipEndpoint:
    """Client and server transactions over one transport. Requests from the platform go to
    `handler`; its Response (None: answer later with `respond`, e.g. an INVITE) is sent and
    remembered so a retransmitted request gets the same answer."""

    transport: Transport
    handler: RequestHandler
    _pending: dict[tuple[str, str, str], _Pending] = field(default_factory=dict)
    _answered: dict[tuple[str, str, str], _Answered] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.transport.on_message = self._received

    @staticmethod
    def _key(msg: SipRequest | SipResponse) -> tuple[str, str, str]:
        branch = ""
        vias = msg.headers.get("Via")
        if vias:
            for part in vias[0].split(";")[1:]:
                name, _, value = part.partition("=")
                if name.strip().lower() == "branch":
                    branch = value.strip()
        cseq = msg.headers.get_first("CSeq", "") or ""
        call_id = msg.headers.get_first("Call-ID", "") or ""
        return (branch, call_id, cseq.split()[-1] if cseq else "")

    def _received(self, msg: SipRequest | SipResponse, addr: Addr) -> None:
        key = self._key(msg)
        if isinstance(msg, SipResponse):
            pending = self._pending.get(key)
            if pending is None or msg.status_code < 200:
                return  # provisional, or a late retransmission of an answer
            if not pending.future.done():
                pending.future.set_result(msg)
            return
        if msg.method == "ACK":
            task = asyncio.create_task(self._handle(msg, addr, key), name="gb-sip-ack")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        seen = self._answered.get(key)
        if seen is not None:
            if seen.data:
                self.transport.send(seen.data, addr)
            return
        self._answered[key] = _Answered(b"", time.monotonic())
        task = asyncio.create_task(self._handle(msg, addr, key), name=f"gb-sip-{msg.method}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, req: SipRequest, addr: Addr, key: tuple[str, str, str]) -> None:
        try:
            answer = await self.handler(req, addr)
        except Exception:
            # One malformed request must not end the device: answer 500, keep the trace.
            log.exception("handling a SIP %s failed", req.method)
            answer = response_to(req, 500, "Server Internal Error")
        if answer is not None and req.method != "ACK":
            self.respond(answer, addr, key)

    def respond(
        self, answer: SipResponse, addr: Addr, key: tuple[str, str, str] | None = None
    ) -> None:
        data = serialize(answer)
        if key is None:
            key = self._key(answer)
        self._answered[key] = _Answered(data, time.monotonic())
        self.transport.send(data, addr)
        self._forget_old()

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - ANSWER_MEMORY
        for key in [k for k, a in self._answered.items() if a.at < cutoff]:
            del self._answered[key]

    async def request(
        self, req: SipRequest, addr: Addr, wait_s: float = TRANSACTION_TIMEOUT
    ) -> SipResponse:
        """Send `req` and return its final response; SipTimeout when none comes. Over UDP
        the request is retransmitted (T1 doubling to T2) until answered."""
        data = serialize(req)
        key = self._key(req)
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._pending[key] = _Pending(future, data, addr)
        try:
            self.transport.send(data, addr)
            deadline = time.monotonic() + wait_s
            interval = T1
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SipTimeout(f"no answer to {req.method} within {wait_s:.0f} s")
                wait = left if self.transport.reliable else min(interval, left)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), wait)
                except TimeoutError:
                    if not self.transport.reliable:
                        self.transport.send(data, addr)
                        interval = min(interval * 2, T2)
        finally:
            del self._pending[key]
            if not future.done():
                future.cancel()

    def send_ack(self, ack: SipRequest, addr: Addr) -> None:
        self.transport.send(serialize(ack), addr)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.close()


def response_to(
    req: SipRequest, code: int, phrase: str, *, to_tag: str | None = None
) -> SipResponse:
    """A response to `req`, copying Via, From, To (adding our tag), Call-ID and CSeq."""
    res = SipResponse(status_code=code, reason_phrase=phrase)
    for via in req.headers.get("Via"):
        res.headers.append("Via", via)
    res.headers.set_single("From", req.headers.get_first("From", "") or "")
    to = req.headers.get_first("To", "") or ""
    if to_tag and ";tag=" not in to.replace(" ", ""):
        to += f";tag={to_tag}"
    res.headers.set_single("To", to)
    res.headers.set_single("Call-ID", req.headers.get_first("Call-ID", "") or "")
    res.headers.set_single("CSeq", req.headers.get_first("CSeq", "") or "")
    res.headers.set_single("User-Agent", USER_AGENT)
    return res
