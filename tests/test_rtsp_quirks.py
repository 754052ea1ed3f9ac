"""Cameras with real-world RTSP quirks (issue 12), served by our quirk camera
(tests/camsim/quirks.py) on 127.0.0.1 and recorded through the real recorder into a real
store: every file is reopened and decoded with PyAV, footage is compared with wall time, and
the outage ledger must stay empty."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import pytest

from ingest import CameraRecorder, RtspOpener
from storage import Outage, Segment, SegmentStore, StreamEvent
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir
from tests.camsim.quirks import CATALOGUE, QuirkServer
from tests.media import check_file

pytestmark = pytest.mark.slow

RECORD_SECONDS = 20.0
TIMEOUT_S = 4.0  # the recorder's default stall/handshake timeout
FRAME_S = 0.1  # the clips are 10 fps
CAMERAS_AT_ONCE = 64


@dataclass
class Recorded:
    """What one camera left in the store after recording a quirk mount."""

    mount: str
    began_ms: int
    stopped_ms: int
    segments: list[Segment]
    outages: list[Outage]
    events: list[StreamEvent]
    opener: RtspOpener


def decode_errors(path: Path) -> tuple[int, list[str]]:
    """Decode every video frame of `path`; return (pictures, FFmpeg error messages)."""
    pictures = 0
    with av.logging.Capture() as logs, av.open(str(path)) as c:
        for frame in c.decode(video=0):
            pictures += frame is not None
    errors = [msg for level, _, msg in logs if level <= av.logging.ERROR]
    return pictures, errors


@pytest.fixture(scope="module")
def quirks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuirkServer]:
    clips = clips_cache_dir(tmp_path_factory.getbasetemp().parent / "camsim-clips")
    make_clips(clips, sorted({q.clip for q in CATALOGUE.values()}))
    with QuirkServer(clips) as server:
        yield server


def record(
    server: QuirkServer, root: Path, mounts: dict[str, str], seconds: float
) -> dict[str, Recorded]:
    """Record camera name -> mount path for `seconds` with one recorder each (all at once)."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    recorders: dict[str, CameraRecorder] = {}
    openers: dict[str, RtspOpener] = {}
    try:
        began_ms = time.time_ns() // 1_000_000
        for name, path in mounts.items():
            openers[name] = RtspOpener(
                server.url(path),
                username=None,
                password=None,
                transport="tcp",
                timeout_s=TIMEOUT_S,
                camera=name,
            )
            recorders[name] = CameraRecorder(
                name, openers[name], store, segment_seconds=10, stall_seconds=TIMEOUT_S
            )
        for rec in recorders.values():
            rec.start()
        time.sleep(seconds)
        stopped_ms = time.time_ns() // 1_000_000
        for rec in recorders.values():
            rec.stop()
        for rec in recorders.values():
            rec.thread.join(20)
            assert not rec.thread.is_alive(), f"{rec.camera} did not stop"
        return {
            name: Recorded(
                path,
                began_ms,
                stopped_ms,
                store.segments(name),
                [o for o in store.outages(name) if o.cause != "daemon-stopped"],
                store.events(name),
                openers[name],
            )
            for name, path in mounts.items()
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def recorded(quirks: QuirkServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recorded]:
    """Every catalogue mount but `busy`, recorded at the same time for `RECORD_SECONDS`."""
    mounts = {name: name for name in CATALOGUE if name != "busy"}
    return record(quirks, tmp_path_factory.mktemp("quirks"), mounts, RECORD_SECONDS)


def assert_clean(rec: Recorded, audio: bool) -> None:
    """No outage, no discontinuity, files that decode without errors, footage as long as the
    time recorded (less the connect), no gap beyond one frame between segments."""
    assert rec.outages == [], rec.outages
    assert [e for e in rec.events if e.kind == "discontinuity"] == [], rec.events
    assert rec.segments, f"{rec.mount}: nothing recorded"
    media = 0.0
    prev_end: int | None = None
    for seg in rec.segments:
        found = check_file(seg.path, decode=False)
        assert found.first_is_key and found.dts_monotonic, (seg.path, found)
        pictures, errors = decode_errors(seg.path)
        assert errors == [], (seg.path, errors[:5])
        assert pictures >= found.frames - 1, (seg.path, pictures, found)
        if audio:
            assert found.audio_codec == "aac", (seg.path, found)
            audio_s = found.audio_packets * 1024 / 16_000
            assert abs(audio_s - found.duration_s) <= 0.3, (seg.path, audio_s, found)
        if prev_end is not None:
            assert abs(seg.start_ms - prev_end) <= FRAME_S * 1000, (prev_end, seg)
        prev_end = seg.start_ms + round(found.duration_s * 1000)
        media += found.duration_s
    wall = (rec.stopped_ms - rec.segments[0].start_ms) / 1000
    assert abs(media - wall) <= 0.02 * wall + 0.5, (rec.mount, media, wall)
    # Connecting (our client waits for 4 frames after the first keyframe) takes seconds, not
    # the dozen a fallback or a retry would.
    assert (rec.segments[0].start_ms - rec.began_ms) / 1000 <= 4.0, rec.segments[0]


def test_a_well_behaved_camera_records_cleanly(recorded: dict[str, Recorded]) -> None:
    """The baseline: the quirk camera with no quirk switched on."""
    rec = recorded["plain"]
    assert_clean(rec, audio=True)
    assert rec.opener._ffmpeg_reason is None


def test_stray_bytes_between_packets_are_skipped_without_an_outage(
    recorded: dict[str, Recorded], quirks: QuirkServer
) -> None:
    assert quirks.junk_sent >= 3  # 20 s of h264aac: one in 200-400 packets
    rec = recorded["stray-bytes"]
    assert_clean(rec, audio=True)
    assert rec.opener._ffmpeg_reason is None


def test_lf_only_line_ends_are_accepted(recorded: dict[str, Recorded]) -> None:
    rec = recorded["lf-only"]
    assert_clean(rec, audio=False)
    assert rec.opener._ffmpeg_reason is None


def test_redirects_are_followed(recorded: dict[str, Recorded]) -> None:
    rec = recorded["redirect"]
    assert_clean(rec, audio=False)
    assert rec.opener._ffmpeg_reason is None


def test_packets_of_a_foreign_ssrc_are_dropped(recorded: dict[str, Recorded]) -> None:
    rec = recorded["foreign-ssrc"]
    assert_clean(rec, audio=True)
    assert rec.opener._ffmpeg_reason is None


def test_a_udp_only_camera_with_the_default_tcp_transport_records_over_udp(
    recorded: dict[str, Recorded],
) -> None:
    rec = recorded["udp-only"]
    assert_clean(rec, audio=False)
    reason = rec.opener._ffmpeg_reason
    assert reason is not None and "461" in reason and "udp" in reason


def test_64_cameras_connecting_at_once_to_a_slow_server_all_record(
    quirks: QuirkServer, tmp_path: Path
) -> None:
    """A recorder restart with 64 cameras on one server that answers one handshake request at
    a time: slow is not dead, so no camera may log an outage."""
    mounts = {f"cam{i:02d}": f"busy/cam{i:02d}" for i in range(CAMERAS_AT_ONCE)}
    result = record(quirks, tmp_path / "store", mounts, 25.0)
    outages = {name: rec.outages for name, rec in result.items() if rec.outages}
    assert outages == {}
    silent = [name for name, rec in result.items() if not rec.segments]
    assert silent == []


def test_a_udp_only_camera_already_on_ffmpegs_demuxer_switches_to_udp(
    quirks: QuirkServer,
) -> None:
    """A camera that needs FFmpeg's demuxer anyway (here: marked so, as after B-frames) and
    answers TCP SETUP with 461: FFmpeg is asked again over UDP instead of failing forever."""
    opener = RtspOpener(
        quirks.url("udp-only"),
        username=None,
        password=None,
        transport="tcp",
        timeout_s=TIMEOUT_S,
        camera="udp",
    )
    opener._ffmpeg_reason = "frames arrive out of presentation order (B-frames)"
    source = opener.open()
    try:
        keyframes = 0
        for count, packet in enumerate(source.packets()):
            keyframes += packet.is_keyframe
            if count >= 30:
                break
        assert keyframes >= 1 and source.video.codec_context.width == 640
        assert opener._ffmpeg_transport == "udp"
    finally:
        source.close()
