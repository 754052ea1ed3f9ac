"""A muxer that refuses the stream is a stream error, not a storage error (issue 11, item 10).

After an RTCP-only period (the camera's media stopped, its RTCP went on) a reconnect can hand
the recorder a video stream without usable codec parameters: FFmpeg's MP4 muxer then refuses
the first packet with EINVAL ("dimensions not set") before writing a byte. That is what the
camera sent, not the disk: the outage stays one ledger row under a stream cause, no empty
`.part` file is left behind, and the next connection records again.

The camera is the loopback simulator (frozen: RTSP and RTCP go on, RTP stops); the reconnect
that loses its parameter sets is a `StreamOpener` around the real RTSP opener whose one
connection's video template is probed, as our RTSP client probes, from the camera's own
keyframes with the SPS/PPS taken out."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest
from av.audio.stream import AudioStream
from av.container import InputContainer
from av.video.stream import VideoStream

from ingest import CameraRecorder, RtspOpener
from ingest.sources import Source
from storage import SegmentStore
from tests.camsim import CameraSim
from tests.media import check_file
from tests.recording_rig import wait_for


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
    """The real RTSP opener; its `broken`-th successful connection hands over `template`."""

    def __init__(self, inner: RtspOpener, template: VideoStream, broken: int) -> None:
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
    camsim: CameraSim, camsim_clips: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    probe, template = template_without_parameter_sets(camsim_clips)
    root = tmp_path / "store"
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    opener = LosesParameterSetsOnce(
        RtspOpener(
            camsim.url("h264"),
            username=None,
            password=None,
            transport="tcp",
            timeout_s=3.0,
            camera="cam",
        ),
        template,
        broken=2,
    )
    rec = CameraRecorder("cam", opener, store, segment_seconds=10, stall_seconds=3.0)
    rec.start()
    try:
        wait_for(lambda: rec.status().state == "recording", 15, "recording")
        time.sleep(3)
        camsim.freeze("h264")  # RTP stops; the RTSP session and its RTCP go on
        wait_for(lambda: bool(store.open_outages("cam")), 15, "the stall in the ledger")
        time.sleep(2)
        camsim.thaw("h264")
        wait_for(lambda: opener.opens >= 3, 30, "a reconnect after the refused one")
        wait_for(lambda: not store.open_outages("cam"), 15, "the outage to close")
        wait_for(lambda: rec.status().state == "recording", 15, "recording again")
        time.sleep(2)
    finally:
        rec.stop()
        rec.thread.join(15)
        probe.close()
    gaps = [o for o in store.outages("cam") if o.cause != "daemon-stopped"]
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
