"""Live view benchmark (issue 17): latency from a packet's arrival at the daemon to the frame
decoded by a viewer, for WebRTC (WHEP) and the MSE WebSocket; time from request to first
frame; the daemon's CPU per live viewer.

How it is measured:

1. **Latency and first frame** (one process). A camera simulator (`tests.camsim`, GStreamer's
   RTSP server on 127.0.0.1) serves ``hd4m`` (H.264 1280x720, 25 fps, ~4.1 Mbit/s, a keyframe
   a second). In this process a recorder (`Supervisor`, the daemon's own) records it and the
   API serves it (`serve_api` with the supervisor's packet taps), as `nvr run` does. A probe
   subscribed to the camera's tap notes each packet's `TapFrame.arrival` (monotonic clock,
   taken when our RTSP client has the access unit) by its pts.
   - WebRTC: an aiortc client (`tests.live_rig.whep_connect`, ICE on 127.0.0.1) decodes the
     stream (aiortc's PyAV decoder); a frame's latency is the monotonic time when `recv()`
     returns it decoded minus its packet's arrival. Frames are matched to packets by RTP
     timestamp (the sender's random offset is found as the one that matches most frames);
     the GOP sent at joining (older than live by design) is left out.
   - MSE: a `websockets` client; each fragment is decoded with PyAV on arrival; a frame's
     latency is the time its fragment was received and decoded minus its packet's arrival.
     A fragment carries a whole GOP, so a GOP's first frame waits a GOP's length.
   - First frame ("click to first frame"): from the start of the request (the WHEP offer's
     creation, the WebSocket's connect) to the first decoded frame. "cold": nobody watched
     the camera for longer than the hub's linger (`LINGER_SECONDS`, 30 s; the bench waits it
     out before each cold run), so the hub holds only the latest keyframe, which is sent at
     once as a still (WebRTC: the first packet; MSE: the first fragment, flushed at once);
     "warm": a hub holding the current GOP (another viewer, or one in the last 30 s), whose
     frames go out at once. ``--cold-rounds`` cold runs per path, alternating.
2. **CPU per viewer**: `nvr run` in a child process records ``hd4m``; its CPU time
   (utime + stime of all its threads, /proc) over ``--seconds`` with no viewer, then with
   ``--viewers`` WebRTC viewers, then as many MSE viewers (the clients run in this process).

3. **Load** (``--load``, the issue's load case; replaces 1 and 2): `nvr run` in a child
   process records ``--cameras`` (32) camsim cameras (each ``hd4m``, 10 s segments) with
   ``NOTIFY_SOCKET`` pointing at a listener in this process (`tests.notify.NotifyListener`)
   and ``WATCHDOG_USEC`` of 2 s (so the daemon pings every second and systemd would kill it
   past 2 s). After ``--warmup`` seconds, ``--webrtc`` (8) aiortc WHEP viewers (on different
   cameras) and ``--playbacks`` (4) clients playing the last 30 s of a camera's
   `recording.mp4` over and over (fetched at the pace of playing it, 10 s buffered ahead, as
   a browser does) run together for ``--seconds``. Reported: frames the
   viewers decoded and MP4 bytes fetched; the daemon's CPU; the largest interval between
   ``WATCHDOG=1`` pings during the load (target <= 2 s); recording gaps of every camera from
   the index and the outage ledger after the daemon stopped (holes between consecutive
   segments longer than one frame, 40 ms, and ledger rows other than ``daemon-stopped``,
   over the whole run; target 0).

The machine is shared with other jobs: numbers are from a loaded 2-core machine. Results are
printed and written into the section "Live view" of docs/benchmarks.md (between generated
markers; ``--load`` prints only). Run: ``python -m bench.live [--seconds 20] [--viewers 2]
[--rounds 5] [--cold-rounds 3]``, or ``python -m bench.live --load [--seconds 60]
[--cameras 32] [--webrtc 8] [--playbacks 4]``. Runs on the main thread (an asyncio loop);
the recorder and the camera simulator on their threads and processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import av
import httpx
import websockets

from bench.docs import publish
from nvr.api.live.hub import LINGER_SECONDS
from nvr.api.server import serve_api
from nvr.config import CameraConfig, NvrConfig, StorageConfig
from nvr.config.models import ApiConfig
from nvr.ingest.supervisor import Supervisor
from nvr.ingest.tap import TapFrame
from nvr.storage import SegmentStore
from tests.api_rig import NVR, PASSWORD, add_admin, free_port, open_index
from tests.camsim import CameraSim
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir
from tests.live_rig import WhepViewer, live_daemon, whep_connect
from tests.notify import NotifyListener

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
SECTION = "## Live view: latency, first frame, cost per viewer"
BEGIN = "<!-- bench.live: generated by `python -m bench.live`; edit outside the markers -->"
END = "<!-- /bench.live -->"
WRAP = 1 << 32


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latencies(pts: list[int], times: list[float], server: dict[int, float]) -> list[float]:
    """Per-frame latency, client frames matched to the server's packets by timestamp. The
    client's timestamps differ from the server's by an unknown constant (mod 2^32); frames
    are evenly spaced, so many constants match about as many frames: the true one is the one
    where no frame is decoded before its packet arrived, with the smallest delays."""
    if not times:
        return []
    votes: Counter[int] = Counter()
    known = [p for p, t in server.items() if times[0] - 5 <= t <= times[-1]]
    for c in pts[-25:]:
        for s in known:
            votes[(c - s) % WRAP] += 1
    if not votes:
        return []
    best: list[float] = []
    top = votes.most_common(1)[0][1]
    for const, count in votes.most_common():
        if count < 0.8 * top:
            break
        out = []
        for p, t in zip(pts, times, strict=True):
            arrival = server.get((p - const) % WRAP)
            if arrival is not None:
                out.append(t - arrival)
        if (
            out
            and min(out) >= -0.002
            and (not best or statistics.median(out) < statistics.median(best))
        ):
            best = out
    return best


class Probe:
    """Arrivals by pts, from the camera's tap (recorder thread: a dict store only)."""

    def __init__(self) -> None:
        self.arrival: dict[int, float] = {}

    def __call__(self, frame: TapFrame) -> None:
        self.arrival[frame.pts % WRAP] = frame.arrival


async def webrtc_round(
    base: str, token: str, seconds: float, probe: Probe
) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        start = time.monotonic()
        viewer = await whep_connect(c, "cam")
        if not isinstance(viewer, WhepViewer):
            raise SystemExit(f"WHEP refused: {viewer.status_code} {viewer.text}")
        try:
            await asyncio.sleep(seconds)
            if not viewer.arrivals:
                raise SystemExit("no WebRTC frame")
            first = viewer.arrivals[0] - start
            pts = [int(f.pts or 0) % WRAP for f in viewer.frames]
            lat = latencies(pts, viewer.arrivals, probe.arrival)
        finally:
            await c.delete(viewer.location)
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()
    return first, lat


async def webrtc_first(base: str, token: str) -> float:
    """Seconds from the WHEP offer to the first decoded frame."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        start = time.monotonic()
        viewer = await whep_connect(c, "cam")
        if not isinstance(viewer, WhepViewer):
            raise SystemExit(f"WHEP refused: {viewer.status_code} {viewer.text}")
        try:
            try:
                await asyncio.wait_for(viewer.decoding.wait(), 10)
            except TimeoutError:
                raise SystemExit("no WebRTC frame within 10 s") from None
            return viewer.arrivals[0] - start
        finally:
            await c.delete(viewer.location)
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()


async def mse_first(base: str, token: str) -> float:
    """Seconds from the WebSocket's connect to its first fragment decoded."""
    url = base.replace("http://", "ws://") + "/api/cameras/cam/live"
    start = time.monotonic()
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        await ws.recv()  # the JSON head
        init = await asyncio.wait_for(ws.recv(), 10)
        fragment = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(init, bytes) and isinstance(fragment, bytes)
        with av.open(io.BytesIO(init + fragment), "r") as container:
            decoded = [f for p in container.demux(video=0) for f in p.decode()]
        if not decoded:
            raise SystemExit("the first MSE fragment decoded to nothing")
        return time.monotonic() - start


async def mse_round(
    base: str, token: str, seconds: float, probe: Probe
) -> tuple[float, list[float]]:
    url = base.replace("http://", "ws://") + "/api/cameras/cam/live"
    start = time.monotonic()
    first: float | None = None
    pts: list[int] = []
    times: list[float] = []
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        await ws.recv()  # the JSON head
        init = await ws.recv()
        assert isinstance(init, bytes)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fragment = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(fragment, bytes)
            with av.open(io.BytesIO(init + fragment), "r") as container:
                stream = container.streams.video[0]
                tb = stream.time_base
                assert tb is not None
                got = []
                for packet in container.demux(stream):
                    if packet.pts is None:
                        continue
                    packet.decode()
                    got.append(round(packet.pts * tb * 90_000))
            now = time.monotonic()
            if first is None:
                first = now - start
            pts += [p % WRAP for p in got]
            times += [now] * len(got)
    assert first is not None
    return first, latencies(pts, times, probe.arrival)


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {pct(ms, 0.95):.0f} | "
        f"{max(ms):.0f} |"
    )


async def in_process(args: argparse.Namespace, clips: Path, tmp: Path) -> list[str]:
    port = free_port()
    out: list[str] = []
    with CameraSim(clips, mounts=["hd4m"]) as sim:
        config = NvrConfig(
            storage=StorageConfig(root=tmp / "data"),
            cameras=[CameraConfig(name="cam", url=sim.url("hd4m"), segment_seconds=60)],
            api=ApiConfig(listen=f"127.0.0.1:{port}", webrtc_addresses=("127.0.0.1",)),
        )
        root = config.storage.root
        store = await asyncio.to_thread(SegmentStore, root, config.storage.index_url())
        await asyncio.to_thread(
            store.accounts.add_user, "admin", "admin", PASSWORD, cameras=["*"], actor="bench"
        )
        supervisor = Supervisor(config, store)
        supervisor.start()
        probe = Probe()
        supervisor.tap("cam").subscribe(probe)
        api = serve_api(config, store, supervisor, taps=supervisor.tap)
        assert api is not None
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                for _ in range(300):
                    try:
                        r = await c.post(
                            "/api/login", json={"username": "admin", "password": PASSWORD}
                        )
                        if r.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                token = r.json()["token"]
            for _ in range(300):  # until it records
                if len(probe.arrival) >= 50:
                    break
                await asyncio.sleep(0.2)
            firsts: dict[str, list[float]] = {"webrtc": [], "mse": []}
            lat: dict[str, list[float]] = {"webrtc": [], "mse": []}
            cold: dict[str, list[float]] = {"webrtc": [], "mse": []}
            for i in range(args.cold_rounds):
                for kind, first_frame in (("webrtc", webrtc_first), ("mse", mse_first)):
                    if i or kind != "webrtc":  # nobody watched yet before the first
                        await asyncio.sleep(LINGER_SECONDS + 2)  # the hub lets go
                    cold[kind].append(await first_frame(base, token))
            # From here on the hub holds the current GOP: each round starts within its linger.
            for _ in range(args.rounds):
                f, values = await webrtc_round(base, token, args.seconds, probe)
                firsts["webrtc"].append(f)
                lat["webrtc"] += values
            for _ in range(args.rounds):
                f, values = await mse_round(base, token, args.seconds, probe)
                firsts["mse"].append(f)
                lat["mse"] += values
            out.append("| path | frames | median ms | p95 ms | max ms |")
            out.append("|---|---|---|---|---|")
            out.append(summary("WebRTC (WHEP, aiortc client)", lat["webrtc"]))
            out.append(summary("MSE WebSocket (fragment per GOP)", lat["mse"]))
            out.append("")
            out.append("| first frame | runs | median ms | p95 ms | max ms |")
            out.append("|---|---|---|---|---|")
            out.append(summary("WebRTC, cold (latest keyframe held)", cold["webrtc"]))
            out.append(summary("WebRTC, warm (current GOP held)", firsts["webrtc"]))
            out.append(summary("MSE, cold (latest keyframe held)", cold["mse"]))
            out.append(summary("MSE, warm (current GOP held)", firsts["mse"]))
        finally:
            await api.close()
            await supervisor.stop(grace=10.0)
            await asyncio.to_thread(store.close)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hold_viewers(base: str, token: str, kind: str, n: int, seconds: float, pid: int) -> float:
    """Daemon CPU (share of a core) while `n` viewers of `kind` watch for `seconds`."""
    stop = asyncio.Event()
    ready = asyncio.Semaphore(0)

    async def webrtc() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
            viewer = await whep_connect(c, "cam")
            assert isinstance(viewer, WhepViewer)
            for _ in range(300):
                if viewer.frames:
                    break
                await asyncio.sleep(0.1)
            ready.release()
            while not stop.is_set():
                # Decoded frames are not kept: 720p frames of a 20 s sample would fill
                # gigabytes of this process's memory.
                viewer.frames.clear()
                viewer.arrivals.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            await c.delete(viewer.location)
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()

    async def mse() -> None:
        url = base.replace("http://", "ws://") + "/api/cameras/cam/live"
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
        ) as ws:
            await ws.recv()
            await ws.recv()
            ready.release()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    pass

    tasks = [asyncio.create_task(webrtc() if kind == "webrtc" else mse()) for _ in range(n)]
    for _ in range(n):
        await ready.acquire()
    await asyncio.sleep(2)
    before, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    used = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
    stop.set()
    await asyncio.gather(*tasks)
    return used


async def cpu(args: argparse.Namespace, clips: Path, tmp: Path) -> list[str]:
    with CameraSim(clips, mounts=["hd4m"]) as sim, live_daemon(tmp, sim, {"cam": "hd4m"}) as d:
        token = d.token()
        await asyncio.sleep(5)
        before, t0 = cpu_seconds(d.proc.pid), time.monotonic()
        await asyncio.sleep(args.seconds)
        idle = (cpu_seconds(d.proc.pid) - before) / (time.monotonic() - t0)
        n = args.viewers
        w = await hold_viewers(d.base, token, "webrtc", n, args.seconds, d.proc.pid)
        await asyncio.sleep(35)  # the hub lets the tap go 30 s after its last viewer
        m = await hold_viewers(d.base, token, "mse", n, args.seconds, d.proc.pid)
    return [
        "| daemon recording hd4m | CPU (% of a core) | per viewer |",
        "|---|---|---|",
        f"| no viewer | {idle * 100:.1f} | |",
        f"| {n} WebRTC viewers | {w * 100:.1f} | {(w - idle) / n * 100:.1f} |",
        f"| {n} MSE viewers | {m * 100:.1f} | {(m - idle) / n * 100:.1f} |",
    ]


LOAD_WATCHDOG_USEC = 2_000_000
PLAYBACK_AHEAD_S = 10.0
PLAYBACK_BYTES_PER_S = 4_100_000 / 8
"""hd4m's bitrate: a playback client fetches at the pace of playing it."""
FRAME_MS = 40


async def login(base: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        r = await c.post("/api/login", json={"username": "admin", "password": PASSWORD})
        r.raise_for_status()
        token: str = r.json()["token"]
        return token


async def load_viewer(base: str, token: str, camera: str, stop: asyncio.Event) -> int:
    """One WHEP viewer of `camera` until `stop`: the frames it decoded (not kept: 720p
    frames of 8 viewers would fill the memory)."""
    headers = {"Authorization": f"Bearer {token}"}
    frames = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        viewer = await whep_connect(c, camera)
        if not isinstance(viewer, WhepViewer):
            raise SystemExit(f"WHEP {camera} refused: {viewer.status_code} {viewer.text}")
        try:
            while not stop.is_set():
                frames += len(viewer.frames)
                viewer.frames.clear()
                viewer.arrivals.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            frames += len(viewer.frames)
        finally:
            await c.delete(viewer.location)
            await viewer.pc.close()
            if viewer.task is not None:
                viewer.task.cancel()
    return frames


async def load_playback(base: str, token: str, camera: str, stop: asyncio.Event) -> int:
    """Play the last 30 s of `camera` as one MP4 over and over until `stop`, fetched at the
    pace of playing it (a browser's buffer ahead); the bytes fetched."""
    headers = {"Authorization": f"Bearer {token}"}
    got = 0
    began = time.monotonic()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
        while not stop.is_set():
            end = int(time.time() * 1000) - 15_000
            params = {"start": str(end - 30_000), "end": str(end)}
            async with c.stream("GET", f"/api/cameras/{camera}/recording.mp4", params=params) as r:
                if r.status_code == 429:  # the user's other plays are being prepared
                    await r.aread()
                    wait = float(r.headers.get("retry-after", "1"))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
                    continue  # as a player does: ask again after Retry-After
                if r.status_code not in (200, 206):
                    await r.aread()
                    raise SystemExit(f"playback {camera}: {r.status_code} {r.text[:200]}")
                async for chunk in r.aiter_bytes():
                    got += len(chunk)
                    # Played in real time (hd4m's bitrate), clip after clip, with up to
                    # PLAYBACK_AHEAD_S buffered, as a browser does.
                    played = got / PLAYBACK_BYTES_PER_S
                    ahead = played - (time.monotonic() - began) - PLAYBACK_AHEAD_S
                    if ahead > 0 and not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), ahead)
                    if stop.is_set():
                        break
    return got


def recording_gaps(root: Path, cams: Sequence[str]) -> list[str]:
    """Index holes longer than one frame and outages other than `daemon-stopped`."""
    store = open_index(root)
    try:
        out = []
        for cam in cams:
            segs = store.segments(cam)
            if not segs:
                out.append(f"{cam}: nothing recorded")
            out += [
                f"{cam}: hole of {b.start_ms - a.end_ms} ms"
                for a, b in itertools.pairwise(segs)
                if b.start_ms - a.end_ms > FRAME_MS
            ]
            out += [
                f"{cam}: {o.cause} ({(o.duration_ms or 0) / 1000:.1f} s): {o.detail}"
                for o in store.ledger.outages(cam, 0)
                if o.cause != "daemon-stopped"
            ]
        return out
    finally:
        store.close()


async def load(args: argparse.Namespace, clips: Path, tmp: Path) -> str:
    cams = [f"cam{i:02d}" for i in range(args.cameras)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    root = tmp / "data"
    cfg = tmp / "nvr.toml"
    manager = NotifyListener(f"@nvr-bench-live-{uuid.uuid4().hex}")
    with CameraSim(clips, mounts=[f"{c}=hd4m" for c in cams]) as sim:
        cfg.write_text(
            f'[storage]\nroot = "{root}"\n'
            f'[api]\nlisten = "127.0.0.1:{port}"\nwebrtc_addresses = ["127.0.0.1"]\n'
            f"max_live_viewers = {args.webrtc + 4}\n"
            + "".join(
                f'[[cameras]]\nname = "{c}"\nurl = "{sim.url(c)}"\nsegment_seconds = 10\n'
                for c in cams
            )
        )
        await asyncio.to_thread(add_admin, cfg)
        env = dict(
            os.environ,
            NOTIFY_SOCKET=manager.address,
            WATCHDOG_USEC=str(LOAD_WATCHDOG_USEC),
        )
        env.pop("WATCHDOG_PID", None)
        log = tmp / "daemon.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 (started once, returns at once)
                [*NVR, "run", "-c", str(cfg)], cwd=tmp, stdout=out, stderr=out, env=env
            )
        try:
            for _ in range(600):
                if proc.poll() is not None:
                    raise SystemExit(f"nvr exited: {log.read_text()[-2000:]}")
                try:
                    token = await login(base)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            else:
                raise SystemExit("the daemon's API never answered")
            await asyncio.sleep(args.warmup)  # all cameras recording, first segments closed
            stop = asyncio.Event()
            t0, cpu0 = time.monotonic(), cpu_seconds(proc.pid)
            viewers = [
                asyncio.create_task(load_viewer(base, token, cams[i % len(cams)], stop))
                for i in range(args.webrtc)
            ]
            plays = [
                asyncio.create_task(
                    load_playback(base, token, cams[(args.webrtc + i) % len(cams)], stop)
                )
                for i in range(args.playbacks)
            ]
            await asyncio.sleep(args.seconds)
            stop.set()
            frames = await asyncio.gather(*viewers)
            fetched = await asyncio.gather(*plays)
            t1, cpu1 = time.monotonic(), cpu_seconds(proc.pid)
            if proc.poll() is not None:
                raise SystemExit(f"nvr exited during the load: {log.read_text()[-2000:]}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    pings = manager.times("WATCHDOG=1", t0, t1)
    manager.close()
    edges = [t0, *pings, t1]
    widest = max(b - a for a, b in itertools.pairwise(edges))
    gaps = await asyncio.to_thread(recording_gaps, root, cams)
    # A missing ping is either the loop held up or the daemon withholding it on purpose
    # (a recorder without progress for the watchdog's 2 s): the log says which.
    withheld = [
        line.split("pings (systemd will restart the daemon): ", 1)[-1]
        for line in log.read_text(errors="replace").splitlines()
        if "withholding watchdog pings" in line
    ]
    seconds = t1 - t0
    lines = [
        f"Command: `python -m bench.live --load --seconds {args.seconds:g} --cameras "
        f"{args.cameras} --webrtc {args.webrtc} --playbacks {args.playbacks}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}; load average at the end "
        f"{os.getloadavg()[0]:.1f}. {args.cameras} cameras `hd4m` (H.264 1280x720, 25 fps, "
        "~4.1 Mbit/s) from the loopback RTSP simulator, recorded by `nvr run`; the viewers, "
        "playback clients and simulator run beside it on the same machine.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| load duration | {seconds:.0f} s | |",
        f"| WebRTC frames decoded (all {args.webrtc} viewers) | {sum(frames)} "
        f"({sum(frames) / seconds / max(1, args.webrtc):.1f} fps per viewer) | 25 fps |",
        f"| playback MP4 fetched ({args.playbacks} clients) | {sum(fetched) / 1e6:.0f} MB | |",
        f"| daemon CPU | {(cpu1 - cpu0) / seconds * 100:.0f} % of a core | |",
        f"| WATCHDOG=1 pings | {len(pings)}, largest interval {widest:.2f} s | <= 2 s |",
        f"| times the daemon withheld its pings (a recorder without progress for 2 s) | "
        f"{len(withheld)} | |",
        f"| recording gaps (holes + outages, whole run) | {len(gaps)} | 0 |",
    ]
    lines += [f"- {g}" for g in gaps[:20]]
    lines += [f"- pings withheld: {w[:300]}" for w in withheld[:5]]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> str:
    clips = clips_cache_dir(Path(tempfile.gettempdir()) / "camsim-clips")
    make_clips(clips)
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        lines = await in_process(args, clips, Path(tmp) / "a")
        lines += [""]
        (Path(tmp) / "b").mkdir()
        lines += await cpu(args, clips, Path(tmp) / "b")
    head = [
        f"Command: `python -m bench.live --seconds {args.seconds:g} --viewers {args.viewers} "
        f"--rounds {args.rounds} --cold-rounds {args.cold_rounds}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other agents' "
        f"builds and tests during the run (loaded), Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d}. Camera: `hd4m` (H.264 1280x720, 25 fps, ~4.1 Mbit/s, "
        "a keyframe a second) from the loopback RTSP simulator. Latency: packet arrival at "
        "the daemon (`TapFrame.arrival`) to the frame decoded in a viewer in the same process "
        "(monotonic clock); see the module docstring of `bench/live.py`.",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per round / CPU sample")
    p.add_argument("--viewers", type=int, default=2, help="viewers for the CPU sample")
    p.add_argument("--rounds", type=int, default=5, help="viewings per path")
    p.add_argument(
        "--cold-rounds", type=int, default=3, help="cold first frames per path (31 s apart)"
    )
    p.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--load", action="store_true", help="the load case only (prints; no doc)")
    p.add_argument("--cameras", type=int, default=32, help="--load: cameras recording")
    p.add_argument("--webrtc", type=int, default=8, help="--load: WebRTC viewers")
    p.add_argument("--playbacks", type=int, default=4, help="--load: playback clients")
    p.add_argument("--warmup", type=float, default=25.0, help="--load: seconds before load")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        with tempfile.TemporaryDirectory(prefix="bench-live-load-") as tmp:
            clips = clips_cache_dir(Path(tempfile.gettempdir()) / "camsim-clips")
            make_clips(clips)
            print(asyncio.run(load(args, clips, Path(tmp))))
        return 0
    body = asyncio.run(run(args))
    publish(body, DOC, SECTION, BEGIN, END, write=not args.no_doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
