"""A muxer that refuses the stream is a stream error, not a storage error (issue 11, item 10).

After an RTCP-only period (the camera's media stopped, its RTCP went on) a reconnect can hand
the recorder a video stream without usable codec parameters: FFmpeg's MP4 muxer then refuses
the first packet with EINVAL ("dimensions not set") before writing a byte. That is what the
camera sent, not the disk: the outage stays one ledger row under a stream cause, no empty
`.part` file is left behind, and the next connection records again.

The camera is scripted on a simulated clock (tests/scripted.py: its media stops, a stall); the
reconnect that loses its parameter sets is a `StreamOpener` around the scripted one whose one
connection's video template is probed, as our RTSP client probes, from the camera's own
keyframes with the SPS/PPS taken out.

One of the four files of the fault suite issue 11's proof asks for (`tests/test_faults.py`
there, split by item so pytest-xdist can spread them; all listed in docs/reliability.md)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.video.stream import VideoStream

from nvr.ingest.errors import StreamStalled
from nvr.ingest.sources import Source, StreamOpener
from nvr.storage import now_ms
from tests.media import check_file
from tests.scripted import (
    Connection,
    ScriptedOpener,
    SimulatedClock,
    Step,
    open_store,
    run_script,
)


def template_without_parameter_sets(clips: Path) -> tuple[InputContainer, VideoStream]:
    """A video stream probed from the `h264` clip's frames with every SPS and PPS removed:
    FFmpeg finds the codec but no dimensions."""
    (es,) = clips.glob("h264.video.*.es")
    data = es.read_bytes()[: 2 * 1024 * 1024]
    units = re.split(b"(?=\x00\x00\x00\x01)", data)
    kept = b"".join(u for u in units if not (len(u) > 4 and u[4] & 0x1F in (7, 8)))
    probe = av.open(io.BytesIO(kept), "r", format="h264")
    video = probe.streams.video[0]
    assert video.codec_context.width == 0, "the probe found dimensions without an SPS"
    video.time_base = Fraction(1, 90_000)  # what our RTSP client's packets carry
    return probe, video


class _Relabelled:
    """A real source whose video template is replaced."""

    def __init__(self, inner: Source, video: VideoStream) -> None:
        self._inner = inner
        self.video = video
        self.audio: AudioStream | None = inner.audio
        self.description = inner.description
        self.audio_note = inner.audio_note

    def packets(self) -> Iterator[av.Packet[Any]]:
        return self._inner.packets()

    def close(self) -> None:
        self._inner.close()


class LosesParameterSetsOnce:
    """An opener whose `broken`-th successful connection hands over `template`."""

    def __init__(self, inner: StreamOpener, template: VideoStream, broken: int) -> None:
        self._inner = inner
        self._template = template
        self._broken = broken
        self.opens = 0

    def open(self) -> Source:
        source = self._inner.open()
        self.opens += 1
        if self.opens == self._broken:
            return _Relabelled(source, self._template)
        return source

    def probe_reachable(self) -> bool:
        return self._inner.probe_reachable()


def test_muxer_refusal_on_reconnect_is_one_stream_gap(
    scripted_clips: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    probe, template = template_without_parameter_sets(scripted_clips)
    clock = SimulatedClock(now_ms())
    root = tmp_path / "store"
    store = open_store(root, clock)
    openers: list[LosesParameterSetsOnce] = []

    def broken_second(inner: ScriptedOpener) -> LosesParameterSetsOnce:
        openers.append(LosesParameterSetsOnce(inner, template, broken=2))
        return openers[0]

    script: list[Step] = [
        Connection(seconds=5, end=StreamStalled, silence_s=3.0),  # media stops, RTCP goes on
        Connection(seconds=5),  # the reconnect without parameter sets: refused at once
        Connection(seconds=5),  # and the next one records again
    ]
    try:
        run_script(store, scripted_clips, clock, script, wrap=broken_second)
    finally:
        probe.close()
    assert openers[0].opens == 3
    gaps = [o for o in store.ledger.outages("cam") if o.cause != "daemon-stopped"]
    assert len(gaps) == 1, gaps  # one gap, one row: never two overlapping ones
    (gap,) = gaps
    assert gap.cause == "stream-error", gap
    assert "Invalid argument" in gap.detail, gap  # the refused connection's error, last
    assert "storage-error" not in caplog.text
    segments = store.segments("cam")
    before = [s for s in segments if s.end_ms <= gap.start_ms]
    after = [s for s in segments if s.start_ms >= gap.start_ms]
    assert before and before[-1].end_ms == gap.start_ms, (before[-1:], gap)
    assert after and after[0].start_ms == gap.end_ms, (after[:1], gap)
    assert not list(root.rglob("*.part")), "an empty .part file was left behind"
    for seg in segments:
        assert check_file(seg.path, decode=False).first_is_key
    report = store.verify("cam")
    assert report.ok, report.problems
    store.close()
