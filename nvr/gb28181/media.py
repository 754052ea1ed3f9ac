"""Where a GB/T 28181 stream's frames come from: live from a camera's packet tap
(`nvr.ingest.tap`), starting at a keyframe, or recorded from the segment files of a time
range (`storage.media.segment` sample index, samples read by offset), paced in real time
times a scale (Playback 1x, Download at `downloadspeed`). Either way the access units are
the recorded ones, turned from length-prefixed into Annex B with the parameter sets in front
of every keyframe (PS carries Annex B). Audio, live (the tap's `subscribe_audio`) or
recorded, is interleaved by time: AAC frames given an ADTS header from the track's
AudioSpecificConfig, G.711 (A-law, mu-law; a recording's QuickTime `alaw`/`ulaw` samples)
as it came; other audio is not sent. Never re-encoded.

Runs on the event loop: the tap's subscriber (called on the recorder's thread) only hands
frames over with `loop.call_soon_threadsafe`; segment parsing and sample reads go through
`asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from nvr.gb28181.ps import AUDIO_CODECS
from nvr.ingest.tap import PacketTap, TapAudioFrame, TapAudioStream, TapFrame
from nvr.storage import Segment
from nvr.storage.media.segment import TrackIndex, parse_segment

log = logging.getLogger("nvr.gb28181.media")

START_CODE = b"\x00\x00\x00\x01"
LIVE_QUEUE = 120
"""Video frames a live stream may fall behind before it drops to the next keyframe."""
LIVE_QUEUE_ITEMS = LIVE_QUEUE * 3
"""The same with the audio frames between them (G.711 at 50 a second beside 25 fps video)."""
QUICKTIME_AUDIO = {b"alaw": "pcm_alaw", b"ulaw": "pcm_mulaw"}
"""The sample entries of a recording's G.711 audio."""
READ_BATCH = 25
"""Samples read from a segment file per worker-thread call."""


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One video access unit in Annex B, or (`audio`) one audio frame as PS carries it (AAC
    with its ADTS header, G.711 bytes); timestamps in 90 kHz."""

    data: bytes
    pts: int
    dts: int
    keyframe: bool
    audio: bool = False
    audio_codec: str | None = None
    """The stream's audio codec ("aac", "pcm_alaw", "pcm_mulaw"): an audio frame's own; on
    video frames the audio known so far (None: none yet)."""


def _descriptor(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, payload start, payload end) of an MPEG-4 descriptor (ISO/IEC 14496-1 8.3.3)."""
    tag = data[at]
    at += 1
    size = 0
    for _ in range(4):
        byte = data[at]
        at += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    return tag, at, at + size


def audio_specific_config(sample_entry: bytes) -> bytes | None:
    """The AudioSpecificConfig of an `mp4a` sample entry (esds: ES_Descriptor >
    DecoderConfigDescriptor > DecSpecificInfo); None for anything else."""
    if sample_entry[4:8] != b"mp4a":
        return None
    esds = _box_payload(sample_entry, b"esds")
    if esds is None or len(esds) < 6:
        return None
    try:
        tag, start, end = _descriptor(esds, 4)  # after version and flags
        if tag != 0x03:
            return None
        flags = esds[start + 2]
        at = start + 3 + (2 if flags & 0x80 else 0)
        if flags & 0x40:
            at += 1 + esds[at]
        if flags & 0x20:
            at += 2
        tag, start, end = _descriptor(esds, at)
        if tag != 0x04:
            return None
        tag, start, end = _descriptor(esds, start + 13)
        return esds[start:end] if tag == 0x05 else None
    except IndexError:
        return None


def adts_header(asc: bytes, payload_size: int) -> bytes:
    """The 7-byte ADTS header (ISO/IEC 13818-7, no CRC) of one raw AAC frame."""
    object_type = asc[0] >> 3
    freq = ((asc[0] & 0x07) << 1) | (asc[1] >> 7)
    channels = (asc[1] >> 3) & 0x0F
    size = payload_size + 7
    profile = max(object_type - 1, 0) & 0x03
    return bytes(
        [
            0xFF,
            0xF1,  # MPEG-4, layer 0, no CRC
            (profile << 6) | (freq << 2) | (channels >> 2),
            ((channels & 0x03) << 6) | (size >> 11),
            (size >> 3) & 0xFF,
            ((size & 0x07) << 5) | 0x1F,
            0xFC,
        ]
    )


def recorded_audio_codec(entry: bytes) -> tuple[str | None, bytes | None]:
    """(PS audio codec, AAC's AudioSpecificConfig) of a recorded audio sample entry; no
    codec for audio PS does not carry here."""
    if entry[4:8] == b"mp4a":
        asc = audio_specific_config(entry)
        return ("aac", asc) if asc else (None, None)
    return QUICKTIME_AUDIO.get(entry[4:8]), None


def tap_audio_codec(stream: TapAudioStream) -> str | None:
    """The PS audio codec of a tap's audio stream (AAC needs its AudioSpecificConfig)."""
    if stream.codec not in AUDIO_CODECS or (stream.codec == "aac" and len(stream.extradata) < 2):
        return None
    return stream.codec


def _box_payload(data: bytes, kind: bytes) -> bytes | None:
    at = data.find(kind)
    if at < 4:
        return None
    size = int.from_bytes(data[at - 4 : at], "big")
    return data[at + 4 : at - 4 + size]


def parameter_sets(codec: str, config: bytes) -> tuple[list[bytes], int]:
    """(parameter set NAL units, NAL length size) from an avcC or hvcC record; Annex B
    extradata gives its NAL units and 4."""
    if not config:
        return [], 4
    if config[0] != 1:  # Annex B parameter sets
        return [n for n in split_annexb(config) if n], 4
    nals: list[bytes] = []
    try:
        if codec == "h264":
            size = (config[4] & 3) + 1
            at = 5
            for count_mask in (0x1F, 0xFF):
                count = config[at] & count_mask
                at += 1
                for _ in range(count):
                    n = int.from_bytes(config[at : at + 2], "big")
                    nals.append(config[at + 2 : at + 2 + n])
                    at += 2 + n
            return nals, size
        size = (config[21] & 3) + 1
        arrays = config[22]
        at = 23
        for _ in range(arrays):
            count = int.from_bytes(config[at + 1 : at + 3], "big")
            at += 3
            for _ in range(count):
                n = int.from_bytes(config[at : at + 2], "big")
                nals.append(config[at + 2 : at + 2 + n])
                at += 2 + n
        return nals, size
    except IndexError:
        log.warning("truncated %s decoder configuration", codec)
        return nals, 4


def split_annexb(data: bytes) -> list[bytes]:
    return [n.rstrip(b"\x00") for n in data.split(b"\x00\x00\x01") if n.strip(b"\x00")]


def to_annexb(data: bytes, length_size: int) -> bytes:
    """Length-prefixed NAL units to Annex B (start codes)."""
    out: list[bytes] = []
    at = 0
    while at + length_size <= len(data):
        n = int.from_bytes(data[at : at + length_size], "big")
        at += length_size
        out.append(START_CODE)
        out.append(data[at : at + n])
        at += n
    return b"".join(out)


def _nal_type(codec: str, nal: bytes) -> int:
    if not nal:
        return -1
    return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F


PARAMETER_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}


def with_parameter_sets(codec: str, annexb: bytes, sets: Sequence[bytes]) -> bytes:
    """A keyframe with the parameter sets in front, unless it carries them already."""
    have = {_nal_type(codec, n) for n in split_annexb(annexb)}
    if PARAMETER_TYPES.get(codec, set()) <= have or not sets:
        return annexb
    return b"".join(START_CODE + s for s in sets) + annexb


def codec_family(name: str) -> str:
    """ "h264" or "hevc": the PS stream type a tap's canonical codec name is sent as."""
    return "hevc" if "265" in name or "hevc" in name else "h264"


def to_90k(ticks: int, time_base: Fraction) -> int:
    """`ticks` of `time_base` in 90 kHz, truncated toward zero as `int(Fraction)` is: in
    integers (twice a live frame; Fraction arithmetic cost more than the PS header)."""
    n = ticks * 90_000 * time_base.numerator
    d = time_base.denominator
    return n // d if n >= 0 else -(-n // d)


Live = TapFrame | TapAudioFrame


class GopCache:
    """A camera's current group of pictures (its last keyframe and the frames since, with
    the audio between them), so a live stream starts at once instead of at the camera's
    next keyframe, with its sound. The cache is the tap's subscriber, video and audio (on
    the recorder's thread: it keeps references to the frames the tap built, no copies) and
    hands frames on to the live streams attached to it; attaching takes the backlog and the
    feed under one lock, so no frame is lost or sent twice. A GOP longer than `limit` video
    frames is not kept (such a stream starts at the next one)."""

    def __init__(self, tap: PacketTap, limit: int = LIVE_QUEUE // 2) -> None:
        self.camera = tap.camera
        self._lock = threading.Lock()
        self._gop: list[Live] = []
        self._gop_video = 0
        self._limit = limit
        self._sinks: tuple[Callable[[Live], None], ...] = ()
        self.audio: TapAudioStream | None = None
        """The last audio stream seen (a live stream declares its audio from the start)."""
        self._unsubscribe = tap.subscribe(self._on_frame)
        self._unsubscribe_audio = tap.subscribe_audio(self._on_audio)

    def _on_frame(self, frame: TapFrame) -> None:
        """On the recorder's thread."""
        with self._lock:
            if frame.keyframe:
                self._gop = [frame]
                self._gop_video = 1
            elif self._gop and self._gop_video < self._limit:
                self._gop.append(frame)
                self._gop_video += 1
            else:
                self._gop = []
            sinks = self._sinks
        for sink in sinks:
            sink(frame)

    def _on_audio(self, frame: TapAudioFrame) -> None:
        """On the recorder's thread."""
        with self._lock:
            self.audio = frame.stream
            if self._gop:
                self._gop.append(frame)
            sinks = self._sinks
        for sink in sinks:
            sink(frame)

    def attach(self, sink: Callable[[Live], None]) -> tuple[list[Live], Callable[[], None]]:
        """The current GOP (from its keyframe; empty if none) and the function that detaches
        `sink`, which gets every later frame (on the recorder's thread)."""
        with self._lock:
            backlog = list(self._gop)
            self._sinks = (*self._sinks, sink)

        def detach() -> None:
            with self._lock:
                self._sinks = tuple(s for s in self._sinks if s is not sink)

        return backlog, detach

    def close(self) -> None:
        self._unsubscribe()
        self._unsubscribe_audio()


class LiveSource:
    """A camera's live frames and audio: the current GOP from a `GopCache` at once, or (a
    bare tap) from the next keyframe on."""

    def __init__(self, source: PacketTap | GopCache) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Live | None] = asyncio.Queue(LIVE_QUEUE_ITEMS)
        self._waiting_key = True
        self._dropped = 0
        self.codec: str | None = None
        self.audio_codec: str | None = None
        """The audio sent (or, from a cache, about to be): declared in the first PSM."""
        self._camera = source.camera
        self._unsubscribe: tuple[Callable[[], None], ...]
        if isinstance(source, GopCache):
            if source.audio is not None:
                self.audio_codec = tap_audio_codec(source.audio)
            backlog, detach = source.attach(self._on_frame)
            self._unsubscribe = (detach,)
            for frame in backlog:  # on the loop, before any later frame's hand-over runs
                self._put(frame)
        else:
            self._unsubscribe = (
                source.subscribe(self._on_frame),
                source.subscribe_audio(self._on_frame),
            )

    def _on_frame(self, frame: Live) -> None:
        """On the recorder's thread: hand over, nothing else."""
        self._loop.call_soon_threadsafe(self._put, frame)

    def _put(self, frame: Live) -> None:
        if self._waiting_key and (isinstance(frame, TapAudioFrame) or not frame.keyframe):
            return
        if self._queue.full():
            self._dropped += 1
            self._waiting_key = True  # resume at the next keyframe: the decoder needs one
            return
        self._waiting_key = False
        self._queue.put_nowait(frame)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = ()
        if self._dropped:
            log.info("camera %s: live GB stream dropped %d frames", self._camera, self._dropped)
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[MediaFrame]:
        sets: list[bytes] = []
        stream = None
        base: int | None = None
        length_size, prefixed = 4, False
        codec = "h264"
        astream: TapAudioStream | None = None
        acodec: str | None = None
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            if isinstance(frame, TapAudioFrame):
                if frame.stream is not astream:
                    astream = frame.stream
                    acodec = tap_audio_codec(astream)
                    if acodec is not None:
                        self.audio_codec = acodec
                if acodec is None or base is None:
                    continue
                pts = to_90k(frame.pts, astream.time_base) - base + 9000
                if pts < 0:
                    continue  # sound from before the first picture
                data = frame.data
                if acodec == "aac":
                    data = adts_header(astream.extradata, len(data)) + data
                yield MediaFrame(data, pts, pts, True, True, acodec)
                continue
            if frame.stream is not stream:
                stream = frame.stream
                codec = self.codec = codec_family(stream.codec)
                sets, length_size = parameter_sets(codec, stream.extradata)
                # avcC/hvcC extradata: the packets are length-prefixed (FFmpeg's demuxer);
                # Annex B or none: they carry start codes (our RTSP client)
                prefixed = stream.extradata[:1] == b"\x01"
            data = to_annexb(frame.data, length_size) if prefixed else frame.data
            if frame.keyframe:
                data = with_parameter_sets(codec, data, sets)
            dts = to_90k(frame.dts, stream.time_base)
            pts = to_90k(frame.pts, stream.time_base)
            if base is None:
                base = dts
            yield MediaFrame(
                data,
                pts - base + 9000,
                dts - base + 9000,
                frame.keyframe,
                audio_codec=self.audio_codec,
            )


def _read_samples(path: str, offsets: list[int], sizes: list[int]) -> list[bytes]:
    """Blocking: runs on a worker thread."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return [os.pread(fd, size, off) for off, size in zip(offsets, sizes, strict=True)]
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RecordedPlan:
    """What a playback will send: codec and the first and last instants."""

    codec: str
    start_ms: int
    end_ms: int


def video_codec_of(track: TrackIndex) -> str:
    return "hevc" if track.sample_entry[4:8] in (b"hvc1", b"hev1") else "h264"


@dataclass
class Pace:
    """How fast a recorded stream goes; changed by MANSRTSP (INFO) while it runs."""

    scale: float = 1.0
    paused: bool = False
    resumed: asyncio.Event | None = None

    def pause(self) -> None:
        self.paused = True
        self.resumed = asyncio.Event()

    def play(self, scale: float | None = None) -> None:
        if scale is not None:
            self.scale = scale
        self.paused = False
        if self.resumed is not None:
            self.resumed.set()


async def recorded_frames(
    segments: Sequence[Segment],
    start_ms: int,
    end_ms: int,
    pace: Pace,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[tuple[str, MediaFrame]]:
    """(codec, frame) of the recorded range, from the keyframe at or before `start_ms`,
    paced at `pace.scale` times real time (nothing while paused)."""
    due: float | None = None
    last_ms = 0.0
    base: int | None = None
    for seg in segments:
        index = await asyncio.to_thread(parse_segment, seg.path)
        track = index.video
        if track.count == 0:
            continue
        codec = video_codec_of(track)
        config = _box_payload(track.sample_entry, b"avcC" if codec == "h264" else b"hvcC")
        sets, length_size = parameter_sets(codec, config or b"")
        scale_ms = 1000 / track.timescale
        dts0 = int(track.dts[0])
        times = [seg.start_ms + (int(d) - dts0) * scale_ms for d in track.dts]
        audio = index.audio
        acodec, asc = recorded_audio_codec(audio.sample_entry) if audio else (None, None)
        # (wall ms, 0 video / 1 audio, sample) in time order: both tracks on the file's
        # timeline, from the video's first decode time (the segment's start)
        order = [(t, 0, i) for i, t in enumerate(times)]
        if audio is not None and acodec is not None and audio.count:
            a_ms = 1000 / audio.timescale
            order += [
                (seg.start_ms + int(d) * a_ms - dts0 * scale_ms, 1, i)
                for i, d in enumerate(audio.dts)
            ]
            order.sort()
        first = 0
        for i, t in enumerate(times):
            if t > start_ms:
                break
            if bool(track.sync[i]):
                first = i
        first_ms = times[first]
        for lo in range(0, len(order), READ_BATCH):
            batch = [o for o in order[lo : lo + READ_BATCH] if o[0] >= first_ms]
            if not batch:
                continue
            if batch[0][0] >= end_ms:
                return
            datas = await asyncio.to_thread(
                _read_samples,
                str(seg.path),
                [int((audio if k and audio else track).offset[i]) for _, k, i in batch],
                [int((audio if k and audio else track).size[i]) for _, k, i in batch],
            )
            for (t, kind, i), raw in zip(batch, datas, strict=True):
                if t >= end_ms:
                    return
                if kind == 1:
                    if base is None or acodec is None:
                        continue  # audio starts with the first video keyframe
                    pts = round(t * 90) - base + 9000
                    if asc is not None:
                        raw = adts_header(asc, len(raw)) + raw
                    frame = MediaFrame(raw, pts, pts, True, True, acodec)
                else:
                    key = bool(track.sync[i])
                    if base is None and not key:
                        continue
                    data = to_annexb(raw, length_size)
                    if key:
                        data = with_parameter_sets(codec, data, sets)
                    cto = int(track.cto[i]) * 90_000 // track.timescale
                    wall_dts = round(t * 90)
                    if base is None:
                        base = wall_dts
                    out_dts = wall_dts - base + 9000
                    frame = MediaFrame(data, out_dts + cto, out_dts, key, audio_codec=acodec)
                if due is None:
                    due, last_ms = clock(), t
                if pace.paused and pace.resumed is not None:
                    await pace.resumed.wait()
                    due = max(due, clock())
                due += max(0.0, t - last_ms) / 1000 / pace.scale
                last_ms = t
                wait = due - clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                yield codec, frame
