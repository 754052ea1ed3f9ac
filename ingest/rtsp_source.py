"""The PyAV adapter of our own RTSP client: `NativeRtspSource` reads an `RtspSession`'s
frames and hands them to the recorder as PyAV packets, with template streams that carry the
camera's codec parameters as FFmpeg's RTSP demuxer would find them (probed in memory from
the first frames). It owns the start of a stream (first keyframe, B-frame check, waiting for
audio), timing by arrival for cameras whose RTP timestamps stand still, and new templates
when a keyframe brings a new resolution.

Threads: everything here runs on the recorder thread of one camera. Imports go down:
`ingest.rtsp_session`, `ingest.rtp`, `ingest.progress`, `ingest.errors`, PyAV.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, cast

import av
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.video.stream import VideoStream

from nvr.ingest import progress
from nvr.ingest.errors import StreamError, UnsupportedStream
from nvr.ingest.rtp import AacFrames, AudioFrames, Frame, G711Frames, VideoFrames
from nvr.ingest.rtsp_session import NotForUs, RtspSession

log = logging.getLogger("nvr.ingest")

KEYFRAME_WAIT_SECONDS = 60.0
"""Default wait for the first keyframe while media keeps arriving (long-GOP cameras)."""

REORDER_WINDOW_FRAMES = 4
"""Frames after the first keyframe that are looked at before recording starts: a stream
whose timestamps go backwards within them has B-frames (I P B B: the third frame already
goes back) and goes to FFmpeg's demuxer. Kept short: these frames reach the recorder late,
and the first segment's file is named after their arrival until its start settles."""

REORDER_TICKS = 90_000
"""A step back in video time shorter than this (1 s) onto a B picture is reordering; onto any
other picture, or longer, the camera's clock stepped back: a discontinuity."""

AUDIO_WAIT_SECONDS = 1.0
"""How long the first audio frame is waited for once the video is ready."""

AUDIO_ONLY_FRAMES = 4
"""Audio frames an audio-only camera must send before recording starts (its template)."""


class NativeRtspSource:
    """A `Source` reading an `RtspSession`: PyAV packets in the time base of `video` and
    `audio`, template streams that carry the camera's codec parameters.

    `video` is replaced when a keyframe brings a different SPS (a new resolution): the
    recorder sees a new template at that keyframe and starts a new segment with it."""

    def __init__(
        self,
        session: RtspSession,
        stall_seconds: float,
        description: str,
        on_reordered: Callable[[str], None],
        on_gop: Callable[[float], None] | None = None,
    ) -> None:
        self._session = session
        self._stall = stall_seconds
        self._on_reordered = on_reordered
        self._on_gop = on_gop
        self.description = description
        self._vframes: VideoFrames | None = None
        """None: an audio-only camera (`video` is None too)."""
        if session.video is not None:
            assert not isinstance(session.video.frames, AacFrames | G711Frames)
            self._vframes = session.video.frames
        self._aframes: AudioFrames | None = None
        if session.audio is not None and isinstance(session.audio.frames, AacFrames | G711Frames):
            self._aframes = session.audio.frames
        self._sps_type = self._vframes.PARAM_TYPES[-2] if self._vframes is not None else 0
        self._sps: bytes | None = None
        """The SPS the current video template was made from."""
        self._held: list[Frame] = []
        self._probes: list[InputContainer] = []
        self._dummy: OutputContainer | None = None
        self._audio_scale = Fraction(1)
        self._audio_clock = 90_000
        self.video: VideoStream | None = None
        self.audio: AudioStream | None = None
        self.resolution_changes = 0
        self._held_at: list[float] = []
        """When each held frame arrived (monotonic)."""
        self.arrival_timed = False
        """The camera sends one RTP timestamp for every picture: frames are timed by their
        arrival instead (see `_by_arrival`)."""
        self._arrival_base = 0
        self._arrival_t0 = 0.0
        self._last_out = 0

    @property
    def audio_note(self) -> str:
        """Why the camera's audio is not in the recording (empty if it is or there is none)."""
        return self._session.audio_note

    def start(self, keyframe_seconds: float) -> None:
        """Wait for the first keyframe (as long as media keeps arriving, at most
        `keyframe_seconds`: a long-GOP camera sends one every 12-20 s), then
        `REORDER_WINDOW_FRAMES` more frames and some audio; make the template streams.
        Each read counts as progress of the recorder thread (`ingest.progress`), so the
        supervisor does not take a long wait for a stuck thread. NotForUs if frames arrive
        out of presentation order (B-frames: FFmpeg's parser derives their decode times)."""
        session, vf, af = self._session, self._vframes, self._aframes
        if vf is None:
            self._start_audio_only()
            return
        began = time.monotonic()
        deadline = began + keyframe_seconds
        audio_deadline = deadline
        key_at = -1
        while True:
            video_seen = key_at >= 0 and len(self._held) - key_at > REORDER_WINDOW_FRAMES
            if video_seen and (af is None or af.out):
                break
            if video_seen:
                # A camera may announce audio and send none (microphone off): wait a
                # little for it, then record video only (`audio_note` says why).
                audio_deadline = min(audio_deadline, time.monotonic() + AUDIO_WAIT_SECONDS)
                if time.monotonic() > audio_deadline:
                    break
            session.read(self._stall)  # raises StreamStalled when media stops coming
            progress.report()
            for frame in vf.out:
                if key_at < 0 and not frame[2]:
                    continue  # nothing before the first keyframe can be decoded
                if key_at < 0:
                    key_at = len(self._held)
                    deadline = max(deadline, time.monotonic() + 2 * AUDIO_WAIT_SECONDS)
                self._held.append(frame)
                self._held_at.append(time.monotonic())
            vf.out.clear()
            if key_at < 0 and af is not None:
                af.out.clear()  # audio from before the first keyframe is of no use
            if time.monotonic() > deadline:
                if key_at < 0:
                    raise UnsupportedStream(
                        f"no keyframe within {time.monotonic() - began:.0f} s of connecting "
                        "although media kept arriving (raise keyframe_wait_seconds for a "
                        "camera with a longer GOP)"
                    )
                break
        max_ts = -(1 << 62)
        for data, ts, _ in self._held:
            if ts < max_ts and max_ts - ts < REORDER_TICKS and vf.is_b_picture(data):
                raise NotForUs("frames arrive out of presentation order (B-frames)")
            max_ts = ts if ts < max_ts else max(max_ts, ts)
        if len(self._held) > 1 and len({ts for _, ts, _ in self._held}) == 1:
            first = self._held[0][1]
            self._time_by_arrival(first, self._held_at[0], first - 1)
            self._held = [
                f
                for at, group in itertools.groupby(
                    zip(self._held_at, self._held, strict=True), key=lambda x: x[0]
                )
                for f in self._by_arrival([frame for _, frame in group], at)
            ]
        self._make_templates()

    def _start_audio_only(self) -> None:
        """An audio-only camera: wait for its first audio frames (while they arrive), then
        make the audio template."""
        session, af = self._session, self._aframes
        if af is None:
            raise UnsupportedStream(
                f"no video stream, and no audio that can be kept ({session.audio_note})"
            )
        while len(af.out) < AUDIO_ONLY_FRAMES:
            session.read(self._stall)  # raises StreamStalled when audio stops coming
            progress.report()
        self._audio_template(None)
        if self.audio is None:
            raise UnsupportedStream(
                f"no video stream, and its audio could not be used ({session.audio_note})"
            )

    def _time_by_arrival(self, base: int, at: float, last_out: int) -> None:
        """Switch to timing pictures by their arrival: tick `base` is monotonic time `at`,
        `last_out` the last timestamp handed out."""
        self.arrival_timed = True
        self._arrival_base = base
        self._arrival_t0 = at
        self._last_out = last_out
        log.warning(
            "%s: the camera gives every picture the same RTP timestamp; timing pictures by "
            "their arrival",
            self.description,
        )

    def _by_arrival(self, frames: list[Frame], at: float) -> list[Frame]:
        """`frames` that arrived together at `at`, spread evenly from the previous frame's
        time to `at` (their own timestamps say nothing)."""
        end = self._arrival_base + round((at - self._arrival_t0) * 90_000)
        start = self._last_out
        out: list[Frame] = []
        k = len(frames)
        for i, (data, _, key) in enumerate(frames):
            ts = max(start + (end - start) * (i + 1) // k, self._last_out + 1)
            self._last_out = ts
            out.append((data, ts, key))
        return out

    def _make_templates(self) -> None:
        """Template streams from the first frames run through FFmpeg's own probes (raw
        H.264/H.265, ADTS AAC) in memory: the codec parameters its RTSP demuxer would find."""
        self.video = self._video_template(self._held[0][0])
        if self._aframes is not None:
            self._audio_template(self.video)

    def _video_template(self, keyframe: bytearray) -> VideoStream:
        vf = self._vframes
        assert vf is not None
        sample = vf.parameter_sets() + bytes(keyframe)
        deltas = sorted(b[1] - a[1] for a, b in itertools.pairwise(self._held) if b[1] > a[1])
        rate = Fraction(90_000, deltas[len(deltas) // 2]) if deltas else Fraction(25)
        try:
            probe = av.open(
                io.BytesIO(sample),
                "r",
                format=vf.codec,
                options={"framerate": str(rate.limit_denominator(1001))},
            )
        except (av.FFmpegError, OSError) as err:
            raise UnsupportedStream(
                f"the camera's {vf.codec} parameters are unusable: {err}"
            ) from None
        self._probes.append(probe)
        if not probe.streams.video:
            raise UnsupportedStream(f"the camera's {vf.codec} stream could not be probed")
        video = probe.streams.video[0]
        video.time_base = Fraction(1, 90_000)
        self._sps = vf.nal_of(keyframe, self._sps_type) or vf.params.get(self._sps_type)
        return video

    def _audio_template(self, video: VideoStream | None) -> None:
        """The audio template lives in an in-memory file after a copy of the video stream
        (if there is one), so its stream index differs from the video's. AAC: its extradata
        is the SDP's AAC config; G.711: the codec, rate and channels say it all."""
        af = self._aframes
        assert af is not None and self._session.audio is not None
        if not af.out:
            self._session.audio_note = "no audio arrived while the stream was being set up"
            self._aframes = None
            return
        if isinstance(af, G711Frames):
            clock = af.sample_rate
            dummy = av.open(io.BytesIO(), "w", format="mov")
            self._dummy = dummy
            if video is not None:
                dummy.add_stream_from_template(video, opaque=True)
            audio = cast(AudioStream, dummy.add_stream(af.codec, rate=clock))
            audio.layout = "stereo" if af.channels == 2 else "mono"
            audio.time_base = Fraction(1, clock)
            dummy.start_encoding()
        else:
            template = self._aac_template(af, video)
            if template is None:
                return
            audio, clock = template
        tb = audio.time_base
        if tb is None:
            raise UnsupportedStream(f"the {af.codec} template has no time base")
        self._audio_scale = Fraction(1, clock) / tb
        self._audio_clock = clock
        self.audio = audio

    def _aac_template(
        self, af: AacFrames, video: VideoStream | None
    ) -> tuple[AudioStream, int] | None:
        assert self._session.audio is not None
        config = af.config
        adts = b"".join(config.adts(bytes(f[0])) for f in af.out[:4])
        try:
            probe = av.open(io.BytesIO(adts), "r", format="aac")
        except (av.FFmpegError, OSError) as err:
            self._session.audio_note = f"the AAC stream could not be probed ({err})"
            self._aframes = None
            return None
        try:
            if not probe.streams.audio:
                self._session.audio_note = "the AAC stream could not be probed"
                self._aframes = None
                return None
            clock = self._session.audio.media.clock_rate or config.sample_rate
            dummy = av.open(io.BytesIO(), "w", format="mp4")
            self._dummy = dummy
            if video is not None:
                dummy.add_stream_from_template(video, opaque=True)
            audio = dummy.add_stream_from_template(probe.streams.audio[0], opaque=True)
            audio.codec_context.extradata = config.raw
            audio.time_base = Fraction(1, clock)
            dummy.start_encoding()  # codec parameters (with the extradata) are final now
        finally:
            probe.close()
        return audio, clock

    def _new_resolution(self, keyframe: bytearray) -> bool:
        """Whether `keyframe` carries an SPS other than the template's; if so `video` is now
        a template made from it."""
        assert self._vframes is not None and self.video is not None
        sps = self._vframes.nal_of(keyframe, self._sps_type)
        if sps is None or sps == self._sps:
            return False
        old = self.video
        try:
            self.video = self._video_template(keyframe)
        except UnsupportedStream:
            self._sps = sps  # unusable: keep the old template, do not probe this one again
            return False
        ctx, new = old.codec_context, self.video.codec_context
        if (ctx.width, ctx.height) != (new.width, new.height):
            self.resolution_changes += 1
        return True

    def packets(self) -> Iterator[av.Packet[Any]]:
        video, vtb = self.video, Fraction(1, 90_000)
        vf, af = self._vframes, self._aframes
        if vf is None:
            yield from self._audio_packets()
            return
        assert video is not None
        session = self._session
        max_ts = -(1 << 62)  # the held frames were checked in `start`; checked again here
        last_key = -1
        scale = self._audio_scale
        Packet = av.Packet
        pending: list[Frame] = self._held
        self._held = []
        prev_ts = pending[-1][1] if pending else -1
        batch_at = prev_at = time.monotonic()
        if af is not None and pending:
            # Audio from before the first keyframe is of no use: keep what plays with it.
            first = pending[0][1] * self._audio_clock // 90_000
            af.out[:] = [f for f in af.out if f[1] >= first]
        while True:
            if self.arrival_timed:
                pending = self._by_arrival(pending, batch_at)
            elif pending and pending[0][1] == prev_ts:
                # A picture with its predecessor's timestamp: the camera's clock stands still.
                self._time_by_arrival(prev_ts, prev_at, prev_ts)
                pending = self._by_arrival(pending, batch_at)
            if pending:
                prev_ts = pending[-1][1]
            for data, ts, key in pending:
                if ts < max_ts:
                    if max_ts - ts < REORDER_TICKS and vf.is_b_picture(data):
                        self._on_reordered("frames began to arrive out of presentation order")
                        raise StreamError(
                            "camera began sending B-frames; reconnecting through FFmpeg's demuxer"
                        )
                    max_ts = ts  # the camera's clock stepped back: the recorder cuts there
                elif ts > max_ts:
                    max_ts = ts
                if key:
                    if last_key >= 0 and self._on_gop is not None and ts > last_key:
                        self._on_gop((ts - last_key) / 90_000)
                    last_key = ts
                    if self._new_resolution(data) and self.video is not None:
                        video = self.video
                packet = Packet(cast(bytes, data))  # any buffer will do: no copy to bytes
                packet.pts = packet.dts = ts
                packet.time_base = vtb
                packet.stream = video
                if key:
                    packet.is_keyframe = True
                yield packet
            if af is not None:
                audio = self.audio
                atb = audio.time_base if audio is not None else None
                if audio is not None and atb is not None:
                    yield from _audio_out(af, audio, atb, scale)
                af.out.clear()
            session.read(self._stall)
            if vf.out:
                prev_at, batch_at = batch_at, time.monotonic()
            pending = vf.out
            vf.out = []

    def _audio_packets(self) -> Iterator[av.Packet[Any]]:
        """An audio-only camera's packets."""
        af, audio, session = self._aframes, self.audio, self._session
        assert af is not None and audio is not None and audio.time_base is not None
        atb, scale = audio.time_base, self._audio_scale
        while True:
            yield from _audio_out(af, audio, atb, scale)
            af.out.clear()
            session.read(self._stall)

    def camera_realtime_us(self) -> int | None:
        """The camera's clock at video pts 0 (µs since the Unix epoch), from RTCP."""
        return self._session.realtime_us

    def close(self) -> None:
        self._session.close()
        for probe in self._probes:
            probe.close()
        if self._dummy is not None:
            self._dummy.close()


def _audio_out(
    af: AudioFrames, audio: AudioStream, atb: Fraction, scale: Fraction
) -> Iterator[av.Packet[Any]]:
    """The audio frames `af` holds as packets of `audio`, their RTP timestamps scaled by
    `scale` into its time base `atb`; the caller clears `af.out` after."""
    Packet = av.Packet
    for data, ts, _ in af.out:
        packet = Packet(cast(bytes, data))
        packet.pts = packet.dts = ts if scale == 1 else int(ts * scale)
        packet.duration = int(af.samples(data) * scale)
        packet.time_base = atb
        packet.stream = audio
        yield packet
