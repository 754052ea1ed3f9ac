"""A small MPEG-2 program stream muxer (ISO/IEC 13818-1 2.5) for GB/T 28181 media: one PS
pack per access unit, the way platforms expect it (GB/T 28181-2016 appendix C): a pack
header; on every keyframe a system header and a program stream map (PSM) declaring the
stream types (0x1B H.264, 0x24 H.265; audio 0x0F AAC, 0x90 G.711 A-law, 0x91 G.711 mu-law);
then the frame in PES packets with PTS and DTS (90 kHz), split where a PES would exceed
65535 bytes. Audio frames (ADTS AAC, or G.711 bytes as they came) go in packs of their own,
only once a PSM has declared them: audio that appears or changes codec mid-stream is
declared (a new PSM version) at the next keyframe and dropped until then, since a demuxer
fixes a stream's codec at its first PES. FFmpeg's `mpeg`/`vob` muxers write
no PSM and mislabel H.265, so we write our own. Remux only: the bytes of the access units
are never touched.

Pure functions and a small stateful `PsMuxer`; called on the event loop (cheap: a few
header bytes per frame, the payload is joined once).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

STREAM_TYPES = {"h264": 0x1B, "hevc": 0x24, "aac": 0x0F, "pcm_alaw": 0x90, "pcm_mulaw": 0x91}
"""GB/T 28181-2016 appendix C gives 0x90 for G.711 (A-law); 0x91 for mu-law is the value
ZLMediaKit and ireader/media-server (the PS code most platforms run) use, and FFmpeg's
demuxer knows for Hikvision streams."""
AUDIO_CODECS = frozenset({"aac", "pcm_alaw", "pcm_mulaw"})
"""The audio a PS stream can carry (FFmpeg canonical names); other audio is not sent."""
VIDEO_ID = 0xE0
AUDIO_ID = 0xC0
MAX_PES_PAYLOAD = 65_000
"""A PES packet's length field is 16 bits; stay below it with the header."""
MUX_RATE = 0x3FFF
"""program_mux_rate in 50 byte/s units (about 6.5 Mbit/s); informative for players."""
TS_MASK = (1 << 33) - 1


def _crc32_mpeg(data: bytes) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init all ones, not reflected), for the PSM."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
            crc &= 0xFFFFFFFF
    return crc


def pack_header(scr: int) -> bytes:
    """MPEG-2 pack header (14 bytes) with system clock reference `scr` (90 kHz base)."""
    scr &= TS_MASK
    ext = 0
    return bytes(
        [
            0x00,
            0x00,
            0x01,
            0xBA,
            0x44 | ((scr >> 27) & 0x38) | ((scr >> 28) & 0x03),
            (scr >> 20) & 0xFF,
            ((scr >> 12) & 0xF8) | 0x04 | ((scr >> 13) & 0x03),
            (scr >> 5) & 0xFF,
            ((scr << 3) & 0xF8) | 0x04 | ((ext >> 7) & 0x03),
            ((ext << 1) & 0xFE) | 0x01,
            (MUX_RATE >> 14) & 0xFF,
            (MUX_RATE >> 6) & 0xFF,
            ((MUX_RATE << 2) & 0xFC) | 0x03,
            0xF8,  # reserved, no stuffing
        ]
    )


@functools.cache
def system_header(audio: bool) -> bytes:
    """The system header: bounds, and a P-STD buffer per stream."""
    streams = bytes([VIDEO_ID, 0xE0 | 0x20 | (400 >> 8), 400 & 0xFF])  # 400 KiB video buffer
    if audio:
        streams += bytes([AUDIO_ID, 0xC0 | (32 >> 8), 32 & 0xFF])  # 32 x 128 bytes
    rate = MUX_RATE
    body = bytes(
        [
            0x80 | ((rate >> 15) & 0x7F),
            (rate >> 7) & 0xFF,
            ((rate << 1) & 0xFE) | 0x01,
            (1 if audio else 0) << 2,  # audio_bound, not fixed, not CSPS
            0xE0 | 1,  # audio and video locked, marker, video_bound 1
            0x7F,  # no packet rate restriction, reserved
        ]
    )
    body += streams
    return b"\x00\x00\x01\xbb" + struct.pack(">H", len(body)) + body


@functools.cache
def program_stream_map(video_codec: str, audio_codec: str | None, version: int = 0) -> bytes:
    """The PSM: the stream type of each elementary stream, with its CRC (computed bit by
    bit, so kept: a stream sends the same few on every keyframe)."""
    entries = bytes([STREAM_TYPES[video_codec], VIDEO_ID, 0, 0])
    if audio_codec is not None:
        entries += bytes([STREAM_TYPES[audio_codec], AUDIO_ID, 0, 0])
    body = bytes([0x80 | 0x60 | (version & 0x1F), 0xFF]) + struct.pack(">H", 0)
    body += struct.pack(">H", len(entries)) + entries
    length = len(body) + 4
    head = b"\x00\x00\x01\xbc" + struct.pack(">H", length) + body
    return head + struct.pack(">I", _crc32_mpeg(head))


def _timestamp(prefix: int, ts: int) -> bytes:
    ts &= TS_MASK
    return bytes(
        [
            (prefix << 4) | ((ts >> 29) & 0x0E) | 0x01,
            (ts >> 22) & 0xFF,
            ((ts >> 14) & 0xFE) | 0x01,
            (ts >> 7) & 0xFF,
            ((ts << 1) & 0xFE) | 0x01,
        ]
    )


def pes_packets(stream_id: int, payload: bytes, pts: int, dts: int | None) -> list[bytes]:
    """The PES packets carrying one access unit: PTS (and DTS when it differs) on the first."""
    out: list[bytes] = []
    for at in range(0, max(len(payload), 1), MAX_PES_PAYLOAD):
        chunk = payload[at : at + MAX_PES_PAYLOAD]
        if at == 0:
            if dts is not None and dts != pts:
                flags, fields = 0xC0, _timestamp(0b0011, pts) + _timestamp(0b0001, dts)
            else:
                flags, fields = 0x80, _timestamp(0b0010, pts)
            first = 0x84  # '10', data_alignment_indicator: an access unit starts here
        else:
            flags, fields, first = 0x00, b"", 0x80
        header = bytes([first, flags, len(fields)]) + fields
        out.append(
            b"\x00\x00\x01"
            + bytes([stream_id])
            + struct.pack(">H", len(header) + len(chunk))
            + header
            + chunk
        )
    return out


@dataclass
class PsMuxer:
    """One program stream: `video` frames (Annex B access units) and `audio` frames (ADTS
    AAC or G.711), each into a pack of its own; timestamps in 90 kHz."""

    video_codec: str
    audio_codec: str | None = None
    """The audio the next keyframe's PSM declares (set it when the audio appears or changes)."""
    declared: str | None = field(default=None, init=False)
    """The audio the last PSM sent declared: `audio` sends only that."""
    _version: int = field(default=0, init=False)
    _psm_sent: bool = field(default=False, init=False)

    def video(self, data: bytes, pts: int, dts: int, keyframe: bool) -> bytes:
        parts = [pack_header(dts)]
        if keyframe:
            if self.audio_codec != self.declared:
                if self._psm_sent:
                    self._version = (self._version + 1) & 0x1F
                self.declared = self.audio_codec
            self._psm_sent = True
            parts.append(system_header(self.declared is not None))
            parts.append(program_stream_map(self.video_codec, self.declared, self._version))
        parts += pes_packets(VIDEO_ID, data, pts, dts)
        return b"".join(parts)

    def audio(self, data: bytes, pts: int) -> bytes | None:
        """The pack of one audio frame; None while no PSM has declared the audio yet."""
        if self.declared is None:
            return None
        return b"".join([pack_header(pts), *pes_packets(AUDIO_ID, data, pts, None)])
