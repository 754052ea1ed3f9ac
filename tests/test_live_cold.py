"""Cold start of the MSE live view (issue 17): a new viewer's first picture goes out at once
from the hub's cached keyframe, not when the camera sends its next keyframe. A scripted
camera's frames (tests/scripted.py) are published into the packet tap of a real API server
(uvicorn on a thread) by the test itself, so the "camera" can be held between two keyframes
for as long as the test likes: a long GOP. The WebSocket client is `websockets`; what it gets
is decoded with PyAV."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import av
import websockets

from nvr.ingest.tap import PacketTap, TapFrame
from tests.api_rig import run_api
from tests.test_live_hub import recorded, seconds

WAIT_S = 20.0
"""Bound on a hang, not a timing assertion: a viewer that waits for the camera's next
keyframe never gets its first fragment here (the camera is held mid-GOP)."""


async def _watch(
    url: str, token: str, then: Callable[[], None], messages: list[bytes]
) -> dict[str, object]:
    """The head, then the init segment and the first fragment; then `then()` runs (on a
    thread) and two more fragments come."""
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        head: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        while len(messages) < 4:
            if len(messages) == 2:
                await asyncio.to_thread(then)
            message = await asyncio.wait_for(ws.recv(), WAIT_S)
            assert isinstance(message, bytes)
            messages.append(message)
        return head


def _decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), "r") as container:
        return [p for packet in container.demux(video=0) for p in packet.decode()]


def test_mse_starts_a_viewer_from_the_cached_keyframe_mid_gop(
    scripted_clips: Path, users_template: Path, tmp_path: Path
) -> None:
    frames = recorded(scripted_clips, tmp_path, "h264")
    keys = [i for i, f in enumerate(frames) if f.keyframe]
    taps: dict[str, PacketTap] = {}
    tap = taps["h264aac"] = PacketTap("h264aac")
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    serving = contextlib.contextmanager(run_api)
    with serving(root, taps=lambda camera: taps.setdefault(camera, PacketTap(camera))) as api:
        # The hub of each camera keeps a keyframes-only subscription from the start.
        assert tap.subscribers == 1 and not tap.wants(False)
        mid = keys[1] + 4  # the viewer clicks mid-GOP; the camera then sends nothing more
        published: list[TapFrame] = []
        for f in frames[:mid]:
            if tap.wants(f.keyframe):
                tap.publish(f)
                published.append(f)
        assert published == [frames[keys[0]], frames[keys[1]]]
        url = api.base.replace("http://", "ws://") + "/api/cameras/h264aac/live"
        messages: list[bytes] = []

        def camera_goes_on() -> None:
            init, still = messages  # came while the camera was held mid-GOP
            assert init[4:8] == b"ftyp" and still[4:8] == b"moof"
            for f in frames[mid:]:
                tap.publish(f)

        head = asyncio.run(_watch(url, api.login("vera"), camera_goes_on, messages))
        assert head["mode"] == "passthrough"
        init, still, *fragments = messages
        # The first picture is the cached keyframe, decodable on its own.
        (picture,) = _decode(init + still)
        ctx = av.CodecContext.create("h264", "r")
        (alone,) = [*ctx.decode(av.Packet(frames[keys[1]].data)), *ctx.decode(None)]
        assert isinstance(alone, av.VideoFrame)
        assert (picture.to_ndarray(format="gray") == alone.to_ndarray(format="gray")).all()
        # Then the camera's next GOPs on the same timeline, never the P-frames that followed
        # the cached keyframe (their reference pictures were never sent).
        pictures = _decode(init + still + b"".join(fragments))
        tb = frames[0].stream.time_base
        origin = frames[keys[1]].dts
        sent = [frames[keys[1]], *frames[keys[2] : keys[4]]]
        assert [seconds(p) for p in pictures] == [(f.pts - origin) * tb for f in sent]
    assert tap.subscribers == 0
