"""`Fmp4Muxer`: live H.264 access units remuxed (never re-encoded) into fragmented MP4 for a
browser's Media Source Extensions, as Moonfire NVR sends live view: an init segment
(`ftyp` + `moov`), then one `moof` + `mdat` fragment per GOP (or per second, when the GOP
is longer). PyAV's MP4 muxer writes into an in-memory sink, and the top-level boxes are cut
into messages. Blocking (PyAV): runs on a worker thread (`asyncio.to_thread`), one muxer per
viewer."""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any

import av
from av.container import OutputContainer

from nvr.api.live.annexb import h264_codecs, with_parameter_sets
from nvr.ingest.tap import TapFrame, TapStream

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
        template = self._probe.streams.video[0]
        self._sink = _Sink()
        self._out: OutputContainer = av.open(self._sink, "w", format="mp4", options=MUX_OPTIONS)
        self._video = self._out.add_stream_from_template(template, opaque=True)
        self._tb = stream.time_base or Fraction(1, 90_000)
        self._video.time_base = self._tb
        self._origin = first.dts
        self._last_dts = -1
        self._init_sent = False
        self._at = 0

    def add(self, frame: TapFrame) -> list[bytes]:
        """Mux one access unit; returns the messages it completed (the init segment first)."""
        if frame.stream != self.stream and frame.keyframe:
            raise LiveMuxError("the camera's stream parameters changed")
        data = frame.data
        if frame.keyframe:
            data = with_parameter_sets("h264", data, self.stream.extradata)
        packet = av.Packet(data)
        dts = max(frame.dts - self._origin, self._last_dts + 1)
        packet.dts = dts
        packet.pts = max(frame.pts - self._origin, dts)
        packet.duration = frame.duration or None
        packet.time_base = self._tb
        packet.stream = self._video
        packet.is_keyframe = frame.keyframe
        self._last_dts = dts
        try:
            self._out.mux(packet)
        except (av.FFmpegError, OSError) as err:
            raise LiveMuxError(f"the MP4 muxer refused a packet: {err}") from err
        return self._messages()

    def add_many(self, frames: list[TapFrame]) -> list[bytes]:
        """`add` for each of `frames`; the messages they completed."""
        out: list[bytes] = []
        for frame in frames:
            out += self.add(frame)
        return out

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
        if start > 0:
            del data[:start]
            at -= start
        self._at = at
        return out

    def close(self) -> None:
        try:
            self._out.close()
        except (av.FFmpegError, OSError):
            pass  # a viewer gone mid-fragment: nothing to keep
        self._probe.close()
