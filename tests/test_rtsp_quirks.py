"""Cameras with real-world RTSP quirks (issue 12), served by our quirk camera
(tests/camsim/quirks.py) on 127.0.0.1 and recorded through the real recorder into a real
store: every file is reopened and decoded with PyAV, its frames counted against the source's
10 fps, its audio measured against its video, footage compared with wall time, and the outage
ledger must stay empty. All mounts are recorded at once, so the module costs ~20 s of wall
time, not 20 s a quirk."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
import pytest

from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.storage import Outage, Segment, SegmentStore, StreamEvent, probe_segment
from tests.camsim.quirks import CATALOGUE, QuirkServer

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
    detail: str = ""
    """The recorder's status detail while it recorded."""


@dataclass
class ReadBack:
    """One recorded file as PyAV reads it: every video packet decoded, audio measured."""

    frames: int = 0
    pictures: int = 0
    first_is_key: bool = False
    dts_rising: bool = True
    video_s: float = 0.0
    width: int = 0
    height: int = 0
    audio_codec: str | None = None
    audio_s: float = 0.0
    errors: list[str] = field(default_factory=list)


def read_back(path: Path) -> ReadBack:
    out = ReadBack()
    with av.logging.Capture() as logs, av.open(str(path)) as c:
        v = c.streams.video[0]
        if c.streams.audio:
            out.audio_codec = c.streams.audio[0].codec_context.name
        out.width, out.height = v.codec_context.width, v.codec_context.height
        dts: list[int] = []
        end = 0
        for packet in c.demux():
            if packet.size == 0:
                continue
            if packet.stream.type == "audio":
                assert packet.duration is not None and packet.time_base is not None
                out.audio_s += float(packet.duration * packet.time_base)
                continue
            assert packet.dts is not None
            if not dts:
                out.first_is_key = packet.is_keyframe
            dts.append(packet.dts)
            end = max(end, packet.dts + (packet.duration or 0))
            out.frames += 1
            out.pictures += len(v.codec_context.decode(packet))
        out.pictures += len(v.codec_context.decode(None))
        assert v.time_base is not None
        out.video_s = float((end - dts[0]) * v.time_base) if dts else 0.0
        out.dts_rising = all(b > a for a, b in itertools.pairwise(dts))
    out.errors = [msg for level, _, msg in logs if level <= av.logging.ERROR]
    return out


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
        details = {name: rec.status().detail for name, rec in recorders.items()}
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
                [o for o in store.ledger.outages(name) if o.cause != "daemon-stopped"],
                store.events.since(name),
                openers[name],
                details[name],
            )
            for name, path in mounts.items()
        }
    finally:
        store.close()


@pytest.fixture(scope="module")
def recorded(quirks: QuirkServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recorded]:
    """Every catalogue mount but `busy`, recorded at the same time for `RECORD_SECONDS`."""
    mounts = {name: name for name in CATALOGUE if name not in NOT_IN_THE_MATRIX}
    return record(quirks, tmp_path_factory.mktemp("quirks"), mounts, RECORD_SECONDS)


NOT_IN_THE_MATRIX = {"busy"}
"""`busy` has a test of its own (64 cameras)."""


def assert_clean(
    rec: Recorded,
    audio: str | None,
    *,
    discontinuities: int = 0,
    frame_slack: float = 1.5,
    connect_s: float = 4.0,
) -> list[ReadBack]:
    """No outage, `discontinuities` discontinuity events (0: none; else at least that many),
    files that start on a keyframe and decode without errors, frames = duration x 10 fps
    (within `frame_slack`), audio of codec `audio` as long as the video, footage as long as
    the time recorded (less the connect), no gap beyond one frame between segments."""
    assert rec.outages == [], rec.outages
    jumps = [e for e in rec.events if e.kind == "discontinuity"]
    if discontinuities:
        assert len(jumps) >= discontinuities, rec.events
    else:
        assert jumps == [], rec.events
    assert rec.segments, f"{rec.mount}: nothing recorded"
    media = 0.0
    prev_end: int | None = None
    found_all = []
    for seg in rec.segments:
        found = read_back(seg.path)
        assert found.first_is_key and found.dts_rising, (seg.path, found)
        assert found.errors == [], (seg.path, found.errors[:5])
        assert found.pictures == found.frames == seg.frames, (seg.path, found, seg)
        assert abs(found.frames - found.video_s / FRAME_S) <= frame_slack, (seg.path, found)
        assert (found.width, found.height) == (seg.width, seg.height), (seg, found)
        assert found.audio_codec == audio and seg.audio_codec == audio, (seg, found)
        if audio is not None:
            assert abs(found.audio_s - found.video_s) <= 0.3, (seg.path, found)
        if prev_end is not None:
            assert abs(seg.start_ms - prev_end) <= FRAME_S * 1000, (prev_end, seg)
        prev_end = seg.start_ms + round(found.video_s * 1000)
        media += found.video_s
        found_all.append(found)
    wall = (rec.stopped_ms - rec.segments[0].start_ms) / 1000
    assert abs(media - wall) <= 0.02 * wall + 0.5, (rec.mount, media, wall)
    # Connecting (our client waits for 4 frames after the first keyframe) takes seconds, not
    # the dozen a fallback or a retry would.
    assert (rec.segments[0].start_ms - rec.began_ms) / 1000 <= connect_s, rec.segments[0]
    return found_all


def test_a_well_behaved_camera_records_cleanly(recorded: dict[str, Recorded]) -> None:
    """The baseline: the quirk camera with no quirk switched on."""
    rec = recorded["plain"]
    assert_clean(rec, "aac")
    assert rec.opener._ffmpeg_reason is None


def test_stray_bytes_between_packets_are_skipped_without_an_outage(
    recorded: dict[str, Recorded], quirks: QuirkServer
) -> None:
    assert quirks.junk_sent >= 3  # 20 s of h264aac: one in 200-400 packets
    rec = recorded["stray-bytes"]
    assert_clean(rec, "aac")
    assert rec.opener._ffmpeg_reason is None


def test_lf_only_line_ends_are_accepted(recorded: dict[str, Recorded]) -> None:
    rec = recorded["lf-only"]
    assert_clean(rec, None)
    assert rec.opener._ffmpeg_reason is None


def test_redirects_are_followed(recorded: dict[str, Recorded]) -> None:
    rec = recorded["redirect"]
    assert_clean(rec, None)
    assert rec.opener._ffmpeg_reason is None


def test_packets_of_a_foreign_ssrc_are_dropped(recorded: dict[str, Recorded]) -> None:
    rec = recorded["foreign-ssrc"]
    assert_clean(rec, "aac")
    assert rec.opener._ffmpeg_reason is None


def test_a_udp_only_camera_with_the_default_tcp_transport_records_over_udp(
    recorded: dict[str, Recorded],
) -> None:
    rec = recorded["udp-only"]
    assert_clean(rec, None)
    reason = rec.opener._ffmpeg_reason
    assert reason is not None and "461" in reason and "udp" in reason


def test_a_marker_bit_on_every_slice_gives_one_sample_per_picture(
    recorded: dict[str, Recorded],
) -> None:
    """Item 2: 4 slices a picture, each ending in a marker bit: still 10 samples a second,
    every one a whole picture that decodes."""
    rec = recorded["slices-marker"]
    assert_clean(rec, None, frame_slack=1.0)
    assert rec.opener._ffmpeg_reason is None


def test_a_14_s_gop_joined_mid_gop_is_waited_for(recorded: dict[str, Recorded]) -> None:
    """Item 4: the first keyframe comes 13 s after PLAY (the old limit gave up at 12 s):
    footage starts there, without an outage."""
    rec = recorded["long-gop"]
    assert_clean(rec, None, connect_s=16.0)
    assert (rec.segments[0].start_ms - rec.began_ms) / 1000 >= 12.0, rec.segments[0]
    assert rec.opener._ffmpeg_reason is None


@pytest.mark.parametrize("mount", ["step-back-half", "step-back-2"])
def test_a_backward_clock_step_cuts_a_segment_without_a_gap(
    recorded: dict[str, Recorded], mount: str
) -> None:
    """Item 6: the camera's RTP clocks step back 6 s into the stream: a discontinuity (new
    segment, event), no gap, no squeeze, audio still as long as video, no FFmpeg detour."""
    rec = recorded[mount]
    assert_clean(rec, "aac", discontinuities=1)
    assert any(s.discontinuity for s in rec.segments[1:]), rec.segments
    assert rec.opener._ffmpeg_reason is None


@pytest.mark.parametrize(("mount", "codec"), [("pcma", "pcm_alaw"), ("pcmu", "pcm_mulaw")])
def test_g711_audio_is_recorded_as_it_came(
    recorded: dict[str, Recorded], mount: str, codec: str
) -> None:
    """Item 7: A-law (with rtpmap) and mu-law (static payload type 0, no rtpmap) kept in the
    files as they came (QuickTime sample entries), as long as the video."""
    rec = recorded[mount]
    assert_clean(rec, codec)
    assert "audio not recorded" not in rec.detail
    assert rec.opener._ffmpeg_reason is None


def test_g726_audio_is_said_missing_and_the_video_recorded(
    recorded: dict[str, Recorded],
) -> None:
    """Item 7: G.726 has no sample entry we could keep without re-encoding: the video is
    recorded cleanly and the status and the index say plainly that the audio is not."""
    rec = recorded["g726"]
    assert_clean(rec, None)
    assert "audio not recorded: G726-32/8000 audio cannot be kept" in rec.detail
    (event,) = [e for e in rec.events if e.kind == "audio-not-recorded"]
    assert "G.726" in event.detail
    assert rec.opener._ffmpeg_reason is None


def test_audio_rtp_info_30_s_off_is_re_anchored_not_squeezed(
    recorded: dict[str, Recorded],
) -> None:
    """Item 8: audio timed by its own packets, placed with the video: every file's audio
    is as long as its video."""
    rec = recorded["rtpinfo-audio"]
    assert_clean(rec, "aac")
    assert rec.opener._ffmpeg_reason is None


def test_a_resolution_change_starts_a_file_with_the_new_parameter_sets(
    recorded: dict[str, Recorded],
) -> None:
    """640x360 for 5 s, then 480x272, looping: every change starts a new file whose sample
    entry (read back by PyAV) and index row carry the new size, without a gap."""
    rec = recorded["resize"]
    found = assert_clean(rec, None)
    assert {(f.width, f.height) for f in found} == {(640, 360), (480, 272)}
    assert len(rec.segments) >= 3, rec.segments
    changes = [e for e in rec.events if e.kind == "resolution-change"]
    assert len(changes) >= 2 and "640x360 -> 480x272" in changes[0].detail, changes


def test_constant_rtp_timestamps_are_timed_by_arrival(recorded: dict[str, Recorded]) -> None:
    """Every picture with the same RTP timestamp: pictures told apart by their first slice,
    timed by arrival (so frames against duration within a few percent), never squeezed."""
    rec = recorded["constant-ts"]
    frames = sum(s.frames for s in rec.segments)
    assert_clean(rec, None, frame_slack=0.05 * frames + 2)
    assert rec.opener._ffmpeg_reason is None


def test_a_content_base_without_its_scheme_is_resolved(recorded: dict[str, Recorded]) -> None:
    """retina's Anjvision quirk: `Content-Base: 127.0.0.1:PORT/mount/` (no `rtsp://`)."""
    rec = recorded["base-no-scheme"]
    assert_clean(rec, None)
    assert rec.opener._ffmpeg_reason is None


def test_packets_of_another_payload_type_are_dropped(recorded: dict[str, Recorded]) -> None:
    """retina's Geovision quirk: junk packets of payload type 50 (same SSRC and sequence
    numbering) among the video: dropped, so every picture decodes."""
    rec = recorded["payload-type-50"]
    assert_clean(rec, None)
    assert rec.opener._ffmpeg_reason is None


def test_annex_b_in_single_nal_unit_packets_is_split(recorded: dict[str, Recorded]) -> None:
    """retina's V380 quirk: start codes (and several NAL units) in single NAL unit packets."""
    rec = recorded["annex-b-payloads"]
    assert_clean(rec, None)
    assert rec.opener._ffmpeg_reason is None


def test_an_empty_fu_a_start_fragment_loses_no_picture(recorded: dict[str, Recorded]) -> None:
    """retina's issue 115: every fragmented NAL unit opens with a start fragment of no bytes.
    Every picture is still recorded whole (frames against duration, every one decoded)."""
    rec = recorded["empty-fu-start"]
    assert_clean(rec, "aac", frame_slack=1.0)
    assert rec.opener._ffmpeg_reason is None


def test_sdp_sections_that_cannot_be_parsed_are_left_out(recorded: dict[str, Recorded]) -> None:
    """retina's TP-Link quirk (moonfire-nvr issue 238) and a garbled rtpmap: the sections
    are left out with a log line naming them, the video and audio recorded by our client
    (not FFmpeg's demuxer)."""
    rec = recorded["sdp-unparseable"]
    assert_clean(rec, "aac")
    assert rec.opener._ffmpeg_reason is None
    logged = rec.opener._skipped_media
    assert "m=application/TP-LINK 0 RTP/AVP smart/1/90000" in logged, logged
    assert "a=rtpmap:98 H264/ninety-thousand" in logged, logged


def test_an_audio_only_camera_is_recorded(recorded: dict[str, Recorded]) -> None:
    """No video in the SDP: the audio alone, in files PyAV reads back without errors, every
    packet decoded, as long as the time recorded, without a gap; the index (and a salvage's
    probe of the file) say there is no video."""
    rec = recorded["audio-only"]
    assert rec.outages == [], rec.outages
    assert rec.segments, "nothing recorded"
    assert "audio only" in rec.detail
    frame_s = 1024 / 16_000
    media = 0.0
    prev_end: int | None = None
    for seg in rec.segments:
        assert (seg.video_codec, seg.width, seg.height, seg.frames) == (None, None, None, 0)
        assert seg.audio_codec == "aac", seg
        with av.logging.Capture() as logs, av.open(str(seg.path)) as c:
            assert not c.streams.video and len(c.streams.audio) == 1
            a = c.streams.audio[0]
            packets = decoded = 0
            audio_s = 0.0
            dts: list[int] = []
            for packet in c.demux(a):
                if packet.size == 0:
                    continue
                assert packet.dts is not None and packet.duration and packet.time_base
                packets += 1
                dts.append(packet.dts)
                audio_s += float(packet.duration * packet.time_base)
                decoded += len(a.codec_context.decode(packet))
            decoded += len(a.codec_context.decode(None))
            tb = a.time_base
            assert tb is not None
        errors = [msg for level, _, msg in logs if level <= av.logging.ERROR]
        assert errors == [], (seg.path, errors[:5])
        assert decoded == packets, (seg.path, decoded, packets)
        steps = [float((b - x) * tb) for x, b in itertools.pairwise(dts)]
        assert all(0 < step <= 1.5 * frame_s for step in steps), (seg.path, max(steps))
        assert abs(audio_s - seg.duration_ms / 1000) <= 0.1, (seg, audio_s)
        probed = probe_segment(seg.path, seg.camera, seg.start_ms)
        assert (probed.video_codec, probed.audio_codec) == (None, "aac")
        assert abs(probed.duration_ms - seg.duration_ms) <= 100, (probed, seg)
        if prev_end is not None:
            assert abs(seg.start_ms - prev_end) <= FRAME_S * 1000, (prev_end, seg)
        prev_end = seg.end_ms
        media += audio_s
    wall = (rec.stopped_ms - rec.segments[0].start_ms) / 1000
    assert abs(media - wall) <= 0.02 * wall + 0.5, (media, wall)
    assert (rec.segments[0].start_ms - rec.began_ms) / 1000 <= 4.0, rec.segments[0]


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
        assert keyframes >= 1 and source.video is not None
        assert source.video.codec_context.width == 640
        assert opener._ffmpeg_transport == "udp"
    finally:
        source.close()
