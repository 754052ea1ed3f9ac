"""RTP for GB/T 28181 media: a PS pack cut into RTP packets (payload type 96, all packets of
a frame with the frame's 90 kHz timestamp, the marker on the last, the SSRC from the
INVITE's `y=` line) and sent over UDP, or over TCP with RFC 4571 framing (a 2-byte length
before each packet) as the active side (we connect to the platform) or the passive side (the
platform connects to the port we answered with).

Over UDP a frame's packets leave in one `sendto` per up to `GSO_SEGMENTS` packets where
Linux offers UDP segmentation offload (`UDP_SEGMENT`, 4.18+): the packets, each a full
`SEGMENT` bytes but the frame's last, are written back to back and the kernel cuts them into
the same datagrams a `sendto` per packet would send (bench/gb28181.py: the per-packet system
calls were most of a stream's CPU). Elsewhere, or if the option is refused, one `sendto` a
packet.

Runs on the event loop; TCP senders wait for the socket to drain (a slow platform slows the
stream, never the recorder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from dataclasses import dataclass, field

log = logging.getLogger("nvr.gb28181.rtp")

PAYLOAD_TYPE = 96
MAX_PAYLOAD = 1400
"""RTP payload per packet: with IP/UDP/RTP headers inside a 1500-byte Ethernet MTU."""
HEADER = struct.Struct(">BBHII")
SEGMENT = HEADER.size + MAX_PAYLOAD
"""A full RTP packet: the segment size given to UDP segmentation offload."""
GSO_SEGMENTS = 40
"""Packets per `sendto` with segmentation offload (the kernel takes up to 64 and 64 KiB)."""
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
"""linux/udp.h; Python's socket module names it from 3.12 on some builds only."""
CONNECT_TIMEOUT = 5.0


def packetize(payload: bytes, seq: int, timestamp: int, ssrc: int) -> tuple[list[bytes], int]:
    """RTP packets of one frame and the next sequence number."""
    out: list[bytes] = []
    view = memoryview(payload)
    count = max(1, -(-len(payload) // MAX_PAYLOAD))
    ts = timestamp & 0xFFFFFFFF
    pack = HEADER.pack
    for n in range(count):
        marker = 0x80 if n == count - 1 else 0
        header = pack(0x80, marker | PAYLOAD_TYPE, seq & 0xFFFF, ts, ssrc)
        out.append(header + view[n * MAX_PAYLOAD : (n + 1) * MAX_PAYLOAD])
        seq += 1
    return out, seq & 0xFFFF


def segmented(payload: bytes, seq: int, timestamp: int, ssrc: int) -> tuple[list[bytes], int]:
    """The same packets as `packetize`, written back to back `GSO_SEGMENTS` at a time (one
    buffer per `sendto` with `UDP_SEGMENT` = `SEGMENT`), and the next sequence number."""
    out: list[bytes] = []
    view = memoryview(payload)
    count = max(1, -(-len(payload) // MAX_PAYLOAD))
    ts = timestamp & 0xFFFFFFFF
    pack = HEADER.pack
    parts: list[bytes | memoryview] = []
    for n in range(count):
        marker = 0x80 if n == count - 1 else 0
        parts.append(pack(0x80, marker | PAYLOAD_TYPE, seq & 0xFFFF, ts, ssrc))
        parts.append(view[n * MAX_PAYLOAD : (n + 1) * MAX_PAYLOAD])
        seq += 1
        if len(parts) == 2 * GSO_SEGMENTS:
            out.append(b"".join(parts))
            parts = []
    if parts:
        out.append(b"".join(parts))
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
    gso: bool = False
    """UDP segmentation offload in use (see the module docstring)."""

    async def prepare(self) -> int:
        """Bind the local port (UDP socket, or the listening TCP socket when passive) and
        return it, for the SDP answer."""
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self.bind_host, 0))
            self.local_port = int(self._udp.get_extra_info("sockname")[1])
            sock = self._udp.get_extra_info("socket")
            try:
                sock.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, SEGMENT)
                self.gso = True
            except OSError as err:  # not Linux, or a kernel before 4.18
                log.debug("RTP over UDP without segmentation offload: %s", err)
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
        if self._udp is not None:
            seq = self._seq
            if self.gso:
                buffers, self._seq = segmented(payload, seq, timestamp, self.ssrc)
            else:
                buffers, self._seq = packetize(payload, seq, timestamp, self.ssrc)
            for buffer in buffers:
                self._udp.sendto(buffer, self.remote)
            self.sent_packets += (self._seq - seq) & 0xFFFF
            self.sent_bytes += sum(len(b) for b in buffers)
            return
        packets, self._seq = packetize(payload, self._seq, timestamp, self.ssrc)
        self.sent_packets += len(packets)
        self.sent_bytes += sum(len(p) for p in packets)
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
