"""Live view (issue 17) against a daemon recording loopback GStreamer cameras: WHEP with an
aiortc client (no browser) gets the camera's H.264, decoded by PyAV (aiortc's decoder), not
black; DELETE ends it; a viewer without the camera gets 403; every viewing and refusal is in
the audit log. The MSE WebSocket's init segment and fragments decode with PyAV. An H.265
camera is transcoded to H.264 at reduced size, and past the budget sent as keyframe JPEGs."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.camsim import CameraSim
from tests.live_rig import LiveDaemon, WhepViewer, live_daemon, whep_connect
from tests.recording_rig import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, camsim_clips: Path) -> Iterator[LiveDaemon]:
    clips = camsim_clips
    tmp = tmp_path_factory.mktemp("live")
    with (
        CameraSim(clips) as sim,
        live_daemon(
            tmp,
            sim,
            {"cam": "h264", "hevc": "h265", "hevc2": "h265", "masked": "h264"},
            api_extra="max_transcodes = 1\nmax_live_viewers = 2",
            substreams={"cam": "hd4m"},  # told apart by its size: 1280x720
            masked=("masked",),
        ) as d,
    ):
        yield d


def not_black(picture: np.ndarray) -> bool:
    """The test clips are moving colour patterns: bright on average and not uniform."""
    return float(picture.mean()) > 20 and float(picture.std()) > 5


def audit(c: httpx.Client, action: str, camera: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = c.get(
        "/api/audit", params={"action": action, "target": camera}
    ).json()
    return rows


async def _whep_session(daemon: LiveDaemon, stream: str = "main") -> WhepViewer:
    headers = {"Authorization": f"Bearer {daemon.token('vic')}"}
    async with httpx.AsyncClient(base_url=daemon.base, headers=headers, timeout=30) as c:
        viewer = await whep_connect(c, "cam", stream)
        assert isinstance(viewer, WhepViewer), viewer.text
        try:
            assert viewer.mode == "passthrough"
            assert viewer.location.startswith("/api/cameras/cam/whep/")
            assert "H264/90000" in viewer.answer and "VP8" not in viewer.answer
            assert "127.0.0.1" in viewer.answer
            for _ in range(200):
                if len(viewer.frames) >= 30:
                    break
                await asyncio.sleep(0.1)
            assert len(viewer.frames) >= 30, f"{len(viewer.frames)} frames in 20 s"
            r = await c.delete(viewer.location)
            assert r.status_code == 200, r.text
            await asyncio.wait_for(viewer.ended.wait(), 30)
            again = await c.delete(viewer.location)
            assert again.status_code == 404
        finally:
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()
    return viewer


def test_whep_plays_the_cameras_h264(daemon: LiveDaemon) -> None:
    viewer = asyncio.run(_whep_session(daemon))
    pictures = [f.to_ndarray(format="gray") for f in viewer.frames[-10:]]
    assert (viewer.frames[-1].width, viewer.frames[-1].height) == (640, 360)
    assert all(not_black(p) for p in pictures)
    moved = [float(np.abs(a.astype(int) - b).mean()) for a, b in itertools.pairwise(pictures)]
    assert max(moved) > 0.5, "the picture does not move"
    with daemon.client() as c:

        def ended() -> bool:
            return any(r["actor"] == "vic" for r in audit(c, "live-end", "cam"))

        wait_for(ended, 10, "the end of the viewing in the audit log")
        (start,) = [r for r in audit(c, "live", "cam") if r["actor"] == "vic"]
        assert start["outcome"] == "ok"
        end = next(r for r in audit(c, "live-end", "cam") if r["actor"] == "vic")
        detail = end["detail"]
        assert isinstance(detail, dict)
        assert detail["via"] == "webrtc" and detail["end_ms"] > detail["start_ms"]
        assert detail["session"] in viewer.location


def test_viewer_without_the_camera_gets_403(daemon: LiveDaemon) -> None:
    with daemon.client("vic") as c:
        r = c.post(
            "/api/cameras/hevc/whep",
            content="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
            headers={"Content-Type": "application/sdp"},
        )
        assert r.status_code == 403, r.text
        r = c.post("/api/cameras/cam/whep", content="v=0", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(_mse(daemon, "hevc", "vic", 1))
    assert refused.value.response.status_code == 403
    with daemon.client() as c:
        refusals = [r for r in audit(c, "live", "hevc") if r["outcome"] == "refused"]
        assert {r["actor"] for r in refusals} == {"vic"}
        assert {r["detail"]["via"] for r in refusals} == {"webrtc", "mse"}  # type: ignore[index]


async def _mse(
    daemon: LiveDaemon,
    camera: str,
    user: str,
    fragments: int,
    opened: asyncio.Event | None = None,
    hold: asyncio.Event | None = None,
    subprotocol: bool = False,
    stream: str = "main",
) -> tuple[dict[str, object], dict[str, str], list[bytes]]:
    """Watch `camera` over the MSE WebSocket: the head, the handshake's headers, the init
    segment and `fragments` messages. `opened` is set once the head came; the socket stays
    open until `hold` is set."""
    url = daemon.base.replace("http://", "ws://") + f"/api/cameras/{camera}/live?stream={stream}"
    token = daemon.token(user)
    # A browser cannot set Authorization on a WebSocket: it offers the token as a subprotocol.
    headers = {} if subprotocol else {"Authorization": f"Bearer {token}"}
    offered = [Subprotocol("nvr-live"), Subprotocol(f"bearer.{token}")] if subprotocol else None
    async with websockets.connect(
        url, additional_headers=headers, subprotocols=offered, max_size=None
    ) as ws:
        response = ws.response
        assert response is not None
        assert ws.subprotocol == ("nvr-live" if subprotocol else None)
        head = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if opened is not None:
            opened.set()
        messages: list[bytes] = []
        while len(messages) < fragments + 1:
            message = await asyncio.wait_for(ws.recv(), 20)
            assert isinstance(message, bytes)
            messages.append(message)
        if hold is not None:
            await asyncio.wait_for(hold.wait(), 60)
        return head, dict(response.headers), messages


def _decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), "r") as container:
        return [f for p in container.demux(video=0) for f in p.decode()]


def test_mse_websocket_sends_fragmented_mp4(daemon: LiveDaemon) -> None:
    head, headers, messages = asyncio.run(_mse(daemon, "cam", "vic", 4, subprotocol=True))
    assert headers["x-live-mode"] == "passthrough"
    assert head["mode"] == "passthrough"
    assert str(head["mime"]).startswith('video/mp4; codecs="avc1.64')
    init, *fragments = messages
    assert init[4:8] == b"ftyp" and b"moov" in init
    assert all(f[4:8] == b"moof" for f in fragments)
    frames = _decode(b"".join(messages))
    # The first fragment is sent at once: the hub's cached keyframe (then the next GOP), or
    # the GOP so far (then its rest); then whole GOPs of 10.
    assert len(frames) >= 30
    assert all(not_black(f.to_ndarray(format="gray")) for f in frames[-5:])
    with daemon.client() as c:

        def ended() -> bool:
            rows = audit(c, "live-end", "cam")
            return any(r["detail"]["via"] == "mse" for r in rows)  # type: ignore[index]

        wait_for(ended, 10, "the end of the MSE viewing in the audit log")


def test_h265_camera_is_transcoded_then_snapshots_past_the_budget(daemon: LiveDaemon) -> None:
    async def both() -> tuple[
        tuple[dict[str, object], dict[str, str], list[bytes]],
        tuple[dict[str, object], dict[str, str], list[bytes]],
    ]:
        opened, hold = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(_mse(daemon, "hevc", "admin", 3, opened, hold))
        await asyncio.wait_for(opened.wait(), 30)
        try:  # the transcode of `hevc` holds the budget of one meanwhile
            second = await _mse(daemon, "hevc2", "admin", 2)
        finally:
            hold.set()
        return await first, second

    (head, headers, messages), (shead, sheaders, jpegs) = asyncio.run(both())
    assert headers["x-live-mode"] == "transcode" and head["mode"] == "transcode"
    assert str(head["mime"]).startswith('video/mp4; codecs="avc1.')
    frames = _decode(b"".join(messages))
    assert len(frames) >= 20
    assert frames[-1].height <= 360
    assert not_black(frames[-1].to_ndarray(format="gray"))
    assert sheaders["x-live-mode"] == "snapshot" and shead["mime"] == "image/jpeg"
    for jpeg in jpegs:
        assert jpeg[:2] == b"\xff\xd8"
        with av.open(io.BytesIO(jpeg), "r", format="image2pipe") as container:
            (picture,) = [f for p in container.demux(video=0) for f in p.decode()]
        assert isinstance(picture, av.VideoFrame)
        assert not_black(picture.to_ndarray(format="gray"))


def test_substream_is_pulled_for_stream_sub_and_not_recorded(daemon: LiveDaemon) -> None:
    viewer = asyncio.run(_whep_session(daemon, "sub"))
    last = viewer.frames[-1]
    assert (last.width, last.height) == (1280, 720)
    assert not_black(last.to_ndarray(format="gray"))
    head, _headers, messages = asyncio.run(_mse(daemon, "cam", "vic", 2, stream="sub"))
    assert head["stream"] == "sub" and head["mode"] == "passthrough"
    frames = _decode(b"".join(messages))
    assert frames and (frames[-1].width, frames[-1].height) == (1280, 720)
    with daemon.client() as c:
        assert sorted(cam["name"] for cam in c.get("/api/cameras").json()) == [
            "cam",
            "hevc",
            "hevc2",
            "masked",
        ]
    with av.open(str(next((daemon.root / "cam").rglob("*.mp4"))), "r") as recorded:
        video = recorded.streams.video[0]
        assert (video.width, video.height) == (640, 360)  # the main stream only


async def _whep_frames(daemon: LiveDaemon, camera: str, count: int) -> WhepViewer:
    headers = {"Authorization": f"Bearer {daemon.token()}"}
    async with httpx.AsyncClient(base_url=daemon.base, headers=headers, timeout=30) as c:
        viewer = await whep_connect(c, camera)
        assert isinstance(viewer, WhepViewer), viewer.text
        try:
            for _ in range(200):
                if len(viewer.frames) >= count:
                    break
                await asyncio.sleep(0.1)
            await c.delete(viewer.location)
        finally:
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()
    return viewer


def test_privacy_masks_are_filled_in_live_view_for_a_masked_user(daemon: LiveDaemon) -> None:
    """R10: `admin` may not see behind masks (the default): live view is a masked transcode,
    the left half black, the right half the camera's picture."""
    viewer = asyncio.run(_whep_frames(daemon, "masked", 20))
    assert viewer.mode == "transcode"
    assert len(viewer.frames) >= 20
    picture = viewer.frames[-1].to_ndarray(format="gray")
    width = picture.shape[1]
    assert float(picture[:, : width // 2 - 8].max()) <= 40  # black (with coding noise)
    assert not_black(picture[:, width // 2 + 8 :])
    head, headers, messages = asyncio.run(_mse(daemon, "masked", "admin", 2))
    assert headers["x-privacy-masks"] == "1" and head["mode"] == "transcode"
    frames = _decode(b"".join(messages))
    picture = frames[-1].to_ndarray(format="gray")
    assert float(picture[:, : width // 2 - 8].max()) <= 40
    with daemon.client() as c:
        rows = [r for r in audit(c, "live", "masked") if r["outcome"] == "ok"]
        assert rows and all(r["detail"]["privacy_masks"] == 1 for r in rows)  # type: ignore[index]


def test_past_the_viewer_cap_is_503_with_the_reason(daemon: LiveDaemon) -> None:
    async def three() -> httpx.Response:
        opened = [asyncio.Event(), asyncio.Event()]
        hold = asyncio.Event()
        held = [
            asyncio.create_task(_mse(daemon, "cam", "admin", 0, opened[i], hold)) for i in (0, 1)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 30)
            headers = {"Authorization": f"Bearer {daemon.token()}"}
            async with httpx.AsyncClient(base_url=daemon.base, headers=headers) as c:
                refused = await whep_connect(c, "cam")
        finally:
            hold.set()
            await asyncio.gather(*held)
        assert isinstance(refused, httpx.Response)
        return refused

    refused = asyncio.run(three())
    assert refused.status_code == 503
    assert "max_live_viewers" in refused.json()["detail"]
    assert refused.headers["retry-after"]


def test_a_session_ends_when_the_peer_goes_away(daemon: LiveDaemon) -> None:
    """No DELETE: the viewer closes its peer connection; the daemon ends the session."""

    async def leave() -> str:
        headers = {"Authorization": f"Bearer {daemon.token()}"}
        async with httpx.AsyncClient(base_url=daemon.base, headers=headers, timeout=30) as c:
            viewer = await whep_connect(c, "cam")
            assert isinstance(viewer, WhepViewer), viewer.text
            for _ in range(200):
                if viewer.frames:
                    break
                await asyncio.sleep(0.1)
            assert viewer.frames
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()
            session = viewer.location.rsplit("/", 1)[1]
            for _ in range(600):  # a DELETE would end it itself: watch the audit log
                ends = (await c.get("/api/audit", params={"action": "live-end"})).json()
                if any(r["detail"]["session"] == session for r in ends):
                    break
                await asyncio.sleep(0.1)
            assert (await c.delete(viewer.location)).status_code == 404  # already ended
            return viewer.location

    location = asyncio.run(leave())
    with daemon.client() as c:
        ends = [r for r in audit(c, "live-end", "cam") if r["detail"]["session"] in location]  # type: ignore[index]
        assert len(ends) == 1
        assert "peer connection" in str(ends[0]["detail"]["reason"])  # type: ignore[index]
