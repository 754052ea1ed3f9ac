"""GB/T 28181 media (nvr.gb28181.session/ps/rtp/media) to the in-repo platform
(tests/gbsim.py) on 127.0.0.1: the platform INVITEs recorded footage (Playback, Download at
a speed) and live video (from a real recorder's packet tap), receives RTP over UDP and TCP
(both setup roles), reassembles the PS stream and opens it with PyAV's `mpeg` demuxer: it
decodes, the codec is right, and the access units and their timestamps are exactly the
recorded ones over the asked range. End of file is MediaStatus 121; BYE works both ways;
every stream is audited under the platform's own principal; unknown channels and empty
ranges are refused (and audited)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.gb28181.device import ChannelConfig, GbDevice
from nvr.gb28181.media import GopCache, LiveSource, to_90k
from nvr.gb28181.session import Sessions, range_start_ms
from nvr.ingest.tap import PacketTap, TapAudioFrame, TapAudioStream, TapFrame, TapStream
from nvr.storage import AuditEntry, SegmentStore, now_ms
from tests.api_rig import footage_copy
from tests.gbsim import DEVICE, MediaCall, Platform, gb_config, hdr, wait_for
from tests.scripted import Connection, SimulatedClock, open_store, run_script

SERVER = "50010000002000000001"
DOMAIN = "5001000000"
PASSWORD = "gb-s3cret"
CH_H264 = "50010000001310000001"
CH_BFRAMES = "50010000001310000002"
CH_LIVE = "50010000001310000003"
PARAMETER_NALS = {"h264": {7, 8}, "hevc": {32, 33, 34}}


def nal_units(data: bytes, codec: str, annexb: bool = True) -> list[bytes]:
    """NAL units of an access unit, Annex B or (a file's samples) 4-byte length-prefixed,
    without parameter sets and access unit delimiters (the PS carries them in front of
    keyframes)."""
    if annexb:
        nals = [n.rstrip(b"\x00") for n in data.split(b"\x00\x00\x01") if n.strip(b"\x00")]
    else:
        nals, at = [], 0
        while at < len(data):
            size = int.from_bytes(data[at : at + 4], "big")
            nals.append(data[at + 4 : at + 4 + size])
            at += 4 + size
    skip = PARAMETER_NALS[codec] | ({9} if codec == "h264" else {35})

    def kind(nal: bytes) -> int:
        return nal[0] & 0x1F if codec == "h264" else (nal[0] >> 1) & 0x3F

    return [n for n in nals if n and kind(n) not in skip]


def received(call: MediaCall, tmp_path: Path) -> tuple[str, list[tuple[list[bytes], int]], int]:
    """(codec, [(NAL units, pts)], decoded frames) of what the platform got, by PyAV."""
    path = tmp_path / f"received-{id(call)}.ps"
    path.write_bytes(call.ps())
    with av.open(str(path), format="mpeg") as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        packets = [(bytes(p), p.pts) for p in container.demux(stream) if p.size]
    codec = "hevc" if codec == "hevc" else "h264"
    with av.open(str(path), format="mpeg") as container:
        frames = sum(1 for _ in container.decode(video=0))
    return codec, [(nal_units(d, codec), pts or 0) for d, pts in packets], frames


def recorded(store: SegmentStore, camera: str) -> list[tuple[list[bytes], int, bool, float]]:
    """Every recorded video access unit of `camera`: NAL units, pts - dts in 90 kHz,
    keyframe, and its wall time (segment start + its decode time into the segment), by
    PyAV (each segment file has a timeline of its own; the wall time joins them)."""
    out = []
    for seg in store.segments(camera):
        with av.open(str(seg.path)) as container:
            stream = container.streams.video[0]
            codec = "hevc" if stream.codec_context.name == "hevc" else "h264"
            tb = stream.time_base
            assert tb is not None
            first_dts = None
            for p in container.demux(stream):
                if not p.size or p.dts is None or p.pts is None:
                    continue
                first_dts = p.dts if first_dts is None else first_dts
                wall = seg.start_ms + float((p.dts - first_dts) * tb) * 1000
                out.append(
                    (
                        nal_units(bytes(p), codec, annexb=False),
                        round((p.pts - p.dts) * tb * 90_000),
                        p.is_keyframe,
                        wall,
                    )
                )
    return out


def audio_received(call: MediaCall, tmp_path: Path) -> tuple[str, list[bytes], int]:
    """(codec, raw AAC frames without their ADTS header, decoded frames) by PyAV."""
    path = tmp_path / f"received-audio-{id(call)}.ps"
    path.write_bytes(call.ps())
    with av.open(str(path), format="mpeg") as container:
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        raw = []
        for p in container.demux(stream):
            data = bytes(p)
            if not data:
                continue
            assert data[0] == 0xFF and data[1] & 0xF0 == 0xF0, "an ADTS frame"
            raw.append(data[7:])
    with av.open(str(path), format="mpeg") as container:
        frames = sum(1 for _ in container.decode(audio=0))
    return codec, raw, frames


def recorded_audio(store: SegmentStore, camera: str) -> list[tuple[bytes, float]]:
    """Every recorded AAC frame of `camera` and its wall time (on the video's clock)."""
    out = []
    for seg in store.segments(camera):
        with av.open(str(seg.path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.time_base is not None and audio.time_base is not None
            v0 = next(p.dts for p in container.demux(video) if p.dts is not None)
            container.seek(0)
            for p in container.demux(audio):
                if p.size and p.dts is not None:
                    wall = (
                        seg.start_ms + float(p.dts * audio.time_base - v0 * video.time_base) * 1000
                    )
                    out.append((bytes(p), wall))
    return out


def check_range(
    got: list[tuple[list[bytes], int]],
    rec: list[tuple[list[bytes], int, bool, float]],
    start_ms: int,
    end_ms: int,
) -> None:
    """The received AUs are the recorded ones from the keyframe at or before `start_ms` up
    to `end_ms`, and their PTS steps are the recorded ones (wall time plus each frame's
    composition offset)."""
    first = max(i for i, r in enumerate(rec) if r[2] and r[3] <= start_ms)
    last = max(i for i, r in enumerate(rec) if r[3] < end_ms)
    want = rec[first : last + 1]
    assert len(got) == len(want), (len(got), len(want))
    assert [g[0] for g in got] == [w[0] for w in want]
    got_steps = [g[1] - got[0][1] for g in got]
    want_pts = [round(w[3] * 90) + w[1] for w in want]
    want_steps = [p - want_pts[0] for p in want_pts]
    steps = zip(got_steps, want_steps, strict=True)
    bad = [(i, a, b) for i, (a, b) in enumerate(steps) if abs(a - b) > 2]
    assert not bad, bad[:10]


@pytest.fixture
def store(footage_template: Path, tmp_path: Path) -> Iterator[SegmentStore]:
    yield from footage_copy(footage_template, tmp_path)


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(SERVER, DOMAIN, PASSWORD) as p:
        yield p


async def start_device(
    platform: Platform,
    store: SegmentStore,
    monkeypatch: pytest.MonkeyPatch,
    taps: dict[str, PacketTap] | None = None,
    keepalive_seconds: int = 5,
    masked: frozenset[str] = frozenset(),
) -> tuple[GbDevice, Sessions]:
    monkeypatch.setenv("GB_MEDIA_PASSWORD", PASSWORD)
    config = gb_config(platform, "GB_MEDIA_PASSWORD", keepalive_seconds=keepalive_seconds)
    channels = [
        ChannelConfig(cam, ch, name, masked=cam in masked)
        for cam, ch, name in (
            ("h264aac", CH_H264, "h264aac"),
            ("bframes", CH_BFRAMES, "bframes"),
            ("cam", CH_LIVE, "live"),
        )
    ]
    device = GbDevice(config, channels, store, lambda c: True, bind_host="127.0.0.1")
    taps = taps or {}
    sessions = Sessions(
        device, store, lambda cam: taps.setdefault(cam, PacketTap(cam)), store.audit.append
    )
    device.media = sessions
    await device.start()
    await asyncio.wait_for(platform.registered.wait(), 20)
    return device, sessions


async def media_status(platform: Platform) -> str:
    root = await asyncio.wait_for(platform.messages.get(), 60)
    assert root.findtext("CmdType") == "MediaStatus"
    return root.findtext("NotifyType") or ""


@pytest.mark.parametrize(
    ("camera", "channel", "transport", "kind", "speed"),
    [
        ("h264aac", CH_H264, "udp", "Playback", None),
        ("h264aac", CH_H264, "tcp-passive", "Download", 4.0),
        ("bframes", CH_BFRAMES, "tcp-active", "Download", 4.0),
    ],
)
async def test_recorded_range_arrives_as_the_recorded_access_units(
    platform: Platform,
    store: SegmentStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    camera: str,
    channel: str,
    transport: str,
    kind: str,
    speed: float | None,
) -> None:
    rec = recorded(store, camera)
    seg0 = store.segments(camera)[0]
    # a range across the first segment boundary (10 s segments), on whole seconds (t=)
    start_s = seg0.start_ms // 1000 + 7
    end_s = start_s + (4 if kind == "Playback" else 8)
    device, _ = await start_device(platform, store, monkeypatch)
    try:
        call = await platform.invite(
            channel, kind, transport=transport, start_s=start_s, end_s=end_s, speed=speed
        )
        assert call.answer is not None and call.answer.status_code == 200
        answer = call.answer.body.decode()
        assert "y=0100000001" in answer and "a=sendonly" in answer
        assert ("TCP/RTP/AVP" in answer) == (transport != "udp")
        if transport == "tcp-passive":
            assert "a=setup:active" in answer
        if transport == "tcp-active":
            assert "a=setup:passive" in answer
        assert await media_status(platform) == "121"
        await call.bye()
        codec, got, decoded = received(call, tmp_path)
        assert codec == "h264"
        assert decoded == len(got)
        check_range(got, rec, start_s * 1000, end_s * 1000)
        if camera == "h264aac":  # the camera with AAC: its audio in the same PS
            acodec, araw, adecoded = audio_received(call, tmp_path)
            assert acodec == "aac"
            assert adecoded == len(araw) > 0
            first_key = max(r[3] for r in rec if r[2] and r[3] <= start_s * 1000)
            want_audio = [
                d for d, t in recorded_audio(store, camera) if first_key <= t < end_s * 1000
            ]
            assert araw == want_audio
        assert {p.ssrc for p in call.packets} == {100000001}
        assert call.payload_types == {96}
        # one timestamp per frame (video and audio packs), the marker on its last packet
        frames = [p for p in sorted(call.packets, key=lambda p: p.seq) if p.marker]
        if camera != "h264aac":
            assert len(frames) == len(got)
            assert len({p.timestamp for p in call.packets}) == len(got)
        # every run of packets up to a marker (one frame's pack) shares one timestamp
        run: list[int] = []
        for p in sorted(call.packets, key=lambda p: p.seq):
            run.append(p.timestamp)
            if p.marker:
                assert len(set(run)) == 1, run
                run = []
        assert run == []
    finally:
        await device.stop()
    action = "playback" if kind == "Playback" else "download"
    entries = store.audit.entries(actor=f"gb28181:{SERVER}", action=action, target=camera)
    assert len(entries) == 1
    assert entries[0].detail["start_ms"] == start_s * 1000
    # the device's own role: the opposite of the platform's
    role = {"udp": "udp", "tcp-passive": "tcp-active", "tcp-active": "tcp-passive"}
    assert entries[0].detail["transport"] == role[transport]


async def test_unknown_channel_and_empty_range_are_refused_and_audited(
    platform: Platform, store: SegmentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, _ = await start_device(platform, store, monkeypatch)
    try:
        call = await platform.invite("50010000001319999999", "Play")
        assert call.answer is not None and call.answer.status_code == 404
        end = store.segments("h264aac")[-1].end_ms // 1000
        call = await platform.invite(CH_H264, "Playback", start_s=end + 3600, end_s=end + 3700)
        assert call.answer is not None and call.answer.status_code == 404
    finally:
        await device.stop()
    refused = store.audit.entries(actor=f"gb28181:{SERVER}", outcome="refused")
    assert [(e.action, e.target, e.detail["reason"]) for e in refused] == [
        ("live", "?", "no such channel"),
        ("playback", "h264aac", "no footage"),
    ]


async def test_a_masked_camera_is_refused_to_a_masked_platform(
    platform: Platform, store: SegmentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Privacy masks (R10): the platform may not see behind them, and its streams are the
    camera's own bitstream, so they are refused (403, the reason in a Warning header and in
    the audit log); a camera without masks still streams."""
    seg0 = store.segments("h264aac")[0]
    start_s = seg0.start_ms // 1000 + 2
    device, _ = await start_device(platform, store, monkeypatch, masked=frozenset({"h264aac"}))
    try:
        for kind in ("Play", "Playback", "Download"):
            call = await platform.invite(CH_H264, kind, start_s=start_s, end_s=start_s + 4)
            assert call.answer is not None and call.answer.status_code == 403, kind
            warning = call.answer.headers.get_first("Warning", "") or ""
            assert warning.startswith(f"399 {DEVICE} ") and "privacy masks" in warning
            assert not call.packets
        seg = store.segments("bframes")[0]
        call = await platform.invite(
            CH_BFRAMES, "Playback", start_s=seg.start_ms // 1000 + 2, end_s=seg.start_ms // 1000 + 4
        )
        assert call.answer is not None and call.answer.status_code == 200
        await call.bye()
    finally:
        await device.stop()
    refused = store.audit.entries(actor=f"gb28181:{SERVER}", outcome="refused")
    assert [(e.action, e.target) for e in refused] == [
        ("live", "h264aac"),
        ("playback", "h264aac"),
        ("download", "h264aac"),
    ]
    assert all("privacy masks" in str(e.detail["reason"]) for e in refused)


@pytest.mark.parametrize("transport", ["udp", "tcp-passive"])
async def test_live_from_the_recorder_tap(
    platform: Platform,
    scripted_clips: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    clock = SimulatedClock(now_ms())
    live_store = open_store(tmp_path / "live", clock)
    tap = PacketTap("cam")
    published: list[TapFrame] = []

    def camera_pace(frame: TapFrame) -> None:
        # The scripted camera runs as fast as the CPU; this first subscriber holds the
        # recorder's thread to the camera's real rate (25 fps) and keeps what it saw.
        published.append(frame)
        time.sleep(0.04)

    tap.subscribe(camera_pace)
    done = threading.Event()

    def record() -> None:
        try:
            run_script(live_store, scripted_clips, clock, [Connection("h264", seconds=20)], tap=tap)
        finally:
            done.set()

    device, sessions = await start_device(platform, live_store, monkeypatch, {"cam": tap})
    recorder = threading.Thread(target=record, name="test-recorder")
    recorder.start()
    try:
        call = await platform.invite(CH_LIVE, "Play", transport=transport)
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: sum(p.marker for p in call.packets) >= 60, "60 live frames")
        await call.bye()
        await wait_for(lambda: not sessions.sessions, "the stream ended")
    finally:
        await asyncio.to_thread(recorder.join, 60)
        await device.stop()
        live_store.close()
    codec, got, decoded = received(call, tmp_path)
    assert codec == "h264"
    assert decoded == len(got) >= 60
    # what the recorder published, in order, none twice, from a keyframe on; a stream that
    # falls behind (a loaded machine) skips to a later keyframe, never into a GOP
    pub = [(nal_units(f.data, "h264"), f.keyframe) for f in published]
    at = 0
    for n, (nals, _) in enumerate(got):
        found = next(i for i in range(at, len(pub)) if pub[i][0] == nals)
        assert (found == at and n > 0) or pub[found][1], f"frame {n} is not at a keyframe"
        at = found + 1
    entries = live_store_entries(tmp_path / "live")
    assert [(e.actor, e.action, e.target) for e in entries] == [
        (f"gb28181:{SERVER}", "live", "cam")
    ]


def live_store_entries(root: Path) -> list[AuditEntry]:
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        return list(store.audit.entries(actor=f"gb28181:{SERVER}"))
    finally:
        store.close()


async def test_device_stop_ends_streams_with_bye(
    platform: Platform, store: SegmentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg0 = store.segments("h264aac")[0]
    device, _ = await start_device(platform, store, monkeypatch)
    call = await platform.invite(
        CH_H264, "Playback", start_s=seg0.start_ms // 1000, end_s=seg0.start_ms // 1000 + 30
    )
    assert call.answer is not None and call.answer.status_code == 200
    await wait_for(lambda: len(call.packets) > 10, "media flowing")
    await device.stop()
    await asyncio.wait_for(call.bye_received.wait(), 10)


async def test_h265_recording_is_declared_0x24_and_plays(
    platform: Platform, scripted_clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SimulatedClock(now_ms() - 600_000)
    h265_store = open_store(tmp_path / "h265", clock)
    try:
        await asyncio.to_thread(
            run_script, h265_store, scripted_clips, clock, [Connection("h265", seconds=14)]
        )
        rec = recorded(h265_store, "cam")
        seg0 = h265_store.segments("cam")[0]
        start_s = seg0.start_ms // 1000 + 3
        end_s = start_s + 9
        device, _ = await start_device(platform, h265_store, monkeypatch)
        try:
            call = await platform.invite(CH_LIVE, "Download", start_s=start_s, end_s=end_s, speed=4)
            assert call.answer is not None and call.answer.status_code == 200
            assert await media_status(platform) == "121"
            await call.bye()
        finally:
            await device.stop()
        ps = call.ps()
        # the PSM (00 00 01 BC) declares stream type 0x24 (H.265) for stream 0xE0
        psm = ps.index(b"\x00\x00\x01\xbc")
        assert ps[psm + 12 : psm + 14] == b"\x24\xe0"
        codec, got, decoded = received(call, tmp_path)
        assert codec == "hevc"
        assert decoded == len(got)
        check_range(got, rec, start_s * 1000, end_s * 1000)
    finally:
        h265_store.close()


async def test_mansrtsp_pause_play_and_scale(
    platform: Platform, store: SegmentStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rec = recorded(store, "h264aac")
    seg0 = store.segments("h264aac")[0]
    start_s = seg0.start_ms // 1000 + 2
    end_s = start_s + 6
    device, sessions = await start_device(platform, store, monkeypatch)
    try:
        call = await platform.invite(CH_H264, "Playback", start_s=start_s, end_s=end_s)
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: len(call.packets) > 5, "media flowing")
        [session] = sessions.sessions.values()
        res = await call.info("PAUSE RTSP/1.0\r\nCSeq: 1\r\nPauseTime: now\r\n")
        assert res.status_code == 200 and session.pace.paused
        res = await call.info("PLAY RTSP/1.0\r\nCSeq: 2\r\nScale: 4.0\r\nRange: npt=now-\r\n")
        assert res.status_code == 200
        assert not session.pace.paused and session.pace.scale == 4.0
        res = await call.info("PLAY RTSP/1.0\r\nCSeq: 3\r\nScale: 16\r\n")
        assert res.status_code == 200 and session.pace.scale == 4.0  # clamped to 0.25-4
        res = await call.info("TEARDOWN RTSP/1.0\r\nCSeq: 4\r\n")
        assert res.status_code == 400
        assert await media_status(platform) == "121"
        await call.bye()
    finally:
        await device.stop()
    # paused and resumed, nothing lost or repeated
    _, got, decoded = received(call, tmp_path)
    assert decoded == len(got)
    check_range(got, rec, start_s * 1000, end_s * 1000)


@pytest.mark.slow  # real time: the device notices the silence by 3 missed keepalives
async def test_a_lost_platform_ends_its_streams(
    platform: Platform, store: SegmentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seg0 = store.segments("h264aac")[0]
    device, sessions = await start_device(platform, store, monkeypatch, keepalive_seconds=1)
    try:
        call = await platform.invite(
            CH_H264, "Playback", start_s=seg0.start_ms // 1000, end_s=seg0.start_ms // 1000 + 30
        )
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: len(call.packets) > 10, "media flowing")
        platform.silent = True  # the network to the platform is lost
        await wait_for(lambda: not sessions.sessions, "the stream ended", 60)
        assert not device.status.registered
        # the platform is back: the device registers again, the old stream stays ended
        platform.silent = False
        await wait_for(lambda: device.status.registered, "registered again", 60)
        assert not sessions.sessions
        assert call.invite is not None
        assert [s.call_id for s in sessions.finished] == [hdr(call.invite, "Call-ID")]
    finally:
        await device.stop()


def publish_all(tap: PacketTap, frames: list[TapFrame]) -> None:
    for frame in frames:
        tap.publish(frame)


def tap_frames(keys: list[bool]) -> list[TapFrame]:
    stream = TapStream("h264", 16, 16, b"", Fraction(1, 90_000))
    return [
        TapFrame(
            stream,
            b"\x00\x00\x00\x01" + bytes([0x65 if k else 0x41, i]),
            k,
            i * 3600,
            i * 3600,
            3600,
            0.0,
        )
        for i, k in enumerate(keys)
    ]


@pytest.mark.parametrize(("limit", "first"), [(60, 5), (3, 10)])
async def test_live_starts_with_the_current_gop(limit: int, first: int) -> None:
    """A live stream gets the camera's current GOP at once (keyframe 5 and what followed),
    then every later frame, none twice; a GOP longer than the cache's limit is not kept
    (the stream starts at the next keyframe, 10)."""
    tap = PacketTap("cam")
    cache = GopCache(tap, limit=limit)
    frames = tap_frames([i in (0, 5, 10) for i in range(14)])
    await asyncio.to_thread(publish_all, tap, frames[:9])  # as the recorder's thread does
    live = LiveSource(cache)
    await asyncio.to_thread(publish_all, tap, frames[9:])
    live.close()
    got = [f.data[-1] async for f in live.frames()]
    assert got == list(range(first, 14))
    cache.close()
    assert tap.subscribers == 0


@pytest.mark.slow  # real time: registration refused, then lost by 3 missed keepalives
async def test_live_audio_comes_with_the_gop_and_follows() -> None:
    """A live stream from the GOP cache gets the audio published since the GOP's keyframe,
    then the later audio, in the order the recorder wrote it, G.711 as it came, on the
    video's 90 kHz timeline; video frames name the stream's audio from the first one on."""
    tap = PacketTap("cam")
    cache = GopCache(tap)
    video = tap_frames([i in (0, 5) for i in range(10)])
    alaw = TapAudioStream("pcm_alaw", 8000, 1, b"", Fraction(1, 8000))

    def sound(i: int) -> TapAudioFrame:
        # 20 ms packets; packet i at i * 160 ticks = i * 1800 at 90 kHz (a frame is 3600)
        return TapAudioFrame(alaw, bytes([0xD5, i]) * 80, i * 160, 160, 0.0)

    def feed(frames: list[TapFrame], first_sound: int) -> None:
        for n, frame in enumerate(frames):
            tap.publish(frame)
            for k in range(2):
                tap.publish_audio(sound(first_sound + 2 * n + k))

    await asyncio.to_thread(feed, video[:7], 0)  # frames 0-6, sound 0-13
    live = LiveSource(cache)
    assert live.audio_codec == "pcm_alaw"
    await asyncio.to_thread(feed, video[7:], 14)
    live.close()
    got = [f async for f in live.frames()]
    cache.close()
    assert tap.subscribers == 0 and tap.audio_subscribers == 0
    # from keyframe 5 (90 kHz 18000, sent as 9000): its frames and sound 10-19 in order
    assert [(f.audio, f.data[-1]) for f in got] == [
        (a, x) for n in range(5, 10) for a, x in [(False, n), (True, 2 * n), (True, 2 * n + 1)]
    ]
    for f in got:
        if f.audio:
            assert f.audio_codec == "pcm_alaw" and len(f.data) == 160
            assert f.pts == f.data[-1] * 1800 - 18000 + 9000
        else:
            assert f.audio_codec == "pcm_alaw"
            assert f.dts == f.data[-1] * 3600 - 18000 + 9000


async def test_gop_cache_only_while_registered(
    store: SegmentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GOP cache makes the recorder build a tap frame for every packet, so a channel's
    tap has a subscriber only while the platform can ask for live: none before the device
    registers, one while registered, none once the platform stops answering, none after
    stop; a camera not offered to the platform is never subscribed."""
    platform = Platform(SERVER, DOMAIN, PASSWORD, silent=True)
    await platform.start()
    monkeypatch.setenv("GB_MEDIA_PASSWORD", PASSWORD)
    config = gb_config(platform, "GB_MEDIA_PASSWORD")
    device = GbDevice(
        config,
        [ChannelConfig("cam", CH_LIVE, "live")],
        store,
        lambda c: True,
        bind_host="127.0.0.1",
    )
    taps = {"cam": PacketTap("cam"), "other": PacketTap("other")}
    device.media = Sessions(device, store, taps.__getitem__, store.audit.append)
    assert not taps["cam"].wanted
    await device.start()
    try:
        await wait_for(lambda: "REGISTER" in platform.ignored, "an unanswered REGISTER")
        assert not device.status.registered and not taps["cam"].wanted
        platform.silent = False
        await asyncio.wait_for(platform.registered.wait(), 30)
        await wait_for(lambda: device.status.registered, "registered")
        assert taps["cam"].all_wanted and taps["cam"].audio_wanted
        assert not taps["other"].wanted and not taps["other"].audio_wanted
        platform.silent = True  # network loss: keepalives go unanswered
        await wait_for(lambda: not device.status.registered, "offline", within=60)
        assert not taps["cam"].wanted and not taps["cam"].audio_wanted
        platform.silent = False
        await wait_for(lambda: device.status.registered, "registered again", within=60)
        assert taps["cam"].all_wanted
    finally:
        await device.stop()
        await platform.close()
    assert not taps["cam"].wanted and not taps["other"].wanted
    assert not taps["cam"].audio_wanted


@pytest.mark.parametrize("form", ["npt", "clock"])
async def test_mansrtsp_range_seeks(
    platform: Platform,
    store: SegmentStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    form: str,
) -> None:
    """PLAY with `Range: npt=20-`, or the same instant as clock time (`clock=<UTC>-`, RFC
    2326 absolute time), jumps to 20 s after the playback's start (from the keyframe at or
    before it): what follows is the recording from there to the end, with timestamps still
    going forward; the 14 s skipped are never sent."""
    rec = recorded(store, "h264aac")
    seg0 = store.segments("h264aac")[0]
    start_s = seg0.start_ms // 1000 + 2
    end_s = start_s + 24
    if form == "npt":
        value = "npt=20-"
    else:
        at = datetime.fromtimestamp(start_s + 20, UTC)
        value = f"clock={at:%Y%m%dT%H%M%S}Z-"
    device, _ = await start_device(platform, store, monkeypatch)
    try:
        call = await platform.invite(CH_H264, "Playback", start_s=start_s, end_s=end_s)
        assert call.answer is not None and call.answer.status_code == 200
        await wait_for(lambda: len(call.packets) > 5, "media flowing")
        res = await call.info(f"PLAY RTSP/1.0\r\nCSeq: 1\r\nRange: {value}\r\n")
        assert res.status_code == 200
        assert await media_status(platform) == "121"
        await call.bye()
    finally:
        await device.stop()
    _, got, decoded = received(call, tmp_path)
    assert decoded == len(got)
    first = max(i for i, r in enumerate(rec) if r[2] and r[3] <= start_s * 1000)
    sought = max(i for i, r in enumerate(rec) if r[2] and r[3] <= (start_s + 20) * 1000)
    last = max(i for i, r in enumerate(rec) if r[3] < end_s * 1000)
    tail = rec[sought : last + 1]
    k = len(got) - len(tail)
    assert 0 < k < (sought - first) // 2, (k, sought - first)  # over 10 s never sent
    assert [g[0] for g in got[:k]] == [r[0] for r in rec[first : first + k]]
    assert [g[0] for g in got[k:]] == [r[0] for r in tail]
    assert got[k][1] > max(p for _, p in got[:k])  # timestamps go on forward


def test_range_values() -> None:
    """MANSRTSP `Range` as a playback starting at 1 700 000 000 s reads it (Unix ms)."""
    start = 1_700_000_000_000
    assert range_start_ms("npt=20-", start) == start + 20_000
    assert range_start_ms("npt=2.5-7", start) == start + 2_500
    assert range_start_ms("npt=now-", start) is None
    assert range_start_ms("", start) is None
    # 2023-11-14T22:13:20Z is 1 700 000 000 s
    assert range_start_ms("clock=20231114T221340Z-", start) == start + 20_000
    assert range_start_ms("clock=20231114T221340.250Z-20231114T221400Z", start) == start + 20_250
    for bad in ("npt=abc-", "clock=20231114T221340-", "clock=2023-11-14-", "smpte=0:10:00-", "x"):
        with pytest.raises(ValueError):
            range_start_ms(bad, start)


@given(
    st.integers(-(2**40), 2**40),
    st.integers(1, 10**6),
    st.sampled_from([1, 1000, 8000, 16000, 44100, 48000, 90000, 30000, 12800]),
)
def test_to_90k_truncates_as_fractions_do(ticks: int, num: int, den: int) -> None:
    """The integer conversion of the live path gives what `int(Fraction)` gave."""
    tb = Fraction(num, den)
    assert to_90k(ticks, tb) == int(ticks * tb * 90_000)
