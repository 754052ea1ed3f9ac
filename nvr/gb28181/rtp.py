"""RTP for GB/T 28181 media: a PS pack cut into RTP packets (payload type 96, all packets of
a frame with the frame's 90 kHz timestamp, the marker on the last, the SSRC from the
INVITE's `y=` line) and sent over UDP, or over TCP with RFC 4571 framing (a 2-byte length
before each packet) as the active side (we connect to the platform) or the passive side (the
platform connects to the port we answered with).

Runs on the event loop; TCP senders wait for the socket to drain (a slow platform slows the
stream, never the recorder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass, field

log = logging.getLogger("nvr.gb28181.rtp")

PAYLOAD_TYPE = 96
MAX_PAYLOAD = 1400
"""RTP payload per packet: with IP/UDP/RTP headers inside a 1500-byte Ethernet MTU."""
CONNECT_TIMEOUT = 5.0


def packetize(payload: bytes, seq: int, timestamp: int, ssrc: int) -> tuple[list[bytes], int]:
    """RTP packets of one frame and the next sequence number."""
    out: list[bytes] = []
    chunks = [payload[i : i + MAX_PAYLOAD] for i in range(0, len(payload), MAX_PAYLOAD)] or [b""]
    for n, chunk in enumerate(chunks):
        marker = 0x80 if n == len(chunks) - 1 else 0
        header = struct.pack(
            ">BBHII", 0x80, marker | PAYLOAD_TYPE, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
        )
        out.append(header + chunk)
        seq += 1
    return out, seq & 0xFFFF


class _Udp(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        log.debug("RTP over UDP: %s", exc)


@dataclass
class RtpSender:
    """One media stream's RTP sender (see the module docstring). `open()` before `send`."""

    transport: str
    """"udp", "tcp-active" (we connect) or "tcp-passive" (the platform connects)."""
    remote: tuple[str, int]
    ssrc: int
    bind_host: str = "0.0.0.0"
    local_port: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0
    _seq: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _writer: asyncio.StreamWriter | None = None
    _server: asyncio.Server | None = None
    _accepted: asyncio.Future[asyncio.StreamWriter] | None = None
    _closed: bool = field(default=False)

    async def prepare(self) -> int:
        """Bind the local port (UDP socket, or the listening TCP socket when passive) and
        return it, for the SDP answer."""
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self.bind_host, 0))
            self.local_port = int(self._udp.get_extra_info("sockname")[1])
        elif self.transport == "tcp-passive":
            self._accepted = loop.create_future()

            async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if self._accepted is not None and not self._accepted.done():
                    self._accepted.set_result(writer)
                else:
                    writer.close()

            self._server = await asyncio.start_server(accept, self.bind_host, 0)
            self.local_port = int(self._server.sockets[0].getsockname()[1])
        else:
            self.local_port = 0  # chosen at connect; the SDP carries 9 (discard) per RFC 4145
        return self.local_port

    async def open(self) -> None:
        """Connect (TCP active) or wait for the platform's connection (TCP passive)."""
        if self.transport == "tcp-active":
            _, self._writer = await asyncio.wait_for(
                asyncio.open_connection(*self.remote), CONNECT_TIMEOUT
            )
        elif self.transport == "tcp-passive":
            assert self._accepted is not None
            self._writer = await asyncio.wait_for(self._accepted, CONNECT_TIMEOUT)
            if self._server is not None:
                self._server.close()  # one connection per stream

    async def send(self, payload: bytes, timestamp: int) -> None:
        """Send one frame's PS pack; ConnectionError when the TCP peer has gone."""
        packets, self._seq = packetize(payload, self._seq, timestamp, self.ssrc)
        self.sent_packets += len(packets)
        self.sent_bytes += sum(len(p) for p in packets)
        if self._udp is not None:
            for packet in packets:
                self._udp.sendto(packet, self.remote)
            return
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionError("the RTP/TCP connection is closed")
        writer.write(b"".join(struct.pack(">H", len(p)) + p for p in packets))
        await writer.drain()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        if self._accepted is not None and not self._accepted.done():
            self._accepted.cancel()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
