"""RTP payload formats: whole frames out of RTP packets, for H.264 (RFC 6184), H.265
(RFC 7798) and AAC (RFC 3640, `mpeg4-generic`), plus the SDP parsing that says which applies.

Pure logic, no I/O: `ingest.rtsp` feeds each RTP payload with its extended timestamp and
marker bit, and takes the finished frames from `out`. Runs on the recorder thread of one
camera; called for every RTP packet, so the hot paths index bytes directly.

Video frames come out in Annex B form (start codes), the form FFmpeg's own RTSP demuxer hands
over and the MP4 muxer turns into length-prefixed samples.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

START_CODE = b"\x00\x00\x00\x01"


class PayloadError(ValueError):
    """An SDP or payload this module cannot take (the caller falls back to FFmpeg)."""


# --- SDP ---------------------------------------------------------------------------------------


@dataclass
class SdpMedia:
    """One `m=` section of a session description."""

    kind: str
    """video | audio | application ..."""
    protocol: str
    payload_type: int
    encoding: str = ""
    """Upper case, e.g. H264, H265, MPEG4-GENERIC."""
    clock_rate: int = 0
    channels: int = 1
    fmtp: dict[str, str] = field(default_factory=dict)
    """Format parameters with lower-case keys."""
    control: str = ""


def parse_sdp(text: str) -> list[SdpMedia]:
    """The media sections of `text`, each with its first payload type's rtpmap and fmtp."""
    medias: list[SdpMedia] = []
    current: SdpMedia | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise PayloadError(f"SDP media line has too few fields: {line!r}")
            try:
                pt = int(parts[3])
            except ValueError:
                raise PayloadError(f"SDP media line has no RTP payload type: {line!r}") from None
            current = SdpMedia(kind=parts[0].lower(), protocol=parts[2], payload_type=pt)
            medias.append(current)
        elif current is None or not line.startswith("a="):
            continue
        elif line.startswith("a=rtpmap:"):
            pt_text, _, spec = line[9:].partition(" ")
            if pt_text.strip() != str(current.payload_type):
                continue
            fields = spec.strip().split("/")
            current.encoding = fields[0].upper()
            try:
                current.clock_rate = int(fields[1]) if len(fields) > 1 else 0
                current.channels = int(fields[2]) if len(fields) > 2 else 1
            except ValueError:
                raise PayloadError(f"SDP rtpmap is malformed: {line!r}") from None
        elif line.startswith("a=fmtp:"):
            pt_text, _, params = line[7:].partition(" ")
            if pt_text.strip() != str(current.payload_type):
                continue
            for item in params.split(";"):
                key, sep, value = item.strip().partition("=")
                if sep:
                    current.fmtp[key.strip().lower()] = value.strip()
        elif line.startswith("a=control:"):
            current.control = line[10:].strip()
    return medias


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise PayloadError(f"SDP parameter set is not base64: {text!r}") from None


# --- video ----------------------------------------------------------------------------------------


Frame = tuple[bytearray, int, bool]
"""Annex B bytes (or a raw AAC frame), extended RTP timestamp, keyframe."""

MAX_PREFIX_BYTES = 256 * 1024
"""Parameter sets and SEI waiting for a picture are dropped beyond this size."""


class _AccessUnits:
    """What H.264 and H.265 share: parameter sets seen, frames out, the access unit being
    assembled from single NAL units, aggregation packets and fragments. A unit without a
    picture (parameter sets or SEI sent with their own timestamp or marker bit, as some
    cameras do) is kept and goes out in front of the next picture, never as a sample of its
    own. Subclasses say where the type sits in a NAL header and which types are which."""

    TYPE_SHIFT = 0
    TYPE_MASK = 0x1F
    """A NAL unit's type is `(first byte >> TYPE_SHIFT) & TYPE_MASK`."""
    PARAM_TYPES: tuple[int, ...] = ()
    VCL_TYPES: range = range(0)
    KEY_TYPES: range = range(0)
    MIN_NAL = 1
    """Bytes of a NAL unit header: an aggregated unit shorter than this is corrupt."""

    def __init__(self) -> None:
        self.params: dict[int, bytes] = {}
        """Parameter sets by NAL type, from the SDP, then in-band."""
        self.out: list[Frame] = []
        self._frame = bytearray()
        self._ts = -1
        self._key = False
        self._in_fu = False
        self._vcl = False

    def parameter_sets(self) -> bytes:
        return b"".join(START_CODE + self.params[t] for t in self.PARAM_TYPES if t in self.params)

    def _next_packet(self, ts: int) -> None:
        """A packet with timestamp `ts` begins: a new timestamp ends the unit at hand."""
        if ts != self._ts:
            if self._vcl:
                self.finish()
            self._ts = ts

    def _picture(self, t: int) -> None:
        if t in self.VCL_TYPES:
            self._vcl = True
            if t in self.KEY_TYPES:
                self._key = True

    def _nal(self, nal: memoryview, t: int) -> None:
        self._frame += START_CODE
        self._frame += nal
        self._picture(t)
        if t in self.PARAM_TYPES:
            self.params[t] = bytes(nal)

    def _aggregate(self, p: memoryview, i: int) -> None:
        """Size-prefixed NAL units from `p[i:]` (STAP-A, H.265 AP)."""
        n = len(p)
        while i + 2 < n:
            size = (p[i] << 8) | p[i + 1]
            i += 2
            if size < self.MIN_NAL or i + size > n:
                break
            self._nal(p[i : i + size], (p[i] >> self.TYPE_SHIFT) & self.TYPE_MASK)
            i += size

    def _fragment(self, p: memoryview, fu: int, nal_type: int, header: bytes, body: int) -> None:
        """One piece of a fragmented NAL unit (FU-A, H.265 FU): `fu` is its FU header,
        `header` the unit's own NAL header, `p[body:]` the piece."""
        if fu & 0x80:
            self._frame += START_CODE
            self._frame += header
            self._in_fu = True
            self._picture(nal_type)
        elif not self._in_fu:
            return  # its start was lost: nothing to attach this piece to
        self._frame += p[body:]
        if fu & 0x40:
            self._in_fu = False

    def finish(self) -> None:
        if self._vcl:
            self.out.append((self._frame, self._ts, self._key))
            self._frame = bytearray()
            self._key = False
        elif len(self._frame) > MAX_PREFIX_BYTES:
            self._frame = bytearray()
            self._key = False
        self._vcl = False
        self._in_fu = False


class H264Frames(_AccessUnits):
    """RFC 6184 packetization modes 0 and 1: single NAL units, STAP-A, FU-A."""

    codec = "h264"
    PARAM_TYPES = (7, 8)  # SPS, PPS
    VCL_TYPES = range(1, 6)
    KEY_TYPES = range(5, 6)  # IDR

    def __init__(self, media: SdpMedia) -> None:
        mode = media.fmtp.get("packetization-mode", "0")
        if mode not in ("0", "1"):
            raise PayloadError(f"H.264 packetization-mode {mode} (interleaved) is not supported")
        super().__init__()
        for ps in media.fmtp.get("sprop-parameter-sets", "").split(","):
            if ps:
                nal = _b64(ps)
                if nal:
                    self.params[nal[0] & 0x1F] = nal

    def payload(self, p: memoryview, ts: int, marker: bool) -> None:
        self._next_packet(ts)
        if not p:
            return
        t = p[0] & 0x1F
        if t == 28:  # FU-A: indicator, FU header, piece
            if len(p) >= 3:
                nal_type = p[1] & 0x1F
                self._fragment(p, p[1], nal_type, bytes(((p[0] & 0xE0) | nal_type,)), 2)
        elif 1 <= t <= 23:
            self._nal(p, t)
        elif t == 24:  # STAP-A
            self._aggregate(p, 1)
        if marker:
            self.finish()

    def _nal(self, nal: memoryview, t: int) -> None:
        super()._nal(nal, t)
        if t == 6 and len(nal) > 1 and nal[1] == 6:
            self._key = True  # recovery point SEI: an I-frame that starts a clean GOP


class H265Frames(_AccessUnits):
    """RFC 7798 without DONL: single NAL units, aggregation packets, fragmentation units."""

    codec = "hevc"
    PARAM_TYPES = (32, 33, 34)  # VPS, SPS, PPS
    VCL_TYPES = range(0, 32)
    KEY_TYPES = range(16, 22)  # BLA, IDR, CRA
    MIN_NAL = 2
    TYPE_SHIFT = 1
    TYPE_MASK = 0x3F

    def __init__(self, media: SdpMedia) -> None:
        for key in ("sprop-max-don-diff", "sprop-depack-buf-nalus"):
            if media.fmtp.get(key, "0") != "0":
                raise PayloadError(f"H.265 with {key} (decoding order numbers) is not supported")
        super().__init__()
        for key, nal_type in (("sprop-vps", 32), ("sprop-sps", 33), ("sprop-pps", 34)):
            for ps in media.fmtp.get(key, "").split(","):
                if ps:
                    self.params[nal_type] = _b64(ps)

    def payload(self, p: memoryview, ts: int, marker: bool) -> None:
        self._next_packet(ts)
        if len(p) < 2:
            return
        t = (p[0] >> 1) & 0x3F
        if t == 49:  # FU: payload header (2), FU header, piece
            if len(p) >= 4:
                nal_type = p[2] & 0x3F
                header = bytes(((p[0] & 0x81) | (nal_type << 1), p[1]))
                self._fragment(p, p[2], nal_type, header, 3)
        elif t < 48:
            self._nal(p, t)
        elif t == 48:  # aggregation packet
            self._aggregate(p, 2)
        if marker:
            self.finish()


# --- audio ----------------------------------------------------------------------------------------

AAC_SAMPLE_RATES = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
)  # fmt: skip


@dataclass(frozen=True)
class AacConfig:
    """The fields of an AudioSpecificConfig that an ADTS header repeats."""

    object_type: int
    sample_rate_index: int
    channels: int
    raw: bytes

    @property
    def sample_rate(self) -> int:
        return AAC_SAMPLE_RATES[self.sample_rate_index]

    @classmethod
    def parse(cls, hex_config: str) -> AacConfig:
        try:
            raw = bytes.fromhex(hex_config)
        except ValueError:
            raise PayloadError(f"AAC config is not hex: {hex_config!r}") from None
        if len(raw) < 2:
            raise PayloadError("AAC config is missing or too short")
        object_type = raw[0] >> 3
        index = ((raw[0] & 7) << 1) | (raw[1] >> 7)
        channels = (raw[1] >> 3) & 0xF
        if not 1 <= object_type <= 4 or index >= len(AAC_SAMPLE_RATES) or not 1 <= channels <= 7:
            raise PayloadError(f"AAC config {hex_config} is not plain AAC (object type 1-4)")
        return cls(object_type, index, channels, raw)

    def adts(self, frame: bytes) -> bytes:
        """`frame` behind a 7-byte ADTS header (what FFmpeg's AAC probe reads)."""
        n = 7 + len(frame)
        return (
            bytes(
                (
                    0xFF,
                    0xF1,
                    ((self.object_type - 1) << 6)
                    | (self.sample_rate_index << 2)
                    | (self.channels >> 2),
                    ((self.channels & 3) << 6) | (n >> 11),
                    (n >> 3) & 0xFF,
                    ((n & 7) << 5) | 0x1F,
                    0xFC,
                )
            )
            + frame
        )


class AacFrames:
    """RFC 3640 AU headers (AAC-hbr and AAC-lbr); an access unit may span packets."""

    codec = "aac"
    SAMPLES = 1024

    def __init__(self, media: SdpMedia) -> None:
        fmtp = media.fmtp
        mode = fmtp.get("mode", "").lower()
        if mode not in ("aac-hbr", "aac-lbr"):
            raise PayloadError(f"mpeg4-generic mode {mode or '(none)'} is not AAC-hbr/AAC-lbr")
        try:
            self.size_bits = int(fmtp.get("sizelength", "0"))
            self.index_bits = int(fmtp.get("indexlength", "0"))
            self.delta_bits = int(fmtp.get("indexdeltalength", "0"))
        except ValueError:
            raise PayloadError("mpeg4-generic AU header lengths are not numbers") from None
        if self.size_bits == 0 or any(
            int(fmtp.get(k, "0") or 0) for k in ("ctsdeltalength", "dtsdeltalength")
        ):
            raise PayloadError("mpeg4-generic AU headers of this shape are not supported")
        self.config = AacConfig.parse(fmtp.get("config", ""))
        self.out: list[Frame] = []
        self._partial = bytearray()
        self._partial_size = 0
        self._partial_ts = 0
        self._fast = self.size_bits == 13 and self.index_bits == 3 and self.delta_bits == 3

    def payload(self, p: memoryview, ts: int, marker: bool) -> None:
        if len(p) < 2:
            return
        header_bits = (p[0] << 8) | p[1]
        data = 2 + (header_bits + 7) // 8
        if data > len(p):
            return
        sizes: list[int] = []
        if self._fast:
            for i in range(2, 2 + (header_bits // 16) * 2, 2):
                sizes.append(((p[i] << 8) | p[i + 1]) >> 3)
        else:
            value = int.from_bytes(p[2:data], "big")
            total = (data - 2) * 8
            pos = 0
            first = True
            while pos + self.size_bits <= header_bits:
                shift = total - pos - self.size_bits
                sizes.append((value >> shift) & ((1 << self.size_bits) - 1))
                pos += self.size_bits + (self.index_bits if first else self.delta_bits)
                first = False
        if self._partial_size:
            # The rest of an access unit that did not fit in the previous packet.
            self._partial += p[data:]
            if len(self._partial) >= self._partial_size or marker:
                self.out.append((self._partial, self._partial_ts, True))
                self._partial = bytearray()
                self._partial_size = 0
            return
        pos = data
        for i, size in enumerate(sizes):
            if pos + size > len(p):
                if len(sizes) == 1 and not marker:
                    self._partial = bytearray(p[pos:])
                    self._partial_size = size
                    self._partial_ts = ts
                return
            self.out.append((bytearray(p[pos : pos + size]), ts + i * self.SAMPLES, True))
            pos += size


VideoFrames = H264Frames | H265Frames


def video_frames_for(media: SdpMedia) -> VideoFrames:
    if media.encoding == "H264":
        return H264Frames(media)
    if media.encoding in ("H265", "HEVC"):
        return H265Frames(media)
    raise PayloadError(f"video encoding {media.encoding or '(none)'} is not H.264/H.265")


def audio_frames_for(media: SdpMedia) -> AacFrames:
    if media.encoding == "MPEG4-GENERIC":
        return AacFrames(media)
    raise PayloadError(f"audio encoding {media.encoding or '(none)'} is not AAC")
