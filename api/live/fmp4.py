"""`Fmp4Muxer`: live H.264 access units remuxed (never re-encoded) into fragmented MP4 for a
browser's Media Source Extensions, as Moonfire NVR sends live view: an init segment
(`ftyp` + `moov`), then one `moof` + `mdat` fragment per GOP (or per second, when the GOP
is longer). PyAV's MP4 muxer writes into an in-memory sink, and the top-level boxes are cut
into messages. Blocking (PyAV): runs on a worker thread (`asyncio.to_thread`), one muxer per
viewer.

FFmpeg's MP4 muxer closes a fragment only when the next packet comes (the next keyframe, or a
second later), and PyAV cannot ask it to flush. A new viewer's first pictures (the hub's
cached keyframe, or the GOP so far) must not wait for that: `flush` closes the writer (its
trailer ends the fragment) and the next frame opens a new one from the same template. The new
writer starts its timeline at zero, so its fragments' `tfdt` (base media decode time) is moved
on to where the stream is, and its init segment (the same as the first) is not sent again.
`AacMuxer` does the same for the camera's AAC (a second MSE source buffer), flushed every
batch: audio has no keyframes to end a fragment at."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
from av.container import OutputContainer

from nvr.api.live.annexb import h264_codecs, with_parameter_sets
from nvr.ingest.tap import TapAudioFrame, TapAudioStream, TapFrame, TapStream
from nvr.storage.media.boxes import Mp4Error, child

MUX_OPTIONS = {
    "movflags": "empty_moov+default_base_moof+frag_keyframe",
    "frag_duration": "1000000",
    "flush_packets": "1",
}


class LiveMuxError(Exception):
    """The stream cannot be remuxed for MSE (not H.264, or unusable parameters)."""


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.data += view
        return len(view)


def _path(data: bytes, *kinds: bytes) -> int | None:
    """The body offset of the box at the end of the container path `kinds` (e.g.
    moov/trak/mdia/mdhd)."""
    start, end = 0, len(data)
    try:
        for kind in kinds:
            found = child(data, start, end, kind)
            if found is None:
                return None
            start, end = found
    except Mp4Error as err:
        raise LiveMuxError(f"the muxer wrote a malformed box: {err}") from err
    return start


def timescale(init: bytes) -> int:
    """The video track's timescale, from an init segment's `mdhd`."""
    body = _path(init, b"moov", b"trak", b"mdia", b"mdhd")
    if body is None:
        raise LiveMuxError("the init segment has no mdhd")
    at = body + (20 if init[body] == 1 else 12)  # version, flags, creation/modification times
    return int.from_bytes(init[at : at + 4], "big")


def shifted(fragment: bytes, ticks: int) -> bytes:
    """`fragment` (moof + mdat) with its `tfdt` moved `ticks` later."""
    body = _path(fragment, b"moof", b"traf", b"tfdt")
    if body is None:
        raise LiveMuxError("a fragment without tfdt")
    out = bytearray(fragment)
    width = 8 if out[body] == 1 else 4
    at = body + 4
    value = int.from_bytes(out[at : at + width], "big") + ticks
    if value >= 1 << (8 * width):
        raise LiveMuxError("the stream ran past a 32-bit tfdt")
    out[at : at + width] = value.to_bytes(width, "big")
    return bytes(out)


def mime_type(frame: TapFrame) -> str:
    """The MSE type of the stream whose keyframe is `frame`."""
    codecs = h264_codecs(frame.data, frame.stream.extradata) or "avc1.640028"
    return f'video/mp4; codecs="{codecs}"'


class Fmp4Muxer:
    """One viewer's remux, started at a keyframe of an H.264 stream."""

    def __init__(self, first: TapFrame) -> None:
        stream = first.stream
        if stream.codec != "h264" or not first.keyframe:
            raise LiveMuxError(f"MSE live view needs H.264 from a keyframe, not {stream.codec}")
        self.stream: TapStream = stream
        self.mime = mime_type(first)
        key = with_parameter_sets("h264", first.data, stream.extradata)
        try:
            self._probe = av.open(io.BytesIO(key), "r", format="h264")
        except (av.FFmpegError, OSError) as err:
            raise LiveMuxError(f"the camera's H.264 parameters are unusable: {err}") from err
        if not self._probe.streams.video:
            raise LiveMuxError("the camera's H.264 stream could not be probed")
        self._tb = stream.time_base or Fraction(1, 90_000)
        self._origin = first.dts
        self._last_dts = -1
        self._out: OutputContainer | None = None
        self._base = 0
        """Where the current writer's timeline starts (its zero), in `_tb` ticks."""
        self._timescale: int | None = None
        self._init_sent = False
        self._template: av.VideoStream | av.AudioStream = self._probe.streams.video[0]
        self._open()

    def _open(self) -> None:
        self._sink = _Sink()
        self._at = 0
        self._out = av.open(self._sink, "w", format="mp4", options=MUX_OPTIONS)
        self._video = self._out.add_stream_from_template(self._template, opaque=True)
        self._video.time_base = self._tb

    def add(self, frame: TapFrame) -> list[bytes]:
        """Mux one access unit; returns the messages it completed (the init segment first)."""
        if frame.stream != self.stream and frame.keyframe:
            raise LiveMuxError("the camera's stream parameters changed")
        data = frame.data
        if frame.keyframe:
            data = with_parameter_sets("h264", data, self.stream.extradata)
        dts = max(frame.dts - self._origin, self._last_dts + 1)
        pts = max(frame.pts - self._origin, dts)
        return self._mux(data, dts, pts, frame.duration, frame.keyframe)

    def _mux(self, data: bytes, dts: int, pts: int, duration: int, key: bool) -> list[bytes]:
        """Mux one packet at `dts`/`pts` (ticks after the origin)."""
        if self._out is None:  # flushed: a new writer, its zero at this packet
            self._base = dts
            self._open()
        assert self._out is not None
        packet = av.Packet(data)
        packet.dts = dts - self._base
        packet.pts = pts - self._base
        packet.duration = duration or None
        packet.time_base = self._tb
        packet.stream = self._video
        packet.is_keyframe = key
        self._last_dts = dts
        try:
            self._out.mux(packet)
        except (av.FFmpegError, OSError) as err:
            raise LiveMuxError(f"the MP4 muxer refused a packet: {err}") from err
        return self._messages()

    def add_many(self, frames: list[TapFrame], flush: bool = False) -> list[bytes]:
        """`add` for each of `frames`; the messages they completed (with `flush`, all of
        them: see `flush`)."""
        out: list[bytes] = []
        for frame in frames:
            out += self.add(frame)
        if flush:
            out += self.flush()
        return out

    def flush(self) -> list[bytes]:
        """End the current fragment now, without waiting for the next frame: the messages
        of everything added so far. The next `add` continues the stream (see the module
        docstring)."""
        if self._out is None:
            return []
        try:
            self._out.close()  # the trailer writes the open fragment (then an mfra, dropped)
        except (av.FFmpegError, OSError) as err:
            raise LiveMuxError(f"the MP4 muxer could not end a fragment: {err}") from err
        self._out = None
        return self._messages()

    def _messages(self) -> list[bytes]:
        """Complete top-level boxes since the last call, grouped into messages: the init
        segment (`ftyp`..`moov`), then each fragment (`moof`..`mdat`)."""
        data = self._sink.data
        out: list[bytes] = []
        start = 0  # the bytes before `self._at` are boxes of a message not yet complete
        at = self._at
        while at + 8 <= len(data):
            size = int.from_bytes(data[at : at + 4], "big")
            kind = bytes(data[at + 4 : at + 8])
            if size == 1 and at + 16 <= len(data):
                size = int.from_bytes(data[at + 8 : at + 16], "big")
            if size < 8 or at + size > len(data):
                break
            at += size
            if kind == b"moov" or kind == b"mdat":
                out.append(bytes(data[start:at]))
                start = at
        if out and self._timescale is None:
            self._timescale = timescale(out[0])
        if self._init_sent:  # a writer after a flush: its init segment was sent already
            out = [m for m in out if m[4:8] != b"ftyp"]
        elif out:
            self._init_sent = True
        if self._base:
            # The writer's zero is later than the stream's: its timeline is moved on to
            # where the stream is.
            assert self._timescale is not None
            ticks = round(self._base * self._tb * self._timescale)
            out = [shifted(m, ticks) if m[4:8] == b"moof" else m for m in out]
        if start > 0:
            del data[:start]
            at -= start
        self._at = at
        return out

    def close(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except (av.FFmpegError, OSError):
                pass  # a viewer gone mid-fragment: nothing to keep
        self._probe.close()


AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def adts(config: bytes, payload: bytes) -> bytes:
    """`payload` (one raw AAC frame) behind an ADTS header made from its AudioSpecificConfig
    (for probing the stream with PyAV's ADTS demuxer)."""
    if len(config) < 2:
        raise LiveMuxError("the camera's AAC has no AudioSpecificConfig")
    aot = config[0] >> 3
    rate = ((config[0] & 0x07) << 1) | (config[1] >> 7)
    channels = (config[1] >> 3) & 0x0F
    if not 1 <= aot <= 4 or rate >= len(AAC_RATES):
        raise LiveMuxError(f"AAC object type {aot} / rate index {rate} cannot go in ADTS")
    size = len(payload) + 7
    head = bytes(
        [
            0xFF,
            0xF1,
            ((aot - 1) << 6) | (rate << 2) | (channels >> 2),
            ((channels & 3) << 6) | (size >> 11),
            (size >> 3) & 0xFF,
            ((size & 7) << 5) | 0x1F,
            0xFC,
        ]
    )
    return head + payload


class AacMuxer(Fmp4Muxer):
    """One viewer's camera audio (AAC, passed through) as fragmented MP4 for a second MSE
    source buffer, on the video's timeline: `origin` is the second the video muxer's zero
    stands at (its first frame). Every `add_many(..., flush=True)` sends what it got at once
    (audio has no keyframes to end fragments)."""

    def __init__(self, first: TapAudioFrame, origin: Fraction) -> None:
        stream = first.stream
        if stream.codec != "aac":
            raise LiveMuxError(f"MSE live audio needs AAC, not {stream.codec}")
        self.audio: TapAudioStream = stream
        self.mime = (
            f'audio/mp4; codecs="mp4a.40.{stream.extradata[0] >> 3 if stream.extradata else 2}"'
        )
        try:
            self._probe = av.open(io.BytesIO(adts(stream.extradata, first.data)), "r", format="aac")
        except (av.FFmpegError, OSError) as err:
            raise LiveMuxError(f"the camera's AAC parameters are unusable: {err}") from err
        if not self._probe.streams.audio:
            raise LiveMuxError("the camera's AAC stream could not be probed")
        self._tb = stream.time_base or Fraction(1, stream.sample_rate)
        self._origin = round(origin / self._tb)
        self._last_dts = -1
        self._out = None
        self._base = 0
        self._timescale = None
        self._init_sent = False
        self._template = self._probe.streams.audio[0]

    def add_audio(self, frame: TapAudioFrame) -> list[bytes]:
        """Mux one AAC frame (dropped when it lies before the video's start)."""
        if frame.stream != self.audio:
            raise LiveMuxError("the camera's audio parameters changed")
        dts = frame.pts - self._origin
        if dts < 0 or dts <= self._last_dts:
            return []
        return self._mux(frame.data, dts, dts, frame.duration, True)

    def add_audio_many(self, frames: list[TapAudioFrame]) -> list[bytes]:
        """`add_audio` for each of `frames`, then `flush`: the messages, at once."""
        out: list[bytes] = []
        for frame in frames:
            out += self.add_audio(frame)
        return out + self.flush()
