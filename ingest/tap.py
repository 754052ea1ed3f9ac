"""`PacketTap`: one camera's recorded access units (video, and audio on request), handed to
in-process consumers.

Live view (issue 17), picture checks (issue 18) and GB/T 28181 live streams look at the
packets the recorder already has, never at a second connection to the camera. The
recorder's thread (`rec-<camera>`) calls `publish` for every video packet it writes (after
timestamp cleaning, before muxing), but only builds a `TapFrame` (a copy of the packet's
bytes) when a subscriber wants that packet: with nobody watching a tap costs one attribute
read per packet.

Audio is separate and opt-in: `subscribe_audio(fn)` gets a `TapAudioFrame` for every audio
packet the recorder writes into the camera's segments (audio it cannot store, it does not
publish either). The recorder reads `audio_wanted` per audio packet and builds nothing
unless an audio subscriber exists, so video-only subscribers cost the audio path nothing.
An audio frame's `pts` (in its stream's `time_base`) is on the same timeline as the video
frames' `dts` (in theirs): `frame.pts * frame.stream.time_base` and
`video.dts * video.stream.time_base` are seconds on one clock, with audio already placed
against the video the way the recording places it. Video and audio subscribers are called
in the order the recorder writes the packets (one thread), so a consumer subscribing to
both with one queue sees them interleaved as recorded.

Usage::

    stop_video = tap.subscribe(on_video)             # TapFrame: every video access unit
    stop_audio = tap.subscribe_audio(on_audio)       # TapAudioFrame: every audio frame
    ...
    stop_audio(); stop_video()

Subscribers are called on the recorder's thread and must only hand the frame on (a bounded
queue, `loop.call_soon_threadsafe`): never block, never raise (an exception is logged and the
subscriber stays). A tap outlives its recorders: the supervisor keeps one per camera, so a
replaced recorder feeds the same subscribers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

log = logging.getLogger("nvr.ingest.tap")


@dataclass(frozen=True, slots=True)
class TapStream:
    """The video stream a frame belongs to; a new object whenever the camera's parameters
    change (a new connection or a new SPS), so consumers can compare by identity."""

    codec: str
    """FFmpeg's canonical codec name, "h264" or "hevc" (never an encoder's, e.g. "libx264")."""
    width: int
    height: int
    extradata: bytes
    """The codec's extradata as the source gave it (avcC/hvcC, or Annex B parameter sets)."""
    time_base: Fraction


@dataclass(frozen=True, slots=True)
class TapFrame:
    """One video access unit as the recorder wrote it."""

    stream: TapStream
    data: bytes
    """The access unit as the source handed it to the muxer (Annex B from our RTSP client;
    the file stores the same NAL units length-prefixed). Never re-encoded."""
    keyframe: bool
    pts: int
    dts: int
    """On the recorder's clean timeline, in `stream.time_base` ticks."""
    duration: int
    arrival: float
    """Arrival on the monotonic clock (seconds), for latency measurements."""


@dataclass(frozen=True, slots=True)
class TapAudioStream:
    """The audio stream an audio frame belongs to; a new object per recorded segment's
    connection parameters, so consumers can compare by identity."""

    codec: str
    """FFmpeg's canonical codec name: "aac", "pcm_alaw", "pcm_mulaw", "opus", ..."""
    sample_rate: int
    channels: int
    extradata: bytes
    """The codec's extradata (AAC: the AudioSpecificConfig; the frames are raw, no ADTS)."""
    time_base: Fraction


@dataclass(frozen=True, slots=True)
class TapAudioFrame:
    """One audio packet as the recorder wrote it (never re-encoded)."""

    stream: TapAudioStream
    data: bytes
    pts: int
    """In `stream.time_base` ticks, on the video frames' timeline (see the module docstring)."""
    duration: int
    arrival: float
    """Arrival on the monotonic clock (seconds)."""


Subscriber = Callable[[TapFrame], None]
AudioSubscriber = Callable[[TapAudioFrame], None]


@dataclass(frozen=True, slots=True)
class _Sub:
    fn: Subscriber
    keyframes_only: bool


class PacketTap:
    """The fan-out point for one camera (see the module docstring)."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self._lock = threading.Lock()
        self._subs: tuple[_Sub, ...] = ()
        self._audio_subs: tuple[AudioSubscriber, ...] = ()
        self._failed: set[int] = set()
        """Subscribers (by id) whose failure was logged: once each, not once a packet."""
        self.wanted = False
        """Any subscriber at all (read per packet without the lock)."""
        self.all_wanted = False
        """A subscriber that wants every packet, not only keyframes."""
        self.audio_wanted = False
        """Any audio subscriber (read per audio packet without the lock)."""

    def subscribe(self, fn: Subscriber, *, keyframes_only: bool = False) -> Callable[[], None]:
        """Add a subscriber (any thread); returns the function that removes it."""
        sub = _Sub(fn, keyframes_only)
        with self._lock:
            self._subs = (*self._subs, sub)
            self._update()

        def unsubscribe() -> None:
            with self._lock:
                self._subs = tuple(s for s in self._subs if s is not sub)
                self._update()

        return unsubscribe

    def subscribe_audio(self, fn: AudioSubscriber) -> Callable[[], None]:
        """Add an audio subscriber (any thread); returns the function that removes it."""
        with self._lock:
            self._audio_subs = (*self._audio_subs, fn)
            self._update()

        def unsubscribe() -> None:
            with self._lock:
                self._audio_subs = tuple(s for s in self._audio_subs if s is not fn)
                self._update()

        return unsubscribe

    def _update(self) -> None:
        self.wanted = bool(self._subs)
        self.all_wanted = any(not s.keyframes_only for s in self._subs)
        self.audio_wanted = bool(self._audio_subs)

    @property
    def subscribers(self) -> int:
        """Video subscribers."""
        return len(self._subs)

    @property
    def audio_subscribers(self) -> int:
        return len(self._audio_subs)

    def wants(self, keyframe: bool) -> bool:
        """Whether a frame with this keyframe flag would reach anyone (build it only then)."""
        return self.all_wanted or (keyframe and self.wanted)

    def publish(self, frame: TapFrame) -> None:
        """Hand `frame` to its subscribers, on the calling (recorder's) thread."""
        for sub in self._subs:
            if sub.keyframes_only and not frame.keyframe:
                continue
            try:
                sub.fn(frame)
            except Exception:
                if id(sub) not in self._failed:
                    self._failed.add(id(sub))
                    log.exception("camera %s: a packet tap subscriber failed", self.camera)

    def publish_audio(self, frame: TapAudioFrame) -> None:
        """Hand `frame` to the audio subscribers, on the calling (recorder's) thread."""
        for fn in self._audio_subs:
            try:
                fn(frame)
            except Exception:
                if id(fn) not in self._failed:
                    self._failed.add(id(fn))
                    log.exception("camera %s: a packet tap audio subscriber failed", self.camera)


def tap_stream(
    codec: str, width: int, height: int, extradata: bytes | None, tb: Fraction
) -> TapStream:
    return TapStream(codec, width, height, bytes(extradata or b""), tb)
