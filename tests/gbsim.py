"""An in-repo GB/T 28181 platform (the upper level) on asyncio, for tests of nvr.gb28181: it
challenges REGISTER with Digest MD5 (its own check of the response, a wrong password is
refused with 403), answers keepalives (and counts them), sends Catalog/DeviceInfo/
DeviceStatus/RecordInfo queries and collects the answers, INVITEs and BYEs, and can be
stopped and started again on the same port (a platform restart). UDP or TCP, on 127.0.0.1.

Runs on the test's event loop. Messages are parsed with `aiosipua`; transactions, the
Digest check and XML are this file's own code, not the device's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiosipua import SipMessage, SipRequest, SipResponse

from nvr.config.models import Gb28181Config

Addr = tuple[str, int]

DEVICE = "50010000001110000001"
"""The recorder's device id in the tests' `[gb28181]`."""


def md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def sm3(text: str) -> str:
    return hashlib.new("sm3", text.encode()).hexdigest()


def auth_params(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    assert scheme == "Digest", value
    out = {}
    for part in rest.split(","):
        name, _, v = part.strip().partition("=")
        out[name] = v.strip('"')
    return out


def hdr(msg: SipRequest | SipResponse, name: str) -> str:
    value = msg.headers.get_first(name)
    assert value is not None, name
    return value


def xml_of(body: bytes) -> ET.Element:
    head, _, rest = body.partition(b"?>")
    assert b"GB18030" in head.upper() or b"GB2312" in head.upper(), head
    return ET.fromstring(rest.decode("gb18030"))


async def wait_for(cond: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Wait on the test's loop for a condition the device reaches by itself (no guessed
    sleeps): polled every 20 ms, an AssertionError naming `what` after `within` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def gb_config(platform: Platform, env: str, **over: object) -> Gb28181Config:
    """`[gb28181]` for a device registering with `platform` on 127.0.0.1 (its id, domain,
    port and transport), the password in environment variable `env`; `over` replaces keys."""
    values: dict[str, object] = {
        "device_id": DEVICE,
        "domain": platform.domain,
        "server_id": platform.server_id,
        "server_host": "127.0.0.1",
        "server_port": platform.port,
        "password_env": env,
        "transport": platform.transport,
        "local_port": 0,
        "register_expires": 3600,
        "keepalive_seconds": 1,
    }
    values.update(over)
    return Gb28181Config.model_validate(values)


@dataclass
class Platform:
    """See the module docstring."""

    server_id: str
    domain: str
    password: str
    transport: str = "udp"
    port: int = 0
    qop: bool = True
    algorithm: str = "MD5"
    """The digest's hash: MD5 (GB/T 28181-2016) or SM3 (2022)."""
    date_offset_s: float = 0.0
    """Added to the Date header of REGISTER answers (a platform clock that is off)."""
    answer_keepalives: bool = True
    silent: bool = False
    """A network loss: everything is received (and its method noted in `ignored`), nothing
    answered."""
    ignored: list[str] = field(default_factory=list)
    registrations: int = 0
    unregistrations: int = 0
    refused: int = 0
    keepalives: int = 0
    device_addr: Addr | None = None
    messages: asyncio.Queue[ET.Element] = field(default_factory=asyncio.Queue)
    requests: asyncio.Queue[SipRequest] = field(default_factory=asyncio.Queue)
    """Requests other than REGISTER and MESSAGE (BYE, ...)."""
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    _udp: asyncio.DatagramTransport | None = None
    _server: asyncio.Server | None = None
    _writer: asyncio.StreamWriter | None = None
    _pending: dict[str, asyncio.Future[SipResponse]] = field(default_factory=dict)
    _cseq: int = 0
    _nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _calls: dict[str, MediaCall] = field(default_factory=dict)

    # --- transport -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            platform = self

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                    platform._received(data, (str(addr[0]), int(str(addr[1]))))

            self._udp, _ = await loop.create_datagram_endpoint(
                Proto, local_addr=("127.0.0.1", self.port)
            )
            self.port = int(self._udp.get_extra_info("sockname")[1])
        else:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Go away (a restart forgets every registration)."""
        self.registered.clear()
        self.device_addr = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
            # the socket is closed at the loop's next turn (connection_lost): let it, so a
            # restart can bind the same port
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        peer = writer.get_extra_info("peername")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self._received(head + body, (str(peer[0]), int(peer[1])))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _send(self, msg: SipRequest | SipResponse, addr: Addr) -> None:
        data = bytes(msg)
        if self._udp is not None:
            self._udp.sendto(data, addr)
        elif self._writer is not None:
            self._writer.write(data)

    def _received(self, data: bytes, addr: Addr) -> None:
        msg = SipMessage.parse(data)
        if self.silent:
            self.ignored.append(msg.method if isinstance(msg, SipRequest) else "response")
            return
        if isinstance(msg, SipResponse):
            fut = self._pending.get(msg.headers.get_first("Call-ID") or "")
            if fut is not None and not fut.done() and msg.status_code >= 200:
                fut.set_result(msg)
            return
        if msg.method == "REGISTER":
            self._register(msg, addr)
        elif msg.method == "MESSAGE":
            root = xml_of(msg.body)
            if root.findtext("CmdType") == "Keepalive":
                self.keepalives += 1
                if self.answer_keepalives:
                    self._send(self.answer(msg, 200, "OK"), addr)
                return
            self._send(self.answer(msg, 200, "OK"), addr)
            self.messages.put_nowait(root)
        else:
            self.requests.put_nowait(msg)
            if msg.method in ("BYE", "INFO"):
                self._send(self.answer(msg, 200, "OK"), addr)
            call = self._calls.get(hdr(msg, "Call-ID"))
            if msg.method == "BYE" and call is not None:
                call.bye_received.set()

    def answer(self, req: SipRequest, code: int, phrase: str) -> SipResponse:
        res = SipResponse(status_code=code, reason_phrase=phrase)
        for via in req.headers.get("Via"):
            res.headers.append("Via", via)
        for name in ("From", "To", "Call-ID", "CSeq"):
            res.headers.set_single(name, hdr(req, name))
        if ";tag=" not in hdr(res, "To"):
            res.headers.set_single("To", hdr(res, "To") + ";tag=platform")
        return res

    def _register(self, req: SipRequest, addr: Addr) -> None:
        expires = int(req.headers.get_first("Expires", "3600") or 3600)
        auth = req.headers.get_first("Authorization")
        if auth is None:
            res = self.answer(req, 401, "Unauthorized")
            qop = ', qop="auth"' if self.qop else ""
            res.headers.set_single(
                "WWW-Authenticate",
                f'Digest realm="{self.domain}", nonce="{self._nonce}", '
                f"algorithm={self.algorithm}{qop}",
            )
            self._send(res, addr)
            return
        p = auth_params(auth)
        h = sm3 if self.algorithm == "SM3" else md5
        ha1 = h(f"{p['username']}:{self.domain}:{self.password}")
        ha2 = h(f"REGISTER:{p['uri']}")
        if self.qop:
            want = h(f"{ha1}:{self._nonce}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
        else:
            want = h(f"{ha1}:{self._nonce}:{ha2}")
        if p.get("response") != want or p.get("realm") != self.domain:
            self.refused += 1
            self._send(self.answer(req, 403, "Forbidden"), addr)
            return
        res = self.answer(req, 200, "OK")
        res.headers.set_single("Expires", str(expires))
        when = datetime.now() + timedelta(seconds=self.date_offset_s)  # noqa: DTZ005 (GB local)
        res.headers.set_single("Date", when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3])
        self._send(res, addr)
        if expires == 0:
            self.unregistrations += 1
            self.registered.clear()
        else:
            self.registrations += 1
            self.device_addr = addr
            self.registered.set()

    # --- requests to the device ----------------------------------------------------------

    def request(self, method: str, device_id: str, body: bytes = b"", **headers: str) -> SipRequest:
        assert self.device_addr is not None
        self._cseq += 1
        host, port = self.device_addr
        req = SipRequest(method=method, uri=f"sip:{device_id}@{host}:{port}")
        req.headers.set_single(
            "Via",
            f"SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.port};branch=z9hG4bK"
            + secrets.token_hex(6),
        )
        req.headers.set_single(
            "From", f"<sip:{self.server_id}@{self.domain}>;tag={secrets.token_hex(4)}"
        )
        req.headers.set_single("To", f"<sip:{device_id}@{self.domain}>")
        req.headers.set_single("Call-ID", secrets.token_hex(8))
        req.headers.set_single("CSeq", f"{self._cseq} {method}")
        req.headers.set_single("Max-Forwards", "70")
        for name, value in headers.items():
            req.headers.set_single(name.replace("_", "-"), value)
        req.body = body
        return req

    async def send(self, req: SipRequest, wait_s: float = 10.0) -> SipResponse:
        assert self.device_addr is not None
        fut: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._pending[hdr(req, "Call-ID")] = fut
        try:
            self._send(req, self.device_addr)
            return await asyncio.wait_for(fut, wait_s)
        finally:
            del self._pending[hdr(req, "Call-ID")]

    def ack(self, invite: SipRequest, ok: SipResponse) -> None:
        assert self.device_addr is not None
        ack = SipRequest(method="ACK", uri=invite.uri)
        ack.headers.set_single("Via", hdr(invite, "Via").replace("z9hG4bK", "z9hG4bKack"))
        for name in ("From", "Call-ID"):
            ack.headers.set_single(name, hdr(invite, name))
        ack.headers.set_single("To", hdr(ok, "To"))
        ack.headers.set_single("CSeq", hdr(invite, "CSeq").split()[0] + " ACK")
        self._send(ack, self.device_addr)

    async def query(
        self, cmd: str, device_id: str, sn: int, extra: dict[str, str] | None = None
    ) -> list[ET.Element]:
        """Send a Query and collect the answers (until SumNum items or one for single ones)."""
        fields = "".join(f"<{k}>{v}</{k}>" for k, v in (extra or {}).items())
        body = (
            '<?xml version="1.0" encoding="GB2312"?>\r\n'
            f"<Query><CmdType>{cmd}</CmdType><SN>{sn}</SN><DeviceID>{device_id}</DeviceID>"
            f"{fields}</Query>"
        ).encode("gb18030")
        req = self.request("MESSAGE", device_id, body, Content_Type="Application/MANSCDP+xml")
        res = await self.send(req)
        assert res.status_code == 200, res.status_code
        got: list[ET.Element] = []
        items = 0
        while True:
            root = await asyncio.wait_for(self.messages.get(), 10)
            assert root.findtext("SN") == str(sn), ET.tostring(root)
            assert root.findtext("CmdType") == cmd
            got.append(root)
            total = root.findtext("SumNum")
            if total is None:
                return got
            items += len(root.findall("./*/Item"))
            if items >= int(total):
                return got

    async def invite(
        self,
        channel_id: str,
        kind: str = "Play",
        *,
        transport: str = "udp",
        start_s: int = 0,
        end_s: int = 0,
        speed: float | None = None,
        ssrc: str = "0100000001",
    ) -> MediaCall:
        """INVITE a channel and start receiving its RTP (`transport`: udp, or tcp-passive /
        tcp-active for the platform's own role), then ACK the 200."""
        call = MediaCall(self, transport)
        port = await call.listen()
        proto = "RTP/AVP" if transport == "udp" else "TCP/RTP/AVP"
        lines = [
            "v=0",
            f"o={channel_id} 0 0 IN IP4 127.0.0.1",
            f"s={kind}",
            f"u={channel_id}:0" if kind != "Play" else "",
            "c=IN IP4 127.0.0.1",
            f"t={start_s} {end_s}",
            f"m=video {port or 9} {proto} 96 97 98",
            "a=recvonly",
            "a=rtpmap:96 PS/90000",
            "a=rtpmap:98 H264/90000",
            "a=rtpmap:97 MPEG4/90000",
        ]
        if transport != "udp":
            lines += [f"a=setup:{transport.split('-')[1]}", "a=connection:new"]
        if speed is not None:
            lines.append(f"a=downloadspeed:{speed:g}")
        lines.append(f"y={ssrc}")
        sdp = "\r\n".join(ln for ln in lines if ln) + "\r\n"
        req = self.request(
            "INVITE",
            channel_id,
            sdp.encode(),
            Content_Type="APPLICATION/SDP",
            Subject=f"{channel_id}:{ssrc},{self.server_id}:0",
            Contact=f"<sip:{self.server_id}@127.0.0.1:{self.port}>",
        )
        call.invite = req
        res = await self.send(req)
        call.answer = res
        if res.status_code != 200:
            await call.close()
            return call
        self.ack(req, res)
        await call.connect(res.body.decode())
        self._calls[hdr(req, "Call-ID")] = call
        return call

    async def close(self) -> None:
        for call in list(self._calls.values()):
            await call.close()
        await self.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Platform:
        """`async with Platform(...) as p`: started, and closed at the end."""
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


@dataclass
class RtpPacket:
    seq: int
    timestamp: int
    marker: bool
    ssrc: int
    payload: bytes


def rtp_of(data: bytes) -> RtpPacket:
    assert data[0] >> 6 == 2, "RTP version 2"
    cc = data[0] & 0x0F
    return RtpPacket(
        int.from_bytes(data[2:4], "big"),
        int.from_bytes(data[4:8], "big"),
        bool(data[1] & 0x80),
        int.from_bytes(data[8:12], "big"),
        data[12 + 4 * cc :],
    )


@dataclass
class MediaCall:
    """One INVITE's media as the platform receives it."""

    platform: Platform
    transport: str
    invite: SipRequest | None = None
    answer: SipResponse | None = None
    packets: list[RtpPacket] = field(default_factory=list)
    payload_types: set[int] = field(default_factory=set)
    first_packet_at: float | None = None
    """Monotonic time of the first RTP packet."""
    bye_received: asyncio.Event = field(default_factory=asyncio.Event)
    connection_closed: asyncio.Event = field(default_factory=asyncio.Event)
    _udp: asyncio.DatagramTransport | None = None
    _server: asyncio.Server | None = None
    _reader: asyncio.Task[None] | None = None
    _writer: asyncio.StreamWriter | None = None

    def _take(self, data: bytes) -> None:
        if self.first_packet_at is None:
            self.first_packet_at = time.monotonic()
        self.payload_types.add(data[1] & 0x7F)
        self.packets.append(rtp_of(data))

    async def listen(self) -> int:
        loop = asyncio.get_running_loop()
        call = self
        if self.transport == "udp":

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
                    call._take(data)

            self._udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
            return int(self._udp.get_extra_info("sockname")[1])
        if self.transport == "tcp-passive":  # we listen, the device connects
            self._server = await asyncio.start_server(self._read, "127.0.0.1", 0)
            return int(self._server.sockets[0].getsockname()[1])
        return 0

    async def connect(self, answer_sdp: str) -> None:
        if self.transport != "tcp-active":
            return
        port = 0
        for line in answer_sdp.splitlines():
            if line.startswith("m=video"):
                port = int(line.split()[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self._reader = asyncio.create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 4571: a 2-byte length, then the RTP packet."""
        self._writer = writer
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                self._take(await reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connection_closed.set()
            writer.close()

    def ps(self) -> bytes:
        """The PS stream: RTP payloads in sequence order."""
        return b"".join(p.payload for p in sorted(self.packets, key=lambda p: p.seq))

    async def bye(self) -> SipResponse:
        assert self.invite is not None and self.answer is not None
        req = self.platform.request("BYE", hdr(self.invite, "To").split("@")[0][5:])
        req.headers.set_single("Call-ID", hdr(self.invite, "Call-ID"))
        req.headers.set_single("From", hdr(self.invite, "From"))
        req.headers.set_single("To", hdr(self.answer, "To"))
        res = await self.platform.send(req)
        await self.close()
        return res

    async def info(self, body: str) -> SipResponse:
        assert self.invite is not None and self.answer is not None
        req = self.platform.request("INFO", "0", body.encode(), Content_Type="Application/MANSRTSP")
        req.headers.set_single("Call-ID", hdr(self.invite, "Call-ID"))
        req.headers.set_single("From", hdr(self.invite, "From"))
        req.headers.set_single("To", hdr(self.answer, "To"))
        return await self.platform.send(req)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
