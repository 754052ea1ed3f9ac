"""G.711 audio in GB/T 28181 media: a camera sending G.711 A-law or mu-law over RTSP (the
quirk camera's `pcma`/`pcmu` mounts, the RTSP server of tests/camsim/quirks.py that
test_rtsp_quirks's G.711 case records; the GStreamer camera simulator serves AAC only) is
recorded by a real `CameraRecorder` with its packet tap; the in-repo platform
(tests/gbsim.py) asks for it live (`Play`, from the tap's audio) and recorded (`Download`,
from the segments' QuickTime `alaw`/`ulaw` samples). What the platform received is
reassembled and opened with PyAV's `mpeg` demuxer: an audio stream declared with the right
stream type, whose packets are the camera's (tap) or the recording's (files reopened with
PyAV) bytes, all of them over the range, each at its time against the video.

FFmpeg's PS demuxer reads stream type 0x90 as A-law but knows 0x91 (mu-law) only in
Hikvision's IMKH streams (anything else on 0xC0 is MPEG audio to it): for mu-law the test
checks the PSM declares 0x91, then relabels those PSMs 0x90 in its copy so PyAV hands out the
packets as they are (bytes and timestamps are compared, nothing is decoded as A-law)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest

from nvr.gb28181.ps import PsMuxer
from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.ingest.tap import PacketTap, TapAudioFrame, TapFrame
from nvr.storage import SegmentStore
from tests.camsim.quirks import QuirkServer
from tests.gbsim import MediaCall, Platform, wait_for
from tests.test_gb28181_media import (
    CH_LIVE,
    DOMAIN,
    PASSWORD,
    SERVER,
    media_status,
    nal_units,
    start_device,
)

STREAM_TYPE = {"pcm_alaw": 0x90, "pcm_mulaw": 0x91}


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    async with Platform(SERVER, DOMAIN, PASSWORD) as p:
        yield p


def demuxed(
    call: MediaCall, codec: str, tmp_path: Path
) -> tuple[list[tuple[bytes, int, bool]], list[tuple[bytes, int]]]:
    """([(video AU, pts, keyframe)], [(audio packet, pts)]) of what the platform received, by
    PyAV's `mpeg` demuxer, after checking every PSM declares `codec` on stream 0xC0."""
    ps = bytearray(call.ps())
    want = bytes([STREAM_TYPE[codec], 0xC0])
    psms = 0
    at = ps.find(b"\x00\x00\x01\xbc")
    while at >= 0:
        assert ps[at + 12 : at + 14] == b"\x1b\xe0"  # H.264 on 0xE0
        assert ps[at + 16 : at + 18] == want, bytes(ps[at : at + 24]).hex()
        if codec == "pcm_mulaw":
            ps[at + 16] = 0x90  # see the module docstring
        psms += 1
        at = ps.find(b"\x00\x00\x01\xbc", at + 4)
    assert psms >= 2
    path = tmp_path / f"received-{id(call)}.ps"
    path.write_bytes(bytes(ps))
    with av.open(str(path), format="mpeg") as container:
        [vs], [aus] = container.streams.video, container.streams.audio
        assert aus.codec_context.name == "pcm_alaw"
        video, audio = [], []
        for p in container.demux():
            if not p.size or p.pts is None:
                continue
            if p.stream is vs:
                video.append((bytes(p), p.pts, p.is_keyframe))
            elif p.stream is aus:
                audio.append((bytes(p), p.pts))
    return video, audio


def recorded_audio(store: SegmentStore) -> list[tuple[bytes, float]]:
    """Every recorded audio packet and its wall time in ms (segment start + its time after
    the segment's first video frame), by PyAV."""
    out = []
    for seg in store.segments("cam"):
        with av.open(str(seg.path)) as container:
            v, a = container.streams.video[0], container.streams.audio[0]
            assert v.time_base is not None and a.time_base is not None
            v0 = min(p.dts for p in container.demux(v) if p.size and p.dts is not None)
            container.seek(0)
            for p in container.demux(a):
                if p.size and p.pts is not None:
                    at = float(p.pts * a.time_base - v0 * v.time_base)
                    out.append((bytes(p), seg.start_ms + at * 1000))
    return out


def recorded_keyframes(store: SegmentStore) -> list[float]:
    """The wall times (ms) of every recorded keyframe, by PyAV."""
    out = []
    for seg in store.segments("cam"):
        with av.open(str(seg.path)) as container:
            v = container.streams.video[0]
            assert v.time_base is not None
            v0: int | None = None
            for p in container.demux(v):
                if not p.size or p.dts is None:
                    continue
                v0 = p.dts if v0 is None else v0
                if p.is_keyframe:
                    out.append(seg.start_ms + float((p.dts - v0) * v.time_base) * 1000)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("mount", "codec"), [("pcma", "pcm_alaw"), ("pcmu", "pcm_mulaw")])
async def test_g711_audio_live_and_recorded(
    platform: Platform,
    quirks: QuirkServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mount: str,
    codec: str,
) -> None:
    root = tmp_path / "store"
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    tap = PacketTap("cam")
    video_pub: list[TapFrame] = []
    audio_pub: list[TapAudioFrame] = []
    tap.subscribe(video_pub.append)
    tap.subscribe_audio(audio_pub.append)
    opener = RtspOpener(
        quirks.url(mount), username=None, password=None, transport="tcp", timeout_s=4.0
    )
    recorder = CameraRecorder("cam", opener, store, segment_seconds=10, tap=tap)
    recorder.start()
    device, sessions = await start_device(platform, store, monkeypatch, {"cam": tap})
    try:
        try:
            await wait_for(lambda: len(audio_pub) > 50, "the camera's audio on the tap", 60)
            live = await platform.invite(CH_LIVE, "Play")
            assert live.answer is not None and live.answer.status_code == 200
            # 10 fps video and 50 audio packets a second: about 4 s
            await wait_for(lambda: sum(p.marker for p in live.packets) >= 240, "live media", 60)
            await live.bye()
            published_live = len(video_pub)  # what was published while it ran (under 10 s)
            await wait_for(lambda: not sessions.sessions, "the live stream ended")
            # a file of 8 s or more (committed at 10 s), for a range inside one file
            await wait_for(
                lambda: any(s.end_ms - s.start_ms >= 8000 for s in store.segments("cam")),
                "8 s in one file",
                90,
            )
        finally:
            recorder.stop()
            await asyncio.to_thread(recorder.thread.join, 20)
        segments = store.segments("cam")
        # a range inside one file (a recorder that reconnected on a loaded machine leaves
        # shorter ones): a file's first audio packet reads back at the file's start, see
        # tests/test_tap.py
        whole = [seg for seg in segments if seg.end_ms - seg.start_ms >= 8000]
        assert whole, segments
        start_s = whole[0].start_ms // 1000 + 2
        end_s = start_s + 5
        played = await platform.invite(CH_LIVE, "Download", start_s=start_s, end_s=end_s, speed=4.0)
        assert played.answer is not None and played.answer.status_code == 200
        assert await media_status(platform) == "121"
        await played.bye()
    finally:
        await device.stop()
    assert audio_pub[0].stream.codec == codec

    # Live: the camera's audio packets as the tap published them, a contiguous run of them
    # (none lost, none twice) over the time of the video received, each at its time.
    video, audio = demuxed(live, codec, tmp_path)
    assert video and video[0][2]
    assert len(audio) >= 100, len(audio)
    # which published keyframe the stream began at: its first second of pictures, found once
    # in what the tap published until the stream ended (the clip loops every 10 s, more
    # than that)
    got = [nal_units(d, "h264") for d, _, _ in video[:10]]
    pub = [nal_units(f.data, "h264") for f in video_pub[:published_live]]
    starts = [i for i in range(len(pub)) if pub[i : i + len(got)] == got]
    assert len(starts) == 1, starts
    key = video_pub[starts[0]]
    v0 = key.dts * 90_000 * key.stream.time_base
    # the first audio packet's time names the published packet it must be (the tone's
    # packets repeat, their times do not); from there on bytes and times are the tap's
    at = [
        i
        for i, f in enumerate(audio_pub)
        if abs(f.pts * 90_000 * f.stream.time_base - v0 - (audio[0][1] - video[0][1])) <= 2
    ]
    assert len(at) == 1, (at, audio[0][1] - video[0][1])
    sent = audio_pub[at[0] : at[0] + len(audio)]
    assert [d for d, _ in audio] == [f.data for f in sent]
    for (_, pts), frame in zip(audio, sent, strict=True):
        want = frame.pts * 90_000 * frame.stream.time_base - v0
        assert abs((pts - video[0][1]) - want) <= 2, (pts - video[0][1], float(want))
    # and it is the sound of the pictures received: it starts with them (the GOP's audio,
    # within half a second)
    assert abs(audio[0][1] - video[0][1]) <= 45_000, audio[0][1] - video[0][1]
    audio_s = len(audio) * 0.02
    video_s = (video[-1][1] - video[0][1]) / 90_000
    assert abs(audio_s - video_s) < 1.0, (audio_s, video_s)

    # Recorded: every recorded audio packet from the first keyframe at or before the start
    # to the end, at its recorded time against the video.
    video, audio = demuxed(played, codec, tmp_path)
    try:
        keys = recorded_keyframes(store)
        rec = recorded_audio(store)
    finally:
        store.close()
    first_key = max(k for k in keys if k <= start_s * 1000)
    assert len(audio) >= 5 * 45, len(audio)
    # where the first packet received is in the recording: by its time after the first
    # picture (the tone's packets repeat, their times do not)
    offsets = [(pts - video[0][1]) / 90 for _, pts in audio]
    pos = min(range(len(rec)), key=lambda i: abs(rec[i][1] - (first_key + offsets[0])))
    expect = rec[pos : pos + len(audio)]
    # every recorded packet from there, none lost, none twice, each pos its recorded time
    assert [d for d, _ in audio] == [d for d, _ in expect]
    bad = [
        (i, off, t - first_key)
        for i, (off, (_, t)) in enumerate(zip(offsets, expect, strict=True))
        if abs(off - (t - first_key)) > 1.0
    ]
    assert not bad, bad[:5]
    # over the asked range: from the keyframe pos or before its start to its end, to within
    # one 20 ms packet (a packet pos a boundary falls on either side by float rounding)
    assert -1.0 <= expect[0][1] - first_key < 21.0, (expect[0][1], first_key)
    assert -21.0 <= expect[-1][1] - end_s * 1000 < 1.0, (expect[-1][1], end_s)
    if pos + len(audio) < len(rec):
        assert rec[pos + len(audio)][1] >= end_s * 1000 - 1.0  # the next one was not due


def test_audio_appearing_mid_stream_is_declared_at_the_next_keyframe(tmp_path: Path) -> None:
    """A live stream whose audio shows up after its first keyframe (a bare tap): its audio
    is held back until a keyframe's PSM (a new version) declares it, so a demuxer, which
    fixes a stream's codec at its first PES, reads it as G.711 and not as MPEG audio."""
    muxer = PsMuxer("h264")
    out = [muxer.video(b"\x00\x00\x00\x01\x65\x88", 9000, 9000, True)]
    muxer.audio_codec = "pcm_alaw"
    assert muxer.audio(b"\xd5" * 160, 9000) is None  # not declared yet: dropped
    for i in range(1, 20):
        key = i % 10 == 0
        out.append(
            muxer.video(
                b"\x00\x00\x00\x01" + (b"\x65" if key else b"\x41") + bytes([i]),
                9000 + i * 3600,
                9000 + i * 3600,
                key,
            )
        )
        for k in range(2):
            pack = muxer.audio(bytes([i, k]) * 80, 9000 + i * 3600 + k * 1800)
            assert (pack is None) == (i < 10)
            if pack is not None:
                out.append(pack)
    ps = b"".join(out)
    psms = [at for at in range(len(ps)) if ps.startswith(b"\x00\x00\x01\xbc", at)]
    assert [ps[at + 6] & 0x1F for at in psms] == [0, 1]  # the PSM's version moved on
    assert ps[psms[1] + 16 : psms[1] + 18] == b"\x90\xc0"
    path = tmp_path / "mid.ps"
    path.write_bytes(ps)
    with av.open(str(path), format="mpeg") as container:
        [aus] = container.streams.audio
        assert aus.codec_context.name == "pcm_alaw"
        got = [(bytes(p), p.pts) for p in container.demux(aus) if p.size]
    assert got == [
        (bytes([i, k]) * 80, 9000 + i * 3600 + k * 1800) for i in range(10, 20) for k in range(2)
    ]
