"""The packet tap (`nvr.ingest.tap`): live view and picture checks get exactly the access units
the recorder wrote, from the recorder's own packets. A scripted camera on a simulated clock
(tests/scripted.py) records with subscribers attached; what they received is compared with
the recorded files reopened by PyAV, and decoded on its own."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from nvr.ingest.tap import PacketTap, TapFrame
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
