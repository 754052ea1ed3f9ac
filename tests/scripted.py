"""A scripted camera and a simulated clock for the recorder: its behaviour at segment
boundaries, gaps, reconnects, timestamp jumps and clock steps, tested in milliseconds and
without GStreamer.

This module owns `SimulatedClock` (an `ingest.recorder.Clock` that moves only when told; a
wait moves it at once, as Moonfire NVR's `SimulatedClocks` does) and `ScriptedOpener` (an
`ingest.sources.StreamOpener` that plays a script of connections and refusals). A connection
replays one of the camera simulator's pre-encoded clips (tests/camsim/clips.py: the packets as
the camera sent them, with their timestamps, parsed into a PyAV template as our RTSP client
does) and moves the clock to each packet's arrival, as a camera sending in real time would.
When the script has run out, the opener stops the recorder, so `run_script` returns as soon
as the recorder thread has ended: no test waits on wall time.

Everything here runs on the recorder thread it drives, except `run_script` (the test's).
"""

from __future__ import annotations

import heapq
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from nvr.ingest.errors import CameraUnreachable, StreamEnded, StreamError
from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.rtp import AacConfig
from nvr.ingest.sources import StreamOpener
from nvr.ingest.tap import PacketTap
from nvr.storage import SegmentStore, now_ms
from nvr.storage.clock import read_uptime_ms
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir

BOOT_OFFSET = now_ms() - read_uptime_ms()
"""This boot's wall clock minus uptime (as in tests/store_clock.py): the store's uptime under
the simulated clock, so its evidence time agrees with the wall clock."""


class SimulatedClock:
    """Wall and monotonic time that move only forward and only when told: by `advance` (a
    packet's arrival), by `wait` (at once, unless stopped), and the wall clock alone by
    `step_wall` (NTP or an operator stepping the server's clock). Thread-safe."""

    def __init__(self, wall_ms: int, monotonic: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._mono = monotonic
        self._wall_at_zero = wall_ms - round(monotonic * 1000)

    def wall_ms(self) -> int:
        with self._lock:
            return self._wall_at_zero + round(self._mono * 1000)

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a simulated clock never goes back ({seconds} s)")
        with self._lock:
            self._mono += seconds

    def advance_to(self, monotonic: float) -> None:
        with self._lock:
            self._mono = max(self._mono, monotonic)

    def step_wall(self, ms: int) -> None:
        with self._lock:
            self._wall_at_zero += ms

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if not stop.is_set():
            self.advance(seconds)
        return stop.is_set()


@dataclass(frozen=True)
class Connection:
    """One connection that streams `seconds` of `clip` in real time and then ends with
    `end` (after `silence_s` without media: a stall's watchdog time). At `jump_at_s` media
    seconds the camera's timestamps jump by `jump_s`; at `step_wall_at_s` the server's wall
    clock steps by `step_wall_ms`."""

    clip: str = "h264"
    seconds: float = 30.0
    end: Callable[[str], StreamError] = StreamEnded
    silence_s: float = 0.0
    jump_at_s: float | None = None
    jump_s: float = 0.0
    step_wall_at_s: float | None = None
    step_wall_ms: int = 0


@dataclass(frozen=True)
class Refused:
    """One connection attempt that fails with `error` after `seconds` (a timeout's)."""

    error: Callable[[str], StreamError] = CameraUnreachable
    seconds: float = 0.0


Step = Connection | Refused


Row = tuple[bytes, int, int, int, bool]
"""One packet of a clip: data, pts, dts, duration (in the track's time base), keyframe."""


@dataclass(frozen=True)
class Track:
    """One stream of a clip: its packets in decode order, looping every `loop_ticks` of
    `1/rate` s."""

    codec: str
    rate: int
    loop_ticks: int
    packets: tuple[Row, ...]
    fps: int = 0
    config: str = ""
    """AAC's AudioSpecificConfig (hex)."""

    def timeline(self) -> Iterator[tuple[float, int, int, int, bytes, bool]]:
        """(seconds after the first packet, pts, dts, duration, data, keyframe), forever."""
        first = self.packets[0][2]
        loop = 0
        while True:
            offset = loop * self.loop_ticks
            for data, pts, dts, duration, key in self.packets:
                at = (offset + dts - first) / self.rate
                yield at, pts + offset, dts + offset, duration, data, key
            loop += 1


@dataclass(frozen=True)
class Clip:
    """A pre-encoded clip of the camera simulator (tests/camsim/clips.py): its video and, if
    it has one, its AAC audio."""

    video: Track
    audio: Track | None

    @classmethod
    def load(cls, directory: Path, name: str) -> Clip:
        index = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
        tracks: dict[str, Track] = {}
        for stream in index["streams"]:
            num, rate = stream["time_base"]
            if num != 1:
                raise ValueError(f"clip {name}: time base {stream['time_base']}")
            data = (directory / stream["file"]).read_bytes()
            rows = tuple(
                (data[off : off + size], pts, dts, dur, bool(key))
                for off, size, pts, dts, dur, key in stream["packets"]
            )
            tracks[stream["kind"]] = Track(
                stream["codec"],
                rate,
                stream["loop_duration"],
                rows,
                fps=stream.get("fps", 0),
                config=stream.get("codec_data", ""),
            )
        return cls(tracks["video"], tracks.get("audio"))

    def templates(self) -> tuple[VideoStream, AudioStream | None, list[Any]]:
        """The streams as our RTSP client makes them (ingest/rtsp_source.py): the video parsed
        by FFmpeg from the first keyframe, in 1/90000 s; the AAC audio probed from ADTS
        frames, with the config as extradata, in 1/rate s. The containers (third) must stay
        open while the streams are used."""
        v = self.video
        probe = av.open(
            io.BytesIO(v.packets[0][0]),
            "r",
            format="hevc" if v.codec == "h265" else v.codec,
            options={"framerate": str(v.fps)},
        )
        video = probe.streams.video[0]
        video.time_base = Fraction(1, v.rate)
        keep: list[Any] = [probe]
        if self.audio is None:
            return video, None, keep
        a = self.audio
        config = AacConfig.parse(a.config)
        adts = b"".join(config.adts(row[0]) for row in a.packets[:4])
        aprobe = av.open(io.BytesIO(adts), "r", format="aac")
        dummy = av.open(io.BytesIO(), "w", format="mp4")
        keep += [aprobe, dummy]
        dummy.add_stream_from_template(video, opaque=True)
        audio = dummy.add_stream_from_template(aprobe.streams.audio[0], opaque=True)
        audio.codec_context.extradata = config.raw
        audio.time_base = Fraction(1, a.rate)
        dummy.start_encoding()
        return video, audio, keep


def _tagged(
    index: int, timeline: Iterator[tuple[float, int, int, int, bytes, bool]]
) -> Iterator[tuple[float, int, int, int, int, bytes, bool]]:
    """A track's timeline with its index after the arrival time (the merge's order)."""
    for at, pts, dts, duration, data, key in timeline:
        yield at, index, pts, dts, duration, data, key


class ScriptedSource:
    """One scripted connection: the clip's packets, looped, each at its real-time arrival."""

    def __init__(
        self,
        clip: Clip,
        step: Connection,
        clock: SimulatedClock,
        last: Callable[[], None] | None = None,
    ) -> None:
        self._clip = clip
        self._step = step
        self._clock = clock
        self._last = last
        """Called instead of ending the stream when this is the script's last step."""
        self.video: VideoStream | None
        self.audio: AudioStream | None
        self.video, self.audio, self._keep = clip.templates()
        self.description = f"scripted {step.clip}"

    @property
    def audio_note(self) -> str:
        return ""

    def packets(self) -> Iterator[av.Packet[Any]]:
        step, clock, clip = self._step, self._clock, self._clip
        tracks: list[tuple[Track, Any]] = [(clip.video, self.video)]
        if clip.audio is not None and self.audio is not None:
            tracks.append((clip.audio, self.audio))
        timelines = [_tagged(i, track.timeline()) for i, (track, _) in enumerate(tracks)]
        began = clock.monotonic()
        stepped = False
        for at, i, pts, dts, duration, data, key in heapq.merge(*timelines):
            if at >= step.seconds:
                if self._last is not None:
                    clock.advance_to(began + step.seconds)
                    self._last()  # the recorder stops: finishes its segment and ends
                    return
                clock.advance_to(began + step.seconds + step.silence_s)
                raise step.end(f"scripted end after {step.seconds} s")
            clock.advance_to(began + at)
            if not stepped and step.step_wall_at_s is not None and at >= step.step_wall_at_s:
                stepped = True
                clock.step_wall(step.step_wall_ms)
            track, stream = tracks[i]
            jump = 0
            if step.jump_at_s is not None and at >= step.jump_at_s:
                jump = round(step.jump_s * track.rate)
            packet = av.Packet(data)
            packet.pts = pts + jump
            packet.dts = dts + jump
            packet.duration = duration
            packet.time_base = Fraction(1, track.rate)
            packet.stream = stream
            if key:
                packet.is_keyframe = True
            yield packet
        raise AssertionError("a clip's timeline never ends")

    def close(self) -> None:
        for container in self._keep:
            container.close()


@dataclass
class ScriptedOpener:
    """Plays `script` one step per `open()`; its probe answers when the next step is a
    connection. Once the script has run out, `on_end` (the recorder's stop) is called: at
    the end of the last connection's media, or at the next `open()` after a refusal."""

    clips: Path
    clock: SimulatedClock
    script: list[Step]
    on_end: Callable[[], None] = lambda: None
    opened: int = 0
    _loaded: dict[str, Clip] = field(default_factory=dict)

    def open(self) -> ScriptedSource:
        self.opened += 1
        if not self.script:
            self.on_end()
            raise CameraUnreachable("the script has ended")
        step = self.script.pop(0)
        if isinstance(step, Refused):
            self.clock.advance(step.seconds)
            raise step.error("scripted refusal")
        if step.clip not in self._loaded:
            self._loaded[step.clip] = Clip.load(self.clips, step.clip)
        last = self.on_end if not self.script else None
        return ScriptedSource(self._loaded[step.clip], step, self.clock, last)

    def probe_reachable(self) -> bool:
        return not self.script or isinstance(self.script[0], Connection)


def open_store(root: Path, clock: SimulatedClock) -> SegmentStore:
    """A store whose clock is the simulated one."""
    return SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=clock.wall_ms,
        uptime=lambda: clock.wall_ms() - BOOT_OFFSET,
    )


def run_script(
    store: SegmentStore,
    clips: Path,
    clock: SimulatedClock,
    script: Sequence[Step],
    *,
    camera: str = "cam",
    segment_seconds: int = 10,
    wrap: Callable[[ScriptedOpener], StreamOpener] | None = None,
    tap: PacketTap | None = None,
) -> CameraRecorder:
    """Record `script` with a real `CameraRecorder` thread on the simulated clock, until the
    script has run out and the recorder has stopped. `wrap` puts a decorator (a fault) around
    the scripted opener."""
    opener = ScriptedOpener(clips, clock, list(script))
    outer: StreamOpener = opener if wrap is None else wrap(opener)
    rec = CameraRecorder(
        camera, outer, store, segment_seconds=segment_seconds, clock=clock, tap=tap
    )
    opener.on_end = rec.stop
    _play_out(rec)
    return rec


def _play_out(rec: CameraRecorder) -> None:
    """Start `rec` and wait for its thread to end with the script."""
    rec.start()
    rec.thread.join(60)  # a bound for a hang, not a timing: a script takes milliseconds
    if rec.thread.is_alive():
        rec.stop()
        rec.thread.join(10)
        raise AssertionError(f"the recorder did not finish the script: {rec.status()}")


def open_store_on_uptime(root: Path, clock: SimulatedClock, uptime_base_ms: int) -> SegmentStore:
    """A store whose clock is the simulated one and whose uptime (the evidence of time)
    follows the simulated *monotonic* clock, `uptime_base_ms` on from it (keep it across
    reopens: one boot), so a step of the wall clock is a step against uptime, as on a real
    box."""
    return SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=clock.wall_ms,
        uptime=lambda: round(clock.monotonic() * 1000) + uptime_base_ms,
    )


def record_then_kill(
    store: SegmentStore,
    clips: Path,
    clock: SimulatedClock,
    script: Sequence[Step],
    *,
    camera: str = "cam",
    segment_seconds: int = 10,
) -> Path | None:
    """Record `script`, then end the recorder as a SIGKILL would when its last connection
    ends: fenced off (`CameraRecorder.abandon`), so it writes nothing more to the store (no
    ledger entry at stop, no row for the segment in flight). Returns the segment in flight,
    left as a `.part` file for the next start's salvage (None if none was). Close the store
    to end the "process"."""
    opener = ScriptedOpener(clips, clock, list(script))
    rec = CameraRecorder(camera, opener, store, segment_seconds=segment_seconds, clock=clock)
    opener.on_end = lambda: _kill(rec)
    _play_out(rec)
    assert rec.status().state == "abandoned", rec.status()
    return rec.leftover_part


def _kill(rec: CameraRecorder) -> None:
    if not rec.abandon(5.0):
        raise AssertionError("the recorder could not be fenced off")


@pytest.fixture(scope="session")
def scripted_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The camera simulator's clips the scripted camera plays (encoded once, cached as
    tests/camsim/fixtures.py caches them; PyAV only, no GStreamer)."""
    directory = clips_cache_dir(tmp_path_factory.getbasetemp().parent / "camsim-clips")
    make_clips(directory, ["h264", "h264aac", "h265", "bframes"])
    return directory
