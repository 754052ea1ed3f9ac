"""RTP payload formats: whole frames out of RTP packets, for H.264 (RFC 6184), H.265
(RFC 7798), AAC (RFC 3640, `mpeg4-generic`) and G.711 (RFC 3551, PCMA/PCMU), plus the SDP
parsing that says which applies.

Pure logic, no I/O: `ingest.rtsp_session` feeds each RTP payload with its extended timestamp and
marker bit, and takes the finished frames from `out`. Runs on the recorder thread of one
camera; called for every RTP packet, so the hot paths index bytes directly.

Video frames come out in Annex B form (start codes), the form FFmpeg's own RTSP demuxer hands
over and the MP4 muxer turns into length-prefixed samples.

Where a picture ends is decided by the bitstream, not by the RTP marker bit alone: an access
unit is every NAL unit of one RTP timestamp, and a slice that starts a picture
(`first_mb_in_slice` 0, `first_slice_segment_in_pic_flag` 1) or a NAL unit that may only open
an access unit (parameter sets, AUD, prefix SEI) begins the next one even at the same
timestamp. Some cameras set the marker bit on every slice of a multi-slice picture (x264
`slices=4`) and some send one timestamp for everything; both come out as one sample per
picture. A picture therefore goes out when the next one begins (one frame later, as with
FFmpeg's own parser).
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


@dataclass
class Sdp:
    """A session description: the media sections understood, and those that were not."""

    medias: list[SdpMedia]
    skipped: list[tuple[str, str]]
    """Each media section left out: its `m=` line and why (TP-Link cameras add
    `m=application/TP-LINK 0 RTP/AVP smart/1/90000`, with a word where the payload type
    belongs; retina ignores such sections since v0.4.2, FFmpeg skips unknown media types)."""

    def skipped_kinds(self) -> set[str]:
        """The media kinds (`video`, `audio`, ...) of the skipped sections, as far as their
        `m=` lines say ("" where not even that)."""
        return {(m[2:].split() or [""])[0].split("/")[0].lower() for m, _ in self.skipped}

    def skipped_text(self) -> str:
        """The skipped sections for a log line: `'m=...' (why); ...`."""
        return "; ".join(f"{m[:80]!r} ({why})" for m, why in self.skipped)


def parse_sdp(text: str) -> Sdp:
    """The media sections of `text`, each with its first payload type's rtpmap and fmtp. A
    section whose `m=` line or rtpmap cannot be read is skipped whole (listed in `skipped`)
    rather than failing the others: a camera is recorded with the streams understood."""
    medias: list[SdpMedia] = []
    skipped: list[tuple[str, str]] = []
    current: SdpMedia | None = None
    m_line = ""

    def skip(why: str) -> None:
        nonlocal current
        if current is not None:
            medias.pop()  # `current` is always the last section appended
        skipped.append((m_line, why))
        current = None

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            m_line = line
            current = None
            parts = line[2:].split()
            if len(parts) < 4:
                skip("too few fields")
                continue
            try:
                pt = int(parts[3])
            except ValueError:
                skip("no RTP payload type")
                continue
            current = SdpMedia(kind=parts[0].lower(), protocol=parts[2], payload_type=pt)
            medias.append(current)
        elif current is None or not line.startswith("a="):
            continue
        elif line.startswith("a=rtpmap:"):
            pt_text, _, spec = line[9:].partition(" ")
            if pt_text.strip() != str(current.payload_type):
                continue
            fields = spec.strip().split("/")
            try:
                current.clock_rate = int(fields[1]) if len(fields) > 1 else 0
                current.channels = int(fields[2]) if len(fields) > 2 else 1
            except ValueError:
                skip(f"malformed rtpmap {line[:60]!r}")
                continue
            current.encoding = fields[0].upper()
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
    for m in medias:
        if not m.encoding and m.payload_type in STATIC_PAYLOAD_TYPES:
            # RFC 3551 static types need no rtpmap (many cameras send PCMU/PCMA bare).
            m.encoding, m.clock_rate, m.channels = STATIC_PAYLOAD_TYPES[m.payload_type]
    return Sdp(medias, skipped)


STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 2: ("G726-32", 8000, 1)}
"""RFC 3551 audio payload types a camera may use without an `a=rtpmap` line."""


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
    FIRST_SLICE_TYPES: frozenset[int] = frozenset()
    """VCL types whose first header bit after the NAL header says "first slice of a picture"."""
    AU_START_TYPES: frozenset[int] = frozenset()
    """Non-VCL types that may only come before a picture's first slice: after a slice they
    begin the next access unit."""

    def __init__(self) -> None:
        self.params: dict[int, bytes] = {}
        """Parameter sets by NAL type, from the SDP, then in-band."""
        self.out: list[Frame] = []
        self._frame = bytearray()
        self._ts = -1
        self._key = False
        self._in_fu = False
        self._fu_held: tuple[int, bytes] | None = None
        """An empty FU start's NAL type and header, waiting for the unit's first byte."""
        self._vcl = False

    def parameter_sets(self) -> bytes:
        return b"".join(START_CODE + self.params[t] for t in self.PARAM_TYPES if t in self.params)

    def _next_packet(self, ts: int) -> None:
        """A packet with timestamp `ts` begins: a new timestamp ends the unit at hand."""
        if ts != self._ts:
            if self._vcl:
                self.finish()
            self._ts = ts

    def _begins_unit(self, t: int, first_bit: int) -> bool:
        """Whether a NAL unit of type `t` (`first_bit`: the top bit of its first byte after
        the NAL header) starts a new access unit while the one at hand has a picture."""
        if t in self.FIRST_SLICE_TYPES:
            return bool(first_bit & 0x80)
        return t in self.AU_START_TYPES

    def _picture(self, t: int) -> None:
        if t in self.VCL_TYPES:
            self._vcl = True
            if t in self.KEY_TYPES:
                self._key = True

    def _nal(self, nal: memoryview, t: int) -> None:
        if self._vcl and len(nal) > self.MIN_NAL and self._begins_unit(t, nal[self.MIN_NAL]):
            self.finish()
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
        `header` the unit's own NAL header, `p[body:]` the piece (may be empty: some cameras
        send empty fragments, even an empty start, as retina's issue 115 reports)."""
        if fu & 0x80:
            self._in_fu = False
            if len(p) <= body:
                # An empty start: whether the unit begins a new picture shows only in its
                # first byte, so it is opened when a piece with bytes comes.
                self._fu_held = None if fu & 0x40 else (nal_type, header)
                return
            self._fu_held = None
            self._open_fu(nal_type, header, p[body])
        elif not self._in_fu:
            held = self._fu_held
            if held is None:
                return  # its start was lost: nothing to attach this piece to
            if len(p) <= body:
                if fu & 0x40:
                    self._fu_held = None  # a unit of no bytes at all: nothing to keep
                return
            self._fu_held = None
            self._open_fu(held[0], held[1], p[body])
        self._frame += p[body:]
        if fu & 0x40:
            self._in_fu = False

    def _open_fu(self, nal_type: int, header: bytes, first: int) -> None:
        """A fragmented NAL unit whose first byte after its header is `first` begins."""
        if self._vcl and self._begins_unit(nal_type, first):
            self.finish()
        self._frame += START_CODE
        self._frame += header
        self._in_fu = True
        self._picture(nal_type)

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
        self._fu_held = None

    def nal_of(self, frame: bytes | bytearray, nal_type: int) -> bytes | None:
        """The first NAL unit of type `nal_type` in the Annex B `frame` (e.g. its SPS)."""
        n = len(frame)
        i = frame.find(b"\x00\x00\x01")
        while 0 <= i < n - 3:
            i += 3
            nxt = frame.find(b"\x00\x00\x01", i)
            if (frame[i] >> self.TYPE_SHIFT) & self.TYPE_MASK == nal_type:
                end = n if nxt < 0 else nxt - (1 if frame[nxt - 1] == 0 else 0)
                return bytes(frame[i:end])
            i = nxt
        return None

    def is_b_picture(self, frame: bytes | bytearray) -> bool:
        """Whether the first slice of the Annex B picture `frame` is a B slice: a frame whose
        timestamp goes back is reordered (B-frames) only then; otherwise the camera's clock
        stepped back."""
        i = 0
        n = len(frame)
        while True:
            i = frame.find(b"\x00\x00\x01", i, n)
            if i < 0 or i + 3 >= n:
                return False
            i += 3
            t = (frame[i] >> self.TYPE_SHIFT) & self.TYPE_MASK
            if t in self.VCL_TYPES:
                end = frame.find(b"\x00\x00\x01", i, min(n, i + 64))
                return self._slice_is_b(t, _rbsp(frame[i : end if end > 0 else i + 64]))

    def _slice_is_b(self, t: int, rbsp: bytes) -> bool:
        raise NotImplementedError  # each codec's slice header differs


def _rbsp(nal: bytes | bytearray) -> bytes:
    """`nal` without its emulation prevention bytes (00 00 03 -> 00 00)."""
    return bytes(nal).replace(b"\x00\x00\x03", b"\x00\x00")


class _Bits:
    """An MSB-first bit reader with Exp-Golomb codes, for the first bytes of a header."""

    def __init__(self, data: bytes, start: int) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8 - start * 8

    def u(self, n: int) -> int:
        if n > self._left:
            raise PayloadError("header shorter than its fields")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise PayloadError("Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)


class H264Frames(_AccessUnits):
    """RFC 6184 packetization modes 0 and 1: single NAL units, STAP-A, FU-A."""

    codec = "h264"
    PARAM_TYPES = (7, 8)  # SPS, PPS
    VCL_TYPES = range(1, 6)
    KEY_TYPES = range(5, 6)  # IDR
    FIRST_SLICE_TYPES = frozenset((1, 2, 5))  # slices and partition A: first_mb_in_slice
    AU_START_TYPES = frozenset((6, 7, 8, 9, 14, 15, 16, 17, 18))  # 7.4.1.2.3

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
        if ts == self._ts and self._in_fu and len(p) >= 3 and p[0] & 0x1F == 28:
            fu = p[1]
            if not fu & 0x80:
                # Most packets of a 4 Mbit/s camera: the next piece of the slice at hand.
                # What `_fragment` does with it, without its calls (issue 12: CPU per packet).
                self._frame += p[2:]
                if fu & 0x40:
                    self._in_fu = False
                return
        self._next_packet(ts)
        if not p:
            return
        t = p[0] & 0x1F
        if t == 28:  # FU-A: indicator, FU header, piece (may be empty)
            if len(p) >= 2:
                nal_type = p[1] & 0x1F
                self._fragment(p, p[1], nal_type, bytes(((p[0] & 0xE0) | nal_type,)), 2)
        elif 1 <= t <= 23:
            self._nal(p, t)
        elif t == 24:  # STAP-A
            self._aggregate(p, 1)
        elif t == 0 and len(p) > 3 and p[0] == 0 and p[1] == 0 and (p[2] == 1 or p[2] == 0):
            # Annex B where one NAL unit belongs (V380 cameras: start codes, often several
            # NAL units in one packet): each unit taken as if it had come on its own.
            for chunk in bytes(p).split(b"\x00\x00\x01"):
                nal = chunk.rstrip(b"\x00")  # a NAL unit never ends in a zero byte
                if nal and 1 <= nal[0] & 0x1F <= 23:
                    self._nal(memoryview(nal), nal[0] & 0x1F)

    def _nal(self, nal: memoryview, t: int) -> None:
        super()._nal(nal, t)
        if t == 6 and len(nal) > 1 and nal[1] == 6:
            self._key = True  # recovery point SEI: an I-frame that starts a clean GOP

    def _slice_is_b(self, t: int, rbsp: bytes) -> bool:
        try:
            bits = _Bits(rbsp, 1)
            bits.ue()  # first_mb_in_slice
            return bits.ue() % 5 == 1  # slice_type 1 or 6: B
        except PayloadError:
            return False


class H265Frames(_AccessUnits):
    """RFC 7798 without DONL: single NAL units, aggregation packets, fragmentation units."""

    codec = "hevc"
    PARAM_TYPES = (32, 33, 34)  # VPS, SPS, PPS
    VCL_TYPES = range(0, 32)
    KEY_TYPES = range(16, 22)  # BLA, IDR, CRA
    MIN_NAL = 2
    TYPE_SHIFT = 1
    TYPE_MASK = 0x3F
    FIRST_SLICE_TYPES = frozenset(range(0, 32))  # first_slice_segment_in_pic_flag
    AU_START_TYPES = frozenset((32, 33, 34, 35, 39, *range(41, 45), *range(48, 56)))  # 7.4.2.4.4

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
        if t == 49:  # FU: payload header (2), FU header, piece (may be empty)
            if len(p) >= 3:
                nal_type = p[2] & 0x3F
                header = bytes(((p[0] & 0x81) | (nal_type << 1), p[1]))
                self._fragment(p, p[2], nal_type, header, 3)
        elif t < 48:
            self._nal(p, t)
        elif t == 48:  # aggregation packet
            self._aggregate(p, 2)

    def _slice_is_b(self, t: int, rbsp: bytes) -> bool:
        try:
            bits = _Bits(rbsp, 2)
            if not bits.u(1):
                return False  # not a picture's first slice: its header needs the SPS
            if 16 <= t <= 23:
                bits.u(1)  # no_output_of_prior_pics_flag
            bits.ue()  # slice_pic_parameter_set_id
            bits.u(self._extra_slice_header_bits())
            return bits.ue() == 0  # slice_type 0: B
        except PayloadError:
            return False

    def _extra_slice_header_bits(self) -> int:
        pps = self.params.get(34)
        if pps is None:
            return 0
        bits = _Bits(_rbsp(pps[:16]), 2)
        bits.ue()  # pps_pic_parameter_set_id
        bits.ue()  # pps_seq_parameter_set_id
        bits.u(2)  # dependent_slice_segments_enabled_flag, output_flag_present_flag
        return bits.u(3)


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

    def samples(self, frame: bytearray) -> int:
        """Samples (ticks of the RTP clock) one frame lasts."""
        return self.SAMPLES

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


class G711Frames:
    """RFC 3551 PCMA (A-law) and PCMU (mu-law): one byte per sample and channel, so each
    packet's payload is a frame as it is; it lasts as many ticks of the 8 kHz clock as it
    has samples. Kept as it came (MP4's QuickTime form has `alaw`/`ulaw` sample entries)."""

    SAMPLES = 160
    """A typical frame (20 ms); the actual length is each packet's own (`samples`)."""

    def __init__(self, media: SdpMedia) -> None:
        self.codec = "pcm_alaw" if media.encoding == "PCMA" else "pcm_mulaw"
        self.sample_rate = media.clock_rate or 8000
        self.channels = max(1, media.channels)
        self.out: list[Frame] = []

    def samples(self, frame: bytearray) -> int:
        return len(frame) // self.channels

    def payload(self, p: memoryview, ts: int, marker: bool) -> None:
        if len(p) >= self.channels:
            self.out.append((bytearray(p), ts, True))


VideoFrames = H264Frames | H265Frames
AudioFrames = AacFrames | G711Frames

UNKEPT_AUDIO = {
    "G726": "G.726 has no sample entry in MP4 or QuickTime files",
    "G722": "G.722 has no sample entry in MP4 or QuickTime files",
}
"""Audio that the recording cannot hold as it came, and why (prefix of the SDP encoding).
Re-encoding is not an option: recordings are remuxed, never transcoded."""


def video_frames_for(media: SdpMedia) -> VideoFrames:
    if media.encoding == "H264":
        return H264Frames(media)
    if media.encoding in ("H265", "HEVC"):
        return H265Frames(media)
    raise PayloadError(f"video encoding {media.encoding or '(none)'} is not H.264/H.265")


def audio_frames_for(media: SdpMedia) -> AudioFrames:
    """The parser of an audio track; PayloadError (naming the codec and why) for audio that
    is not recorded."""
    if media.encoding == "MPEG4-GENERIC":
        return AacFrames(media)
    if media.encoding in ("PCMA", "PCMU"):
        return G711Frames(media)
    name = f"{media.encoding or '(none)'}/{media.clock_rate}" if media.clock_rate else ""
    for prefix, why in UNKEPT_AUDIO.items():
        if media.encoding.startswith(prefix):
            raise PayloadError(f"{name or media.encoding} audio cannot be kept: {why}")
    raise PayloadError(
        f"{name or media.encoding or '(no encoding)'} audio is not AAC, PCMA or PCMU"
    )
