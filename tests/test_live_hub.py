"""Live view's parts on real frames, without a network (fast): what a scripted camera's
recorder hands its packet tap (tests/scripted.py, simulated clock) goes through a `LiveHub`
(a new viewer starts at the latest keyframe; a viewer that falls behind resumes at the next
keyframe; the tap is released when nobody watches), the MSE muxer (fragments that PyAV
decodes, parameter sets put back from avcC extradata for a camera that sends them only out
of band) and the H.265 snapshot (a JPEG at reduced size, privacy masks filled)."""

from __future__ import annotations

import asyncio
import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from nvr.api.live.annexb import h264_type, nal_units, parameter_sets, with_parameter_sets
from nvr.api.live.fmp4 import Fmp4Muxer
from nvr.api.live.hub import LiveHub
from nvr.api.live.transcode import keyframe_jpeg
from nvr.config.models import PrivacyMask
from nvr.ingest.tap import PacketTap, TapFrame, TapStream
from nvr.storage import now_ms
from tests.scripted import Connection, SimulatedClock, open_store, run_script


def recorded(clips: Path, tmp: Path, clip: str, seconds: int = 5) -> list[TapFrame]:
    clock = SimulatedClock(now_ms())
    store = open_store(tmp / clip, clock)
    tap = PacketTap("cam")
    frames: list[TapFrame] = []
    tap.subscribe(frames.append)
    try:
        run_script(store, clips, clock, [Connection(clip, seconds=seconds)], tap=tap)
    finally:
        store.close()
    return frames


async def turn() -> None:
    """Let the loop run the hand-overs queued with call_soon_threadsafe."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_viewer_starts_at_the_latest_keyframe_and_skips_to_one_when_behind(
    scripted_clips: Path, tmp_path: Path
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h264")
    assert len(frames) == 50 and frames[0].keyframe
    tap = PacketTap("cam")
    hub = LiveHub("cam", tap, asyncio.get_running_loop(), linger_s=0.0)
    early = hub.join(limit=4)  # falls behind: 4 frames of room
    assert tap.subscribers == 1
    for f in frames[:34]:
        tap.publish(f)
    await turn()
    late = hub.join()
    got = [await asyncio.wait_for(late.get(), 5) for _ in range(late.backlog)]
    latest_key = max(i for i, f in enumerate(frames[:34]) if f.keyframe)
    assert got == frames[latest_key:34]
    assert got[0] is not None and got[0].keyframe
    # The early viewer's queue overflowed: it kept only what came after a keyframe.
    kept = [await asyncio.wait_for(early.get(), 5) for _ in range(4)]
    assert kept == frames[latest_key : latest_key + 4]
    assert early.dropped > 0
    early.close()
    late.close()
    await asyncio.sleep(0.01)  # the linger (0 s here) ends
    assert tap.subscribers == 0


def test_fmp4_fragments_decode_with_parameter_sets_from_avcc(
    scripted_clips: Path, tmp_path: Path
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h264")
    key = frames[0]
    nals = nal_units(key.data)
    sps = next(n for n in nals if h264_type(n) == 7)
    pps = next(n for n in nals if h264_type(n) == 8)
    avcc = (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + bytes([1])
        + len(pps).to_bytes(2, "big")
        + pps
    )
    assert parameter_sets("h264", avcc) == [sps, pps]
    # A camera that sends its parameter sets only in the SDP: none in band.
    stream = TapStream("h264", key.stream.width, key.stream.height, avcc, key.stream.time_base)
    bare = [
        TapFrame(
            stream,
            b"".join(
                b"\x00\x00\x00\x01" + n for n in nal_units(f.data) if h264_type(n) not in (7, 8)
            ),
            f.keyframe,
            f.pts,
            f.dts,
            f.duration,
            f.arrival,
        )
        for f in frames
    ]
    assert h264_type(nal_units(with_parameter_sets("h264", bare[0].data, avcc))[0]) == 7
    mux = Fmp4Muxer(bare[0])
    assert mux.mime == f'video/mp4; codecs="avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"'
    messages = [m for f in bare for m in mux.add(f)]
    mux.close()
    assert messages[0][4:8] == b"ftyp" and all(m[4:8] == b"moof" for m in messages[1:])
    assert len(messages) == 1 + 4  # init, then each complete GOP (the fifth is not closed yet)
    with av.open(io.BytesIO(b"".join(messages)), "r") as container:
        pictures = [p for packet in container.demux(video=0) for p in packet.decode()]
    assert len(pictures) == 40


@pytest.mark.parametrize("masked", [False, True])
def test_an_h265_keyframe_becomes_a_jpeg_with_masks_filled(
    scripted_clips: Path, tmp_path: Path, masked: bool
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h265", seconds=2)
    key = frames[-1] if frames[-1].keyframe else next(f for f in frames if f.keyframe)
    assert key.stream.codec == "hevc"
    masks = [PrivacyMask(points=[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)])]
    jpeg, w, h = keyframe_jpeg(key, masks if masked else [], max_height=180)
    assert (w, h) == (320, 180)
    with av.open(io.BytesIO(jpeg), "r", format="image2pipe") as container:
        (picture,) = [p for packet in container.demux(video=0) for p in packet.decode()]
    assert isinstance(picture, av.VideoFrame)
    gray = picture.to_ndarray(format="gray")
    assert gray.shape == (180, 320)
    left, right = gray[:, : w // 2 - 8], gray[:, w // 2 + 8 :]
    assert float(np.mean(right)) > 20
    assert (float(left.max()) <= 40) == masked


async def test_a_cold_hub_gives_a_new_viewer_the_cached_keyframe_then_the_next_gop(
    scripted_clips: Path, tmp_path: Path
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h264")
    keys = [i for i, f in enumerate(frames) if f.keyframe]
    assert len(keys) >= 3
    tap = PacketTap("cam")
    hub = LiveHub("cam", tap, asyncio.get_running_loop(), linger_s=0.0, keep_keyframe=True)
    # Nobody watches: only the keyframes-only subscription, which builds keyframes only.
    assert tap.subscribers == 1 and not tap.wants(False) and tap.wants(True)
    mid = keys[1] + 3  # the camera is mid-GOP when the viewer clicks
    for f in frames[:mid]:
        if tap.wants(f.keyframe):
            tap.publish(f)
    await turn()
    assert hub.keyframe is frames[keys[1]]  # one keyframe kept, the latest
    viewer = hub.join()
    assert tap.subscribers == 2
    first = await viewer.first(0.0)  # at once, without a new frame from the camera
    assert first is frames[keys[1]]
    for f in frames[mid:]:
        tap.publish(f)
    await turn()
    got = [await asyncio.wait_for(viewer.get(), 5) for _ in range(1 + len(frames) - keys[2])]
    assert got[0] is frames[keys[1]]
    assert got[1:] == frames[keys[2] :]  # never the P-frames after the cached keyframe
    assert got[1] is not None and got[1].keyframe
    # All of it decodes, in this order, without a decoder error.
    ctx = av.CodecContext.create("h264", "r")
    pictures = 0
    for g in got:
        assert g is not None
        packet = av.Packet(g.data)
        packet.pts = g.pts
        pictures += len(ctx.decode(packet))
    pictures += len(ctx.decode(None))
    assert pictures == len(got)
    viewer.close()
    await asyncio.sleep(0.01)
    assert tap.subscribers == 1  # the keyframe subscription stays: the hub stays warm
    hub.close()
    assert tap.subscribers == 0 and hub.keyframe is None


def test_fmp4_flush_sends_a_first_picture_at_once_and_the_stream_continues(
    scripted_clips: Path, tmp_path: Path
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h264")
    keys = [i for i, f in enumerate(frames) if f.keyframe]
    mux = Fmp4Muxer(frames[0])
    # Without a flush the keyframe's fragment waits for the next packet (FFmpeg's muxer).
    assert [m[4:8] for m in mux.add(frames[0])] == [b"ftyp"]
    (still,) = mux.flush()
    assert still[4:8] == b"moof"
    with av.open(io.BytesIO(mux_init(frames[0]) + still), "r") as container:
        (picture,) = [p for packet in container.demux(video=0) for p in packet.decode()]
    assert picture.key_frame
    # The camera's next keyframe: a new writer, its init not sent again, its timeline on.
    rest = mux.add_many(frames[keys[1] :], flush=True)
    mux.close()
    assert rest and all(m[4:8] == b"moof" for m in rest)
    with av.open(io.BytesIO(mux_init(frames[0]) + still + b"".join(rest)), "r") as container:
        got = [p for packet in container.demux(video=0) for p in packet.decode()]
    assert len(got) == 1 + len(frames) - keys[1]
    tb = frames[0].stream.time_base
    assert [seconds(p) for p in got] == [
        (f.pts - frames[0].dts) * tb for f in [frames[0], *frames[keys[1] :]]
    ]


def seconds(picture: av.VideoFrame) -> Fraction:
    """A decoded picture's time."""
    assert picture.pts is not None and picture.time_base is not None
    return picture.pts * picture.time_base


def mux_init(first: TapFrame) -> bytes:
    """The init segment a muxer starting at `first` sends."""
    mux = Fmp4Muxer(first)
    (init,) = mux.add(first)
    mux.close()
    return init
