"""Live audio over WebRTC (issue 17): a daemon records a loopback GStreamer camera sending
H.264 with AAC (tests/camsim `h264aac`: a 440 Hz tone, 16 kHz) and one without audio. An
aiortc WHEP client offering audio gets, for the AAC camera, an Opus audio track (AAC cannot
go to a browser over WebRTC) whose frames aiortc's Opus decoder decodes to the camera's tone;
for the silent camera the answer says no audio. The audit entry says which. The MSE WebSocket
asked for audio passes the AAC through as a second fragmented MP4 (tagged messages), which
PyAV decodes to the same tone."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import websockets

from tests.camsim import CameraSim
from tests.live_rig import LiveDaemon, WhepViewer, live_daemon, whep_connect
from tests.recording_rig import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, camsim_clips: Path) -> Iterator[LiveDaemon]:
    clips = camsim_clips
    tmp = tmp_path_factory.mktemp("live-audio")
    with CameraSim(clips) as sim, live_daemon(tmp, sim, {"aac": "h264aac", "mute": "h264"}) as d:
        with d.client() as c:
            # Audio is offered once the camera's recording has it (its first segment).
            wait_for(lambda: _segments(c, "aac") >= 1, 40, "a segment of the AAC camera")
        yield d


def _segments(c: httpx.Client, camera: str) -> int:
    now = int(time.time() * 1000)
    r = c.get(f"/api/cameras/{camera}/timeline", params={"start": now - 3_600_000, "end": now})
    return len(r.json()["spans"]) if r.status_code == 200 else 0


async def _listen(daemon: LiveDaemon, camera: str, frames: int) -> WhepViewer:
    headers = {"Authorization": f"Bearer {daemon.token()}"}
    async with httpx.AsyncClient(base_url=daemon.base, headers=headers, timeout=30) as c:
        viewer = await whep_connect(c, camera, audio=True)
        assert isinstance(viewer, WhepViewer), viewer.text
        try:
            for _ in range(300):
                if len(viewer.frames) >= 20 and len(viewer.sound) >= frames:
                    break
                await asyncio.sleep(0.1)
            await c.delete(viewer.location)
        finally:
            await viewer.pc.close()
            for task in (viewer.task, viewer.sound_task):
                if task is not None:
                    task.cancel()
    return viewer


def test_an_aac_cameras_audio_arrives_as_opus(daemon: LiveDaemon) -> None:
    viewer = asyncio.run(_listen(daemon, "aac", 100))
    assert viewer.audio == "opus"
    audio = viewer.answer[viewer.answer.index("m=audio") :]
    assert "opus/48000" in audio and "a=sendonly" in audio
    assert len(viewer.frames) >= 20
    # aiortc's Opus decoder gave 20 ms frames at 48 kHz: the camera's 440 Hz tone.
    assert len(viewer.sound) >= 100, f"{len(viewer.sound)} audio frames"
    assert {f.sample_rate for f in viewer.sound} == {48_000}
    tail = viewer.sound[-50:]
    samples = np.concatenate(
        [f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in tail]
    )
    samples = samples.astype(np.float64)
    assert float(np.sqrt(np.mean(samples**2))) > 300, "silence"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = float(np.fft.rfftfreq(len(samples), 1 / 48_000)[int(np.argmax(spectrum))])
    assert abs(peak - 440) < 30, peak  # a lost packet under load smears it a little
    with daemon.client() as c:
        rows = c.get("/api/audit", params={"action": "live", "target": "aac"}).json()
    assert any(r["detail"].get("audio") == "opus" for r in rows if r["outcome"] == "ok")


def test_a_camera_without_audio_answers_no_audio(daemon: LiveDaemon) -> None:
    viewer = asyncio.run(_listen(daemon, "mute", 0))
    assert viewer.audio == "none"
    assert len(viewer.frames) >= 20
    assert viewer.sound == []


async def _mse(
    daemon: LiveDaemon, camera: str, audio: int, video: int
) -> tuple[dict[str, object], list[bytes], list[bytes]]:
    """The head, then the audio and video messages (tagged b"a" / b"v") until `audio` and
    `video` of them came."""
    url = daemon.base.replace("http://", "ws://") + f"/api/cameras/{camera}/live?audio=true"
    headers = {"Authorization": f"Bearer {daemon.token()}"}
    heard: list[bytes] = []
    seen: list[bytes] = []
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        head = json.loads(await asyncio.wait_for(ws.recv(), 20))
        while len(heard) < audio or len(seen) < video:
            message = await asyncio.wait_for(ws.recv(), 20)
            assert isinstance(message, bytes)
            if "audio_mime" not in head:
                seen.append(message)
                continue
            assert message[:1] in (b"a", b"v"), message[:8]
            (heard if message[:1] == b"a" else seen).append(message[1:])
    return head, heard, seen


def test_mse_passes_an_aac_cameras_audio_through(daemon: LiveDaemon) -> None:
    head, heard, seen = asyncio.run(_mse(daemon, "aac", 12, 3))
    assert head["audio_mime"] == 'audio/mp4; codecs="mp4a.40.2"'
    assert heard[0][4:8] == b"ftyp" and all(m[4:8] == b"moof" for m in heard[1:])
    with av.open(io.BytesIO(b"".join(heard)), "r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.sample_rate == 16_000
        packets = [p for p in container.demux(stream) if p.size]
        times = [float(p.pts * p.time_base) for p in packets if p.pts is not None]
        frames = [f for p in packets for f in p.decode()]
    assert times == sorted(times) and times[0] >= 0
    samples = np.concatenate([f.to_ndarray()[0] for f in frames[-20:]]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = float(np.fft.rfftfreq(len(samples), 1 / 16_000)[int(np.argmax(spectrum))])
    assert abs(peak - 440) < 30, peak  # a lost packet under load smears it a little
    # The video beside it is the camera's H.264 as before, on the same timeline.
    with av.open(io.BytesIO(b"".join(seen)), "r") as container:
        pictures = [f for p in container.demux(video=0) for f in p.decode()]
    assert pictures and abs(float(pictures[0].time or 0) - 0) < 0.5
    assert abs(times[0] - float(pictures[0].time or 0)) < 2.0


def test_mse_without_audio_asked_or_recorded_is_untagged_video(daemon: LiveDaemon) -> None:
    head, heard, seen = asyncio.run(_mse(daemon, "mute", 0, 2))
    assert "audio_mime" not in head and heard == []
    assert seen[0][4:8] == b"ftyp"
