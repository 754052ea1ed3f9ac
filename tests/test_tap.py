"""The packet tap (`nvr.ingest.tap`): live view and picture checks get exactly the access units
the recorder wrote, from the recorder's own packets. A scripted camera on a simulated clock
(tests/scripted.py) records with subscribers attached; what they received is compared with
the recorded files reopened by PyAV, and decoded on its own."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from nvr.ingest.tap import PacketTap, TapAudioFrame, TapFrame
from nvr.storage import now_ms
from tests.scripted import Connection, SimulatedClock, open_store, run_script


def annexb_nals(data: bytes) -> list[bytes]:
    # A NAL unit never ends in a zero byte: zeros before a start code belong to it.
    return [nal.rstrip(b"\x00") for nal in data.split(b"\x00\x00\x01") if nal.strip(b"\x00")]


def sample_nals(data: bytes) -> list[bytes]:
    nals, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        nals.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return nals


@pytest.mark.parametrize(("clip", "codec"), [("h264", "h264"), ("h265", "hevc")])
def test_subscribers_get_the_recorded_access_units(
    scripted_clips: Path, tmp_path: Path, clip: str, codec: str
) -> None:
    clock = SimulatedClock(now_ms())
    store = open_store(tmp_path / "store", clock)
    tap = PacketTap("cam")
    every: list[TapFrame] = []
    keys: list[TapFrame] = []
    tap.subscribe(every.append)
    tap.subscribe(keys.append, keyframes_only=True)

    def fail(frame: TapFrame) -> None:
        raise RuntimeError("a subscriber's bug")

    broken = tap.subscribe(fail)  # a failing subscriber never stops recording
    try:
        run_script(store, scripted_clips, clock, [Connection(clip, seconds=25)], tap=tap)
        recorded: list[tuple[bytes, bool]] = []
        for seg in store.segments("cam"):
            with av.open(str(seg.path)) as container:
                recorded += [
                    (bytes(p), p.is_keyframe)
                    for p in container.demux(video=0)
                    if p.size  # the demuxer's flush packet
                ]
    finally:
        store.close()
    assert len(recorded) == 250
    # The same NAL units: the source's Annex B, the file's length-prefixed samples.
    assert [(annexb_nals(f.data), f.keyframe) for f in every] == [
        (sample_nals(data), key) for data, key in recorded
    ]
    assert [f.data for f in keys] == [f.data for f in every if f.keyframe]
    assert all(f.keyframe for f in keys) and len(keys) >= 25
    assert {f.stream.codec for f in every} == {codec}
    dts = [f.dts for f in every]
    assert dts == sorted(dts)
    # What a live consumer does with it: a decoder from the tap's stream alone decodes it all.
    first = every[0].stream
    decoder = av.CodecContext.create(first.codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    if first.extradata:
        decoder.extradata = first.extradata
    frames = 0
    for f in every:
        frames += len(decoder.decode(av.Packet(f.data)))
    frames += len(decoder.decode(None))
    assert frames == 250
    assert (decoder.width, decoder.height) == (first.width, first.height)
    broken()
    assert tap.subscribers == 2


def test_nobody_subscribed_builds_nothing() -> None:
    tap = PacketTap("cam")
    assert not tap.wanted and not tap.wants(True)
    stop = tap.subscribe(lambda frame: None, keyframes_only=True)
    assert tap.wants(True) and not tap.wants(False)
    stop()
    assert not tap.wanted and tap.subscribers == 0


def test_audio_subscribers_get_the_recorded_audio_on_the_video_timeline(
    scripted_clips: Path, tmp_path: Path
) -> None:
    clock = SimulatedClock(now_ms())
    store = open_store(tmp_path / "store", clock)
    tap = PacketTap("cam")
    video: list[TapFrame] = []
    audio: list[TapAudioFrame] = []
    order: list[str] = []

    def on_video(frame: TapFrame) -> None:
        video.append(frame)
        order.append("v")

    def on_audio(frame: TapAudioFrame) -> None:
        audio.append(frame)
        order.append("a")

    tap.subscribe(on_video)
    assert not tap.audio_wanted  # a video subscriber alone: the audio path builds nothing
    stop = tap.subscribe_audio(on_audio)
    assert tap.audio_wanted and tap.audio_subscribers == 1
    try:
        run_script(store, scripted_clips, clock, [Connection("h264aac", seconds=25)], tap=tap)
        # per segment: its video frame count and its audio packets (bytes, seconds after the
        # segment's first video dts), reopened from the file
        recorded: list[tuple[int, list[tuple[bytes, float]]]] = []
        for seg in store.segments("cam"):
            with av.open(str(seg.path)) as container:
                a = container.streams.audio[0]
                v = container.streams.video[0]
                dts = [p.dts for p in container.demux(v) if p.size and p.dts is not None]
                container.seek(0)
                packets = [
                    (bytes(p), float(p.pts * a.time_base - min(dts) * v.time_base))
                    for p in container.demux(a)
                    if p.size and p.pts is not None
                ]
                recorded.append((len(dts), packets))
    finally:
        store.close()
    flat = [data for _, seg in recorded for data, _ in seg]
    assert len(flat) > 25 * 15  # 16 kHz AAC: 15.6 frames a second
    assert [f.data for f in audio] == flat
    stream = audio[0].stream
    assert (stream.codec, stream.sample_rate, stream.channels) == ("aac", 16_000, 1)
    assert stream.extradata  # the AudioSpecificConfig: raw frames need it to decode
    # The tap's audio time against the tap's video time is the recording's: for each
    # segment, audio pts minus the segment's first video dts (both in seconds) is where the
    # file puts the packet after its video start.
    assert sum(n for n, _ in recorded) == len(video)
    at_video = at_audio = 0
    for count, seg in recorded:
        first = video[at_video]
        assert first.keyframe
        frames = audio[at_audio : at_audio + len(seg)]
        at_video += count
        at_audio += len(seg)
        # (reopened, a segment's audio track whose first packet starts after the video reads
        # as starting at 0, the difference in that sample's duration: the first packet is
        # checked against its successor)
        for k, (frame, (_, offset)) in enumerate(zip(frames, seg, strict=True)):
            tap_offset = float(
                frame.pts * frame.stream.time_base - first.dts * first.stream.time_base
            )
            if k:
                assert abs(tap_offset - offset) < 0.002, (tap_offset, offset)
            else:
                assert 0 <= tap_offset < seg[1][1]
    pts = [f.pts for f in audio]
    assert pts == sorted(pts)
    assert "a" in order[: order.index("v") + 50]  # interleaved as recorded, not batched
    # decodable from the tap alone
    decoder = av.CodecContext.create("aac", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.extradata = stream.extradata
    samples = sum(fr.samples for f in audio for fr in decoder.decode(av.Packet(f.data)))
    assert samples == len(audio) * 1024
    stop()
    assert not tap.audio_wanted and tap.audio_subscribers == 0
