"""Media quirks of real cameras (issue 12): the depacketiser fed crafted RTP, and a 20 s GOP
camera (`tests.camsim.mediacam`, a real RTSP server on 127.0.0.1) recorded under the real
supervisor, every file reopened with PyAV. Recordings of every other media quirk through the
real recorder are in tests/test_rtsp_quirks.py (the quirk camera's mounts, all at once)."""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from pathlib import Path

import av
import pytest

import nvr.ingest.rtsp_session as rtsp
from nvr.config import CameraConfig, NvrConfig, StorageConfig
from nvr.ingest.rtp import (
    AacFrames,
    G711Frames,
    H264Frames,
    H265Frames,
    PayloadError,
    SdpMedia,
    audio_frames_for,
    parse_sdp,
)
from nvr.ingest.sources import RtspOpener
from nvr.ingest.supervisor import RepairPolicy, Supervisor
from nvr.ingest.timeline import StreamTimeline
from nvr.storage import Segment, SegmentStore
from tests.camsim.mediacam import MediaCamera, Quirks

SC = b"\x00\x00\x00\x01"


def h264() -> H264Frames:
    return H264Frames(SdpMedia("video", "RTP/AVP", 96, "H264", 90000, 1, {}))


def h265() -> H265Frames:
    return H265Frames(SdpMedia("video", "RTP/AVP", 96, "H265", 90000))


# --- access units -------------------------------------------------------------------------------


def test_marker_on_every_slice_makes_one_sample_per_picture() -> None:
    """x264 `slices=4` behind a camera that sets the marker bit on every slice: the four
    slices of one timestamp are one picture, not four samples one tick apart."""
    f = h264()
    # first_mb_in_slice: ue(v) 0 is the bit 1; the later slices start at MB 30, 60, 90.
    idr = [b"\x65\x88" + b"I0", b"\x65\x00\x7c" + b"I1", b"\x65\x00\x3d" + b"I2", b"\x65\x00\x5b"]
    p = [b"\x41\x9a" + b"P0", b"\x41\x00\x7c" + b"P1", b"\x41\x00\x3d" + b"P2", b"\x41\x00\x5b"]
    for slice_ in idr:
        f.payload(memoryview(slice_), 1000, True)
    # The P picture's first slice is fragmented; every slice's last packet has the marker.
    f.payload(memoryview(b"\x5c\x81" + p[0][1:3]), 4600, False)
    f.payload(memoryview(b"\x5c\x41" + p[0][3:]), 4600, True)
    for slice_ in p[1:]:
        f.payload(memoryview(slice_), 4600, True)
    f.payload(memoryview(b"\x41\x9a"), 8200, True)
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (b"".join(SC + s for s in idr), 1000, True),
        (b"".join(SC + s for s in p), 4600, False),
    ]


def test_pictures_of_one_timestamp_are_told_apart_by_their_first_slice() -> None:
    """A camera that sends one timestamp for everything (and no marker bits): each picture
    starts where a slice says it is the first; H.264 and H.265 alike."""
    f = h264()
    for data in (b"\x67\x64", b"\x68\xee", b"\x65\x88", b"\x65\x00\x7c", b"\x41\x9a", b"\x41\x80"):
        f.payload(memoryview(data), 500, False)
    f.payload(memoryview(b"\x41\x01"), 900, False)
    assert [(bytes(d), key) for d, _, key in f.out] == [
        (SC + b"\x67\x64" + SC + b"\x68\xee" + SC + b"\x65\x88" + SC + b"\x65\x00\x7c", True),
        (SC + b"\x41\x9a", False),
        (SC + b"\x41\x80", False),
    ]
    g = h265()
    # IDR_W_RADL (19) in two slice segments, then a TRAIL_R (1) picture, all at one time.
    for data in (b"\x26\x01\x80a", b"\x26\x01\x20b", b"\x02\x01\x80c"):
        g.payload(memoryview(data), 7, True)
    g.payload(memoryview(b"\x50\x01\x05"), 7, True)  # suffix SEI stays with its picture
    g.payload(memoryview(b"\x02\x01\x80d"), 8, True)
    assert [(bytes(d), key) for d, _, key in g.out] == [
        (SC + b"\x26\x01\x80a" + SC + b"\x26\x01\x20b", True),
        (SC + b"\x02\x01\x80c" + SC + b"\x50\x01\x05", False),
    ]


def test_parameter_sets_stamped_with_the_previous_picture_open_the_next() -> None:
    """A Reolink quirk in retina's issue tracker: the SPS/PPS before each IDR carry the
    previous picture's timestamp (the SPS with the marker bit). They must open the IDR's
    access unit, not end the previous picture."""
    f = h264()
    f.payload(memoryview(b"\x41\x9a"), 100, True)  # a P picture at 100
    f.payload(memoryview(b"\x67\x64"), 100, True)  # SPS at 100, marker set
    f.payload(memoryview(b"\x68\xee"), 100, False)
    f.payload(memoryview(b"\x65\x88"), 200, True)  # the IDR at 200
    f.payload(memoryview(b"\x41\x9a"), 300, True)
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (SC + b"\x41\x9a", 100, False),
        (SC + b"\x67\x64" + SC + b"\x68\xee" + SC + b"\x65\x88", 200, True),
    ]


def test_an_empty_fu_start_fragment_keeps_its_unit() -> None:
    """retina's issue 115: a camera sends the start of a fragmented NAL unit with no bytes
    after the FU header (and empty middle pieces). The unit is kept whole, and whether it
    begins a new picture at the same timestamp is decided by its first byte, which comes
    in the next piece."""
    f = h264()
    f.payload(memoryview(b"\x67\x64"), 500, False)
    f.payload(memoryview(b"\x7c\x85"), 500, False)  # IDR, empty start
    f.payload(memoryview(b"\x7c\x05"), 500, False)  # empty middle
    f.payload(memoryview(b"\x7c\x05\x88I"), 500, False)
    f.payload(memoryview(b"\x7c\x45-end"), 500, True)
    # The next picture at the same timestamp, its first_mb_in_slice 0 in the second piece.
    f.payload(memoryview(b"\x3c\x81"), 500, False)
    f.payload(memoryview(b"\x3c\x01\x9aP"), 500, False)
    f.payload(memoryview(b"\x3c\x41!"), 500, True)
    # A slice of that picture (first_mb_in_slice 30): continues it, not a new sample.
    f.payload(memoryview(b"\x3c\x81"), 500, False)
    f.payload(memoryview(b"\x3c\x41\x00\x7c"), 500, True)
    f.payload(memoryview(b"\x5c\xc5"), 900, True)  # a unit of no bytes at all: nothing
    f.payload(memoryview(b"\x41\x9a"), 900, True)
    f.payload(memoryview(b"\x41\x9a"), 1300, True)
    assert [(bytes(d), ts, key) for d, ts, key in f.out] == [
        (SC + b"\x67\x64" + SC + b"\x65\x88I-end", 500, True),
        (SC + b"\x21\x9aP!" + SC + b"\x21\x00\x7c", 500, False),
        (SC + b"\x41\x9a", 900, False),
    ]
    g = h265()
    g.payload(memoryview(b"\x62\x01\x93"), 7, False)  # FU of IDR_W_RADL (19), empty start
    g.payload(memoryview(b"\x62\x01\x13\x80a"), 7, False)
    g.payload(memoryview(b"\x62\x01\x53b"), 7, True)
    g.payload(memoryview(b"\x02\x01\x80c"), 8, True)
    assert [(bytes(d), key) for d, _, key in g.out] == [(SC + b"\x26\x01\x80ab", True)]


def test_b_pictures_are_found_from_the_slice_header() -> None:
    f = h264()
    # first_mb 0 ('1'), slice_type ue: P=0 ('1'), B=1 ('010'), I=7 ('0001000'), B=6 ('00111').
    assert f.is_b_picture(SC + b"\x09\xf0" + SC + b"\x01\xa0")  # 1 010: B
    assert f.is_b_picture(SC + b"\x01\x9c")  # 1 00111: B (6)
    assert not f.is_b_picture(SC + b"\x41\xc0")  # 1 1: P
    assert not f.is_b_picture(SC + b"\x65\x88\x80")  # 1 0001000: I
    g = h265()
    # PPS: pps_id 0, sps_id 0, two flags, num_extra_slice_header_bits = 2.
    g.params[34] = bytes([0x44, 0x01, 0b11000100, 0x00])
    # TRAIL_R: first_slice 1, pps_id 0 ('1'), two extra bits, slice_type ue.
    assert g.is_b_picture(SC + b"\x02\x01" + bytes([0b11001000]))  # 1 1 00 1 -> B (0)
    assert not g.is_b_picture(SC + b"\x02\x01" + bytes([0b11000100]))  # 010 -> P (1)


def test_backward_timestamp_step_is_a_discontinuity_not_a_squeeze() -> None:
    """A camera clock stepped back by SNTP: the timeline reports a jump (the recorder cuts
    and records it) and carries on one frame later, instead of packing frames a tick apart."""
    for step in (-45_000, -180_000):  # -0.5 s and -2 s
        tl = StreamTimeline(9000, 2 * 90_000)
        stamps = [0, 9000, 18000, 18000 + 9000 + step, 18000 + 18000 + step]
        out = [s for ts in stamps for _, s in tl.push(None, ts, ts, 0)]
        assert [s.dts for s in out] == [0, 9000, 18000, 27000, 36000], step
        assert [bool(s.jump_ticks) for s in out] == [False, False, False, True, False]


# --- audio payloads ----------------------------------------------------------------------------


def test_g711_static_payload_types_and_frames() -> None:
    sdp = (
        "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=audio 0 RTP/AVP 8\r\n"  # PCMA with no rtpmap, as many cameras send it
        "m=audio 0 RTP/AVP 0\r\n"
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 G726-32/8000\r\n"
    )
    _, pcma, pcmu, g726 = parse_sdp(sdp).medias
    a = audio_frames_for(pcma)
    assert isinstance(a, G711Frames) and (a.codec, a.sample_rate) == ("pcm_alaw", 8000)
    assert audio_frames_for(pcmu).codec == "pcm_mulaw"
    a.payload(memoryview(b"\xd5" * 160), 800, True)
    a.payload(memoryview(b"\xd5" * 80), 960, False)
    assert [(len(d), ts, a.samples(d)) for d, ts, _ in a.out] == [(160, 800, 160), (80, 960, 80)]
    with pytest.raises(PayloadError, match=r"G726-32/8000 audio cannot be kept: G\.726 has no"):
        audio_frames_for(g726)


def test_audio_rtp_info_that_disagrees_with_its_packets_is_re_anchored() -> None:
    """RTP-Info puts the audio 100 s away from the video that arrives with it: the audio is
    placed at the video's time (and the reason kept for one warning), never 100 s off."""
    session = session_with_tracks()
    assert session.video is not None and session.audio is not None
    session.video.base, session.audio.base = 1_000_000, 50_000_000  # from RTP-Info
    data = b"".join(
        interleaved(0, rtp(i, 1_000_000 + 90_000 + i * 9000, b"\x41\x9a", True)) for i in range(3)
    )  # video at 1.0-1.2 s
    audio_ts = 50_000_000 - 100 * 16000 + 16000
    au = struct.pack(">HH", 16, 4 << 3) + b"aaaa"
    data += interleaved(2, rtp(0, audio_ts, au, True, pt=97))
    data += interleaved(2, rtp(1, audio_ts + 1024, au, True, pt=97))
    session._buf[: len(data)] = data
    session._end = len(data)
    session._parse()
    got = [ts for _, ts, _ in session.audio.frames.out]
    assert abs(got[0] - 1.2 * 16000) <= 16, got  # at the video's 1.2 s
    assert got[1] - got[0] == 1024
    assert "re-anchored" in session.anchor_note


def session_with_tracks() -> rtsp.RtspSession:
    session = rtsp.RtspSession("rtsp://127.0.0.1:1/x", username=None, password=None, timeout_s=1)
    video = SdpMedia("video", "RTP/AVP", 96, "H264", 90000, 1, {"packetization-mode": "1"})
    session.video = rtsp._Track(video, H264Frames(video), "rtsp://127.0.0.1:1/x/0")
    audio = SdpMedia(
        "audio",
        "RTP/AVP",
        97,
        "MPEG4-GENERIC",
        16000,
        1,
        {"mode": "AAC-hbr", "sizelength": "13", "indexlength": "3", "config": "1408"},
    )
    session.audio = rtsp._Track(audio, AacFrames(audio), "rtsp://127.0.0.1:1/x/1")
    session.audio.channel = 2
    return session


def rtp(seq: int, ts: int, payload: bytes, marker: bool, pt: int = 96) -> bytes:
    return struct.pack(">BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, 1234) + payload


def interleaved(channel: int, packet: bytes) -> bytes:
    return b"$" + bytes([channel]) + struct.pack(">H", len(packet)) + packet


def test_a_reconnect_waits_for_three_of_the_longest_gops_seen() -> None:
    opener = RtspOpener(
        "rtsp://127.0.0.1:1/x",
        username=None,
        password=None,
        transport="tcp",
        timeout_s=2,
        keyframe_wait_s=10,
    )
    assert opener.keyframe_wait_s() == 10
    opener._learn_gop(4.0)
    assert opener.keyframe_wait_s() == 12
    opener._learn_gop(20.0)
    opener._learn_gop(1.0)
    assert opener.keyframe_wait_s() == 60


# --- recordings from the quirky camera --------------------------------------------------------


class Mp4Check:
    """What PyAV finds in one recorded file, with the FFmpeg warnings it logged."""

    def __init__(self, path: Path) -> None:
        with av.logging.Capture() as logs, av.open(str(path)) as c:
            v = c.streams.video[0]
            a = c.streams.audio[0] if c.streams.audio else None
            self.width, self.height = v.codec_context.width, v.codec_context.height
            self.audio_codec = a.codec_context.name if a is not None else None
            self.frames = self.decoded = 0
            self.audio_s = 0.0
            dts: list[int] = []
            for packet in c.demux():
                if packet.size == 0:
                    continue
                if packet.stream.type == "audio":
                    assert packet.duration is not None and packet.time_base is not None
                    self.audio_s += float(packet.duration * packet.time_base)
                    continue
                self.frames += 1
                assert packet.dts is not None
                dts.append(packet.dts)
                self.decoded += len(v.codec_context.decode(packet))
            self.decoded += len(v.codec_context.decode(None))
            tb = v.time_base
            assert tb is not None
            self.video_s = float((dts[-1] - dts[0]) * tb) + 0.1 if dts else 0.0
            self.dts_rising = all(b > a for a, b in itertools.pairwise(dts))
        self.warnings = [m for level, _, m in logs if level <= av.logging.WARNING]


def check_segments(segments: list[Segment], fps: int = 10) -> list[Mp4Check]:
    """Every file: frames = duration x fps (one frame of slack), all decoded, rising DTS,
    no FFmpeg warning; consecutive files without a hole beyond a frame."""
    out = []
    prev: Segment | None = None
    for seg in segments:
        found = Mp4Check(seg.path)
        assert found.dts_rising and not found.warnings, (seg.path, found.warnings)
        assert abs(found.frames - seg.duration_ms / 1000 * fps) <= 1.5, (seg, found.frames)
        assert found.decoded == found.frames, (seg.path, found.decoded, found.frames)
        assert seg.frames == found.frames
        if prev is not None:
            assert abs(seg.start_ms - prev.end_ms) <= 1000 // fps, (prev, seg)
        prev = seg
        out.append(found)
    return out


@pytest.mark.slow
async def test_a_20_s_gop_camera_is_waited_for_and_never_replaced(tmp_path: Path) -> None:
    """A "smart codec" camera with a keyframe every 20 s, joined mid-GOP: the recorder waits
    for the keyframe (with media arriving) while the supervisor, whose stuck limit is 8 s
    here, sees progress and replaces nothing; footage starts at that keyframe."""
    root = tmp_path / "store"
    with MediaCamera(Quirks(gop_seconds=20.0, loop_seconds=40.0)) as cam:
        config = NvrConfig(
            storage=StorageConfig(root=root, reserve_bytes=0),
            cameras=[
                CameraConfig(name="cam", url=cam.url(), segment_seconds=10, stall_seconds=2.0)
            ],
        )
        store = SegmentStore(root, config.storage.index_url())
        supervisor = Supervisor(
            config, store, repair=RepairPolicy(stuck_seconds=8.0, step_factor=0)
        )
        await asyncio.sleep(2.0)  # join mid-GOP: the next keyframe is 18 s away
        supervisor.start()
        try:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and len(store.segments("cam")) < 1:
                assert await supervisor.repair() == []
                await asyncio.sleep(1.0)
            await asyncio.sleep(2.0)
            assert await supervisor.repair() == []
        finally:
            await supervisor.stop()
        try:
            assert supervisor.replacements == 0
            assert [o.cause for o in store.ledger.outages("cam")] in ([], ["daemon-stopped"])
            segments = store.segments("cam")
            assert segments and segments[0].duration_ms >= 19_000, segments
            check_segments(segments)
        finally:
            store.close()


