"""RTP for H.264 pass-through, cheaper than aiortc's generic sender path (issue 17's cost per
live viewer). Runs on the daemon's event loop.

aiortc sends a pre-encoded `av.Packet` as: a copy into the packet, a copy out of it, a split
and FU-A packetisation in Python, then per RTP packet an `RtpPacket` object, its serialisation
with header extensions, two NTP clock reads through `datetime`, SRTP and four coroutine hops
down to the UDP socket, all of it again for every viewer of the same camera. Here:

- `frame_payloads`: a camera's access unit is packetised (RFC 6184 single NAL unit, STAP-A,
  FU-A; the same payloads aiortc's depacketiser and browsers read) once, and the payloads are
  shared by all the viewers of that camera (a small cache of the latest frames, by identity).
- `install`: a WHEP session's `RTCRtpSender` gets its RTP loop replaced by `_Sender.run`,
  which per packet only packs the 12-byte header in front of a per-session header tail (SSRC
  and the mid header extension, made once by aiortc's own serialiser; no abs-send-time,
  see `_Sender.run`) and applies the session's SRTP. A frame's
  datagrams go out on the ICE pair's socket, its equal-sized ones (the FU-A fragments) in
  one `sendmsg` with Linux's UDP segmentation offload (`UDP_SEGMENT`: the kernel cuts the
  same datagrams; one `sendto` each where that is refused). The session's sockets read into
  small buffers (`_small_reads`). RTCP (sender reports, NACK retransmission with or without
  RTX, statistics) stays aiortc's, fed with the same counters its loop keeps. The aiortc
  internals this relies on are checked when a session starts; if they are not there
  (another aiortc version), the session keeps aiortc's own loop (slower, same stream).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from typing import Any, Protocol

from nvr.api.live.annexb import nal_units, with_parameter_sets
from nvr.ingest.tap import TapFrame

log = logging.getLogger("nvr.api.live")

PAYLOAD_MAX = 1300
"""Bytes of an RTP payload at most (aiortc's value): with the header, its extensions and the
SRTP tag a datagram stays well under a 1500-byte MTU."""
NAL_FU_A = 28
NAL_STAP_A = 24
HISTORY = 1024
"""RTP packets kept per session for retransmission on NACK (a 1080p keyframe can be several
hundred packets; aiortc keeps 128)."""
CACHE_FRAMES = 512
"""Packetised frames kept for sharing (all cameras together: ~2 s of 8 watched cameras at
30 fps); a viewer further behind packetises its own copy."""
NTP_UNIX_OFFSET = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""
READ_MAX = 16 << 10
"""Bytes read per datagram on a session's sockets: what a viewer sends (STUN, DTLS records,
RTCP) stays under a path MTU, let alone a jumbo frame."""
GSO_SEGMENTS = 40
"""Datagrams per `sendmsg` with segmentation offload (the kernel takes up to 64 and 64 KiB)."""
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_HEAD = struct.Struct("!BBHI")
"""The first 8 bytes of an RTP header: flags, marker and payload type, sequence, timestamp."""

_cache: dict[int, tuple[TapFrame, list[bytes]]] = {}


def h264_payloads(data: bytes, limit: int = PAYLOAD_MAX) -> list[bytes]:
    """The RTP payloads (packetization-mode 1) of one Annex B access unit: NAL units that fit
    go alone or aggregated (STAP-A), larger ones are cut into FU-A fragments of `limit` bytes
    (the last one shorter)."""
    out: list[bytes] = []
    small: list[bytes] = []
    size = 1  # the STAP-A header

    def flush() -> None:
        nonlocal small, size
        if len(small) == 1:
            out.append(small[0])
        elif small:
            f = 0
            nri = 0
            for nal in small:
                f |= nal[0] & 0x80
                nri = max(nri, nal[0] & 0x60)
            parts = [bytes([f | nri | NAL_STAP_A])]
            for nal in small:
                parts += (len(nal).to_bytes(2, "big"), nal)
            out.append(b"".join(parts))
        small = []
        size = 1

    for nal in nal_units(data):
        if len(nal) + 2 + size > limit:
            flush()
        if len(nal) + 3 <= limit:
            small.append(nal)
            size += 2 + len(nal)
            continue
        flush()
        indicator = (nal[0] & 0xE0) | NAL_FU_A
        kind = nal[0] & 0x1F
        first = bytes([indicator, kind | 0x80])
        middle = bytes([indicator, kind])
        last = bytes([indicator, kind | 0x40])
        body = memoryview(nal)[1:]
        chunk = limit - 2
        end = len(body)
        for at in range(0, end, chunk):
            if at == 0:
                head = first
            elif at + chunk >= end:
                head = last
            else:
                head = middle
            out.append(head + body[at : at + chunk])
    flush()
    return out


def frame_payloads(frame: TapFrame) -> list[bytes]:
    """`frame`'s RTP payloads (a keyframe with the stream's parameter sets in front when it
    carries none), packetised once for all the viewers of its camera."""
    hit = _cache.get(id(frame))
    if hit is not None and hit[0] is frame:
        return hit[1]
    data = frame.data
    if frame.keyframe:
        data = with_parameter_sets("h264", data, frame.stream.extradata)
    payloads = h264_payloads(data)
    if len(_cache) >= CACHE_FRAMES:
        del _cache[next(iter(_cache))]
    _cache[id(frame)] = (frame, payloads)
    return payloads


class PayloadSource(Protocol):
    """What the sender reads: the next frame's payloads and RTP time (90 kHz, before the
    session's random offset); raises `MediaStreamError` when the stream ends."""

    async def payloads(self) -> tuple[list[bytes], int]: ...

    def stop(self) -> None: ...


_NEEDED = (
    "_RTCRtpSender__rtp_started",
    "_RTCRtpSender__rtp_exited",
    "_RTCRtpSender__rtp_header_extensions_map",
    "_RTCRtpSender__mid",
    "_RTCRtpSender__rtx_payload_type",
    "_RTCRtpSender__rtx_sequence_number",
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
    "_ssrc",
    "_rtx_ssrc",
    "_enabled",
    "_run_rtp",
    "_retransmit",
)


def install(sender: Any, source: PayloadSource) -> bool:
    """Replace `sender`'s RTP loop (and its retransmission) with `_Sender`'s, before the
    session starts sending. False (nothing changed) when this aiortc lacks what it needs."""
    missing = [name for name in _NEEDED if not hasattr(sender, name)]
    if missing:
        log.warning("live: aiortc's RTP sender lacks %s: its own RTP loop is used", missing)
        return False
    fast = _Sender(sender, source)
    sender._run_rtp = fast.run
    sender._retransmit = fast.retransmit
    sender.nvr_fast_rtp = fast
    return True


class _Sender:
    """One session's RTP loop (see the module docstring)."""

    def __init__(self, sender: Any, source: PayloadSource) -> None:
        self._sender = sender
        self._source = source
        self._history: dict[int, bytes] = {}
        self.packets = 0
        self.frames = 0
        self.resent = 0
        self._gso = sys.platform == "linux"
        self.offloaded = 0
        """Datagrams sent with segmentation offload."""
        """Packets sent again on the receiver's NACK."""

    def _header(self) -> bytes:
        """The RTP header aiortc would send (SSRC and the mid header extension included), by
        aiortc's own serialiser."""
        from aiortc.rtp import RtpPacket

        s = self._sender
        packet = RtpPacket(ssrc=s._ssrc)
        packet.extensions.mid = s._RTCRtpSender__mid
        return packet.serialize(s._RTCRtpSender__rtp_header_extensions_map)

    async def run(self, codec: Any) -> None:
        from aiortc.mediastreams import MediaStreamError
        from aiortc.rtcdtlstransport import State
        from aiortc.utils import random32

        s = self._sender
        s._RTCRtpSender__rtp_started.set()
        dtls = s.transport
        _small_reads(dtls)
        history = self._history
        protect = dtls._tx_srtp.protect
        pack = _HEAD.pack
        seq = _first_sequence_number()
        origin = random32()
        pt = codec.payloadType
        # The header after the timestamp: SSRC and extensions, the same in every packet.
        # No abs-send-time: a passed-through stream's bitrate cannot follow a receiver's
        # estimate (REMB), and a receiver that estimates from it may send one for every
        # packet while it sees delays grow (aiortc's does), each an SRTCP packet to decrypt
        # and parse here.
        header = self._header()
        flags = header[0]
        rest = header[8:]
        try:
            while True:
                payloads, rtp_time = await self._source.payloads()
                if not s._enabled:
                    continue
                if dtls._state != State.CONNECTED:
                    raise ConnectionError("Cannot send encrypted RTP, not connected")
                target = _target(dtls)
                datagrams = []
                now = time.time() + NTP_UNIX_OFFSET
                timestamp = (origin + rtp_time) & 0xFFFFFFFF
                last = len(payloads) - 1
                octets = 0
                for i, payload in enumerate(payloads):
                    plain = b"".join(
                        (
                            pack(flags, pt | (0x80 if i == last else 0), seq, timestamp),
                            rest,
                            payload,
                        )
                    )
                    history[seq % HISTORY] = plain
                    if target is not None:
                        datagrams.append(protect(plain))
                    else:
                        await dtls._send_rtp(plain)
                    octets += len(payload)
                    seq = (seq + 1) & 0xFFFF
                if target is not None:
                    self._send(*target, datagrams)
                s._RTCRtpSender__ntp_timestamp = int(now * (1 << 32))
                s._RTCRtpSender__rtp_timestamp = timestamp
                s._RTCRtpSender__octet_count += octets
                s._RTCRtpSender__packet_count += len(payloads)
                self.packets += len(payloads)
                self.frames += 1
                # Let the loop run between frames: `payloads()` does not suspend while frames
                # are queued (a cold start's GOP, a viewer behind), and a session draining its
                # backlog in one step held the loop (and the watchdog's pings) for seconds.
                await asyncio.sleep(0)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:  # stop() waits for the exit event: set it whatever went wrong
            log.exception("live: the RTP sender failed")
        self._source.stop()
        log.info(
            "live: RTP session sent %d frames in %d packets, %d packets again on NACK",
            self.frames,
            self.packets,
            self.resent,
        )
        s._RTCRtpSender__rtp_exited.set()

    def _send(
        self, udp: Any, sock: socket.socket | None, addr: Any, datagrams: list[bytes]
    ) -> None:
        """Send a frame's datagrams in order: runs of equal size (the FU-A fragments, and a
        shorter last one) in one `sendmsg` each with UDP segmentation offload (the kernel
        cuts the same datagrams), where Linux offers it; one `sendto` each otherwise."""
        n = len(datagrams)
        i = 0
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            while j < n and j - i < GSO_SEGMENTS and len(datagrams[j]) == size:
                j += 1
            if j < n and j - i < GSO_SEGMENTS and len(datagrams[j]) < size:
                j += 1
            if j - i > 1 and sock is not None and self._gso:
                try:
                    sock.sendmsg(
                        [b"".join(datagrams[i:j])],
                        [(socket.IPPROTO_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))],
                        0,
                        addr,
                    )
                    self.offloaded += j - i
                    i = j
                    continue
                except BlockingIOError:
                    sock = None  # the socket is full: asyncio queues the rest in order
                except OSError as err:
                    log.info("live: RTP without UDP segmentation offload: %s", err)
                    self._gso = False
            for datagram in datagrams[i:j]:
                udp.sendto(datagram, addr)
            i = j

    async def retransmit(self, sequence_number: int) -> None:
        """Send a packet the receiver reported lost again (wrapped in RTX when negotiated),
        as aiortc's sender does."""
        from aiortc.rtp import RtpPacket, wrap_rtx

        plain = self._history.get(sequence_number % HISTORY)
        if plain is None or int.from_bytes(plain[2:4], "big") != sequence_number:
            return
        self.resent += 1
        s = self._sender
        rtx_type = s._RTCRtpSender__rtx_payload_type
        if rtx_type is not None:
            extensions = s._RTCRtpSender__rtp_header_extensions_map
            packet = wrap_rtx(
                RtpPacket.parse(plain, extensions),
                payload_type=rtx_type,
                sequence_number=s._RTCRtpSender__rtx_sequence_number,
                ssrc=s._rtx_ssrc,
            )
            s._RTCRtpSender__rtx_sequence_number = (packet.sequence_number + 1) & 0xFFFF
            plain = packet.serialize(extensions)
        await s.transport._send_rtp(plain)


def _first_sequence_number() -> int:
    """In the lower half, as aiortc does (a wrap-around early breaks SRTP decryption in some
    receivers)."""
    from aiortc.utils import random16

    return random16() % 32768


def _small_reads(dtls: Any) -> None:
    """Read the session's ICE sockets into `READ_MAX`-byte buffers: asyncio reads each
    datagram into a new 256 KiB bytes object (`max_size`) and shrinks it, for every RTCP or
    STUN packet a viewer sends (with a fixed 128 KiB mmap threshold, as the daemon had until
    cd785da, each was an mmap, a page fault, an mremap and an munmap)."""
    try:
        protocols = dtls.transport._connection._protocols
    except AttributeError:
        return
    for protocol in protocols:
        udp = getattr(protocol, "transport", None)
        if udp is not None and getattr(udp, "max_size", 0) > READ_MAX:
            udp.max_size = READ_MAX


def _target(dtls: Any) -> tuple[Any, socket.socket | None, Any] | None:
    """The datagram transport of the session's nominated ICE pair, its socket when datagrams
    may be written to it directly (nothing queued in the transport), and the peer's address;
    resolved per frame (ICE may switch pairs). None when they cannot be found (then the DTLS
    transport's own path)."""
    try:
        pair = dtls.transport._connection._nominated.get(1)
        udp = pair.protocol.transport
        if udp.is_closing():
            return None
        sock = getattr(udp, "_sock", None)
        if not isinstance(sock, socket.socket) or udp.get_write_buffer_size():
            sock = None
        return udp, sock, pair.remote_addr
    except AttributeError:
        return None
