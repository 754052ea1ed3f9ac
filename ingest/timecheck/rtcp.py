"""A camera's clock from RTCP sender reports: `RtcpClockProbe` measures it once per
connection, `ClockedSource` feeds it the video packets of any source that knows the camera's
RTCP time (`CameraRealtime`: our RTSP client, FFmpeg's demuxer), and `ClockedOpener` wraps an
RTSP opener so every connection it opens is measured. Runs on the recorder thread of the
camera; readings go to `ClockNotes`. Imports go down: `ingest.sources`,
`ingest.timecheck.notes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, Protocol, runtime_checkable

import av
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from nvr.ingest.sources import Source, StreamOpener
from nvr.ingest.timecheck.notes import CameraClockReading, ClockNotes


class RtcpClockProbe:
    """A camera's clock offset from RTCP sender reports, as FFmpeg exposes them.

    FFmpeg's RTSP demuxer maps the first sender report's NTP time onto the stream's timeline and
    publishes it as `start_time_realtime`: microseconds since the Unix epoch, by the camera's
    clock, at pts 0. A video packet's capture time by the camera's clock is then that plus its
    pts; by the server's clock it is no later than the packet's arrival. So the largest
    (camera time - arrival) over `samples` packets is the offset, low by the shortest delay seen
    (about one frame: FFmpeg's parser hands a frame over when the next one begins).

    FFmpeg keeps only the first report's mapping, so this measures once per connection. A window
    whose values spread by more than 2 s (a timestamp jump) is thrown away and measured again.
    """

    def __init__(
        self,
        realtime_us: Callable[[], int | None],
        time_base: Fraction,
        wall: Callable[[], float] = time.time,
        samples: int = 50,
        uncertainty_s: float = 0.2,
    ) -> None:
        self._realtime_us = realtime_us
        self._tb = time_base
        self._wall = wall
        self._samples = samples
        self._uncertainty = uncertainty_s
        self._values: list[float] = []
        self.done = False

    def observe(self, pts: int | None) -> CameraClockReading | None:
        """Feed one video packet's pts as it arrives; returns the reading once it is made."""
        if self.done or pts is None:
            return None
        start = self._realtime_us()
        if start is None:
            return None  # no sender report yet (or the stream carries none)
        arrival = self._wall()
        self._values.append(start / 1e6 + float(pts * self._tb) - arrival)
        if len(self._values) < self._samples:
            return None
        values, self._values = self._values, []
        if max(values) - min(values) > 2.0:
            return None  # the timeline jumped inside the window: measure again
        self.done = True
        return CameraClockReading(
            offset_s=max(values),
            uncertainty_s=self._uncertainty,
            source="rtcp",
            at_ms=int(arrival * 1000),
        )


@runtime_checkable
class CameraRealtime(Protocol):
    """A source that knows the camera's clock at video pts 0 from RTCP sender reports (our
    RTSP client, FFmpeg's demuxer)."""

    def camera_realtime_us(self) -> int | None: ...


class ClockedSource:
    """A `Source` whose video packets also feed an `RtcpClockProbe` (on the recorder thread)."""

    def __init__(
        self,
        inner: Source,
        camera: str,
        report: Callable[[CameraClockReading], object],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._camera = camera
        self._report = report
        self.audio: AudioStream | None = inner.audio
        self.description = inner.description
        self._probe: RtcpClockProbe | None = None
        tb = inner.video.time_base if inner.video is not None else None
        if isinstance(inner, CameraRealtime) and tb is not None:
            self._probe = RtcpClockProbe(inner.camera_realtime_us, tb, wall)

    @property
    def video(self) -> VideoStream | None:
        """The inner source's template (it may change at a keyframe: a new resolution)."""
        return self._inner.video

    @property
    def audio_note(self) -> str:
        return self._inner.audio_note

    def packets(self) -> Iterator[av.Packet[Any]]:
        probe = self._probe
        vindex = self.video.index if self.video is not None else -1
        packets = self._inner.packets()
        for packet in packets:
            if probe is not None and packet.stream_index == vindex:
                reading = probe.observe(packet.pts)
                if reading is not None:
                    self._report(reading)
                if probe.done:
                    yield packet
                    yield from packets  # probe finished: step out of the per-packet path
                    return
            yield packet

    def close(self) -> None:
        self._inner.close()


class ClockedOpener:
    """Wraps an RTSP opener so each connection measures the camera clock from RTCP."""

    def __init__(self, inner: StreamOpener, camera: str, limit_s: float) -> None:
        self._inner = inner
        self.camera = camera
        self._limit = limit_s
        self._notes: ClockNotes | None = None

    def attach(self, notes: ClockNotes) -> None:
        self._notes = notes

    def _report(self, reading: CameraClockReading) -> None:
        if self._notes is not None:
            self._notes.camera_clock(self.camera, reading, self._limit)

    def open(self) -> Source:
        return ClockedSource(self._inner.open(), self.camera, self._report)

    def probe_reachable(self) -> bool:
        return self._inner.probe_reachable()
