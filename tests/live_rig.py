"""A recording daemon for the live-view tests and bench/live.py: `nvr run` (a process of its
own) recording loopback GStreamer cameras (tests/camsim) with `[api] webrtc_addresses =
["127.0.0.1"]`, its users made with the CLI; and an aiortc WHEP client (no browser) whose
ICE stays on loopback. Runs on the caller's thread; the WHEP client on its asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from nvr.api.live.webrtc import host_addresses, rtc_configuration
from tests.api_rig import NVR, PASSWORD, add_admin, free_port, nvr
from tests.camsim import CameraSim
from tests.recording_rig import wait_for


@dataclass
class LiveDaemon:
    base: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, user: str = "admin") -> str:
        r = httpx.post(f"{self.base}/api/login", json={"username": user, "password": PASSWORD})
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token

    def client(self, user: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=30
        )


@contextmanager
def live_daemon(
    tmp: Path,
    sim: CameraSim,
    cameras: dict[str, str],
    api_extra: str = "",
    substreams: dict[str, str] | None = None,
    masked: tuple[str, ...] = (),
) -> Iterator[LiveDaemon]:
    """`cameras`: name -> camsim mount; `substreams`: name -> the mount of its `live_url`;
    `masked`: cameras whose left half is a privacy mask. Users: `admin` (masked, the
    default), and `vic` (viewer of the first camera only)."""
    port = free_port()
    cfg = tmp / "nvr.toml"
    subs = substreams or {}
    left_half = (
        "[[cameras.privacy_masks]]\npoints = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]\n"
    )
    cams = "".join(
        f'[[cameras]]\nname = "{n}"\nurl = "{sim.url(m)}"\nsegment_seconds = 10\n'
        + (f'live_url = "{sim.url(subs[n])}"\n' if n in subs else "")
        + (left_half if n in masked else "")
        for n, m in cameras.items()
    )
    cfg.write_text(
        f'[storage]\nroot = "{tmp / "data"}"\n'
        f'[api]\nlisten = "127.0.0.1:{port}"\nwebrtc_addresses = ["127.0.0.1"]\n{api_extra}\n'
        + cams
    )
    add_admin(cfg)
    first = next(iter(cameras))
    made = nvr(
        [
            "user",
            "add",
            "-c",
            str(cfg),
            "vic",
            "--role",
            "viewer",
            "--cameras",
            first,
            "--password-stdin",
        ],
        tmp,
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    log = tmp / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*NVR, "run", "-c", str(cfg)], cwd=tmp, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    daemon = LiveDaemon(base, tmp / "data", proc, log)
    try:
        wait_for(answers, 30, "the daemon's API")
        with daemon.client() as c:

            def recording() -> bool:
                states = {cam["name"]: cam["state"] for cam in c.get("/api/cameras").json()}
                return all(states.get(n) == "recording" for n in cameras)

            wait_for(recording, 40, "the cameras to record")
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class WhepViewer:
    """An aiortc WHEP client: receive-only video, decoded frames collected."""

    pc: RTCPeerConnection
    location: str
    mode: str
    answer: str
    frames: list[av.VideoFrame] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    decoding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first decoded frame."""
    task: asyncio.Task[None] | None = None
    audio: str = ""
    """`X-Live-Audio`: "opus" or "none"."""
    sound: list[av.AudioFrame] = field(default_factory=list)
    """Decoded audio (an offer with audio: `whep_connect(audio=True)`)."""
    sound_task: asyncio.Task[None] | None = None


RECEIVE_BUFFER = 4 << 20


def roomy(pc: RTCPeerConnection) -> None:
    """A 4 MiB receive buffer (the default 208 KiB holds one 720p keyframe) on the client's
    ICE sockets: a Python client busy decoding on a loaded machine otherwise loses packets
    that the server then sends again on NACK, and the server's cost per viewer would count
    the client's losses."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            sock = protocol.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


async def whep_connect(
    client: httpx.AsyncClient, camera: str, stream: str = "main", audio: bool = False
) -> WhepViewer | httpx.Response:
    """Offer, POST, answer; the viewer collects decoded frames (or the refusal); with
    `audio`, the offer asks for audio too and the viewer collects the decoded audio."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    with host_addresses(["127.0.0.1"]):
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
    roomy(pc)
    r = await client.post(
        f"/api/cameras/{camera}/whep",
        params={"stream": stream},
        content=pc.localDescription.sdp,
        headers={"Content-Type": "application/sdp"},
    )
    if r.status_code != 201:
        await pc.close()
        return r
    viewer = WhepViewer(pc, r.headers["location"], r.headers["x-live-mode"], r.text)
    viewer.audio = r.headers.get("x-live-audio", "")
    got: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    heard: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    pc.on("track", lambda t: (heard if t.kind == "audio" else got).put_nowait(t))
    await pc.setRemoteDescription(RTCSessionDescription(r.text, "answer"))
    track = await asyncio.wait_for(got.get(), 10)
    if not heard.empty():
        sound = heard.get_nowait()

        async def listen() -> None:
            with contextlib.suppress(MediaStreamError):
                while True:
                    frame = await sound.recv()
                    assert isinstance(frame, av.AudioFrame)
                    viewer.sound.append(frame)

        viewer.sound_task = asyncio.create_task(listen(), name="whep-listener")

    async def collect() -> None:
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                viewer.frames.append(frame)
                viewer.arrivals.append(time.monotonic())
                viewer.decoding.set()
        except MediaStreamError:  # the sender went away
            viewer.ended.set()

    viewer.task = asyncio.create_task(collect(), name="whep-viewer")
    return viewer
