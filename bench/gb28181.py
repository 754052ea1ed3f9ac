"""GB/T 28181 benchmark: what the device interface costs a recording daemon.

1. A camera simulator (`tests.camsim.CameraSim`, GStreamer's RTSP server on 127.0.0.1) serves
   `--cameras` mounts ``camNN=hd4m`` (H.264 1280x720, 25 fps, ~4 Mbit/s, pre-encoded).
2. ``nvr run -c FILE`` (a subprocess) records them, with a ``[gb28181]`` table pointing at
   the in-repo platform (`tests.gbsim.Platform`, in this process, UDP on 127.0.0.1).
3. Once registered and with `--history` seconds recorded per camera: the daemon's CPU over
   `--window` seconds with no stream (baseline); then `--live` live INVITEs (one per camera)
   and `--playbacks` playback INVITEs of recorded footage, each timed from sending the INVITE
   to the first RTP packet received; then the daemon's CPU over the same window with them
   all streaming. CPU per channel = (with - baseline) / channels, in % of one core.
4. Recording gaps: outages in the ledger during the run (before the daemon is stopped), and
   every stream's PS checked to decode with PyAV (`format="mpeg"`).

Run: ``python -m bench.gb28181 [--cameras 8] [--live 8] [--playbacks 2] [--window 30]``.
Runs on the main thread's event loop; the daemon and the camera simulator are children.
Numbers are printed (the machine's load matters: note it with them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from bench.proc import proc_cpu
from nvr.storage import SegmentStore
from tests.camsim import CameraSim, gst_rtsp_unavailable
from tests.camsim.clips import make_clips
from tests.gbsim import MediaCall, Platform

REPO = Path(__file__).resolve().parent.parent
DEVICE = "50010000001110000001"
SERVER = "50010000002000000001"
DOMAIN = "5001000000"
PASSWORD = "bench-gb-password"


def write_config(path: Path, root: Path, sip_port: int, urls: dict[str, str]) -> None:
    (path.parent / "gb.pw").write_text(PASSWORD + "\n", encoding="utf-8")
    lines = [
        f'log_level = "warning"\n[storage]\nroot = "{root}"\nreserve_bytes = 0\n',
        f'[gb28181]\ndevice_id = "{DEVICE}"\ndomain = "{DOMAIN}"\nserver_id = "{SERVER}"\n'
        f'server_host = "127.0.0.1"\nserver_port = {sip_port}\n'
        f'password_file = "{path.parent / "gb.pw"}"\nlocal_port = 0\nkeepalive_seconds = 10\n'
        f"cameras = {json.dumps(list(urls))}\n",
    ]
    for name, url in urls.items():
        lines.append(f'[[cameras]]\nname = "{name}"\nurl = "{url}"\nsegment_seconds = 10\n')
    path.write_text("\n".join(lines), encoding="utf-8")


def index_view(root: Path, cameras: list[str]) -> tuple[dict[str, int], int]:
    """Recorded ms per camera and outages of all cameras."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        recorded = {c: sum(s.duration_ms for s in store.segments(c)) for c in cameras}
        outages = sum(len(store.ledger.outages(c)) for c in cameras)
        return recorded, outages
    finally:
        store.close()


def first_segment_start(root: Path, camera: str) -> int:
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    try:
        return store.segments(camera)[0].start_ms
    finally:
        store.close()


def decodes(call: MediaCall, path: Path) -> int:
    path.write_bytes(call.ps())
    with av.open(str(path), format="mpeg") as container:
        return sum(1 for _ in container.decode(video=0))


async def until(cond: object, what: str, within: float) -> None:
    assert callable(cond)
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def first_rtp(call: MediaCall, sent: float, within: float = 10.0) -> float:
    deadline = time.monotonic() + within
    while not call.packets:
        if time.monotonic() > deadline:
            return float("nan")
        await asyncio.sleep(0.001)
    return (call.first_packet_at or time.monotonic()) - sent


async def run(args: argparse.Namespace) -> None:
    reason = gst_rtsp_unavailable()
    if reason is not None:
        raise SystemExit(f"camera simulator unavailable: {reason}")
    clips = Path(os.environ.get("NVR_CAMSIM_CLIPS", Path.home() / ".cache" / "nvr-camsim"))
    make_clips(clips)
    work = Path(tempfile.mkdtemp(prefix="nvr-bench-gb28181-"))
    root = work / "store"
    names = [f"cam{i:02d}" for i in range(args.cameras)]
    platform = Platform(SERVER, DOMAIN, PASSWORD)
    await platform.start()
    with CameraSim(clips, mounts=[f"{n}=hd4m" for n in names]) as sim:
        cfg = work / "nvr.toml"
        write_config(cfg, root, platform.port, {n: sim.url(n) for n in names})
        log = await asyncio.to_thread((work / "daemon.log").open, "ab")
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nvr.cli",
            "run",
            "-c",
            str(cfg),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        calls: list[MediaCall] = []
        try:
            print(f"recording {args.cameras} cameras; waiting for registration ...")
            await asyncio.wait_for(platform.registered.wait(), 60)
            await until(
                lambda: (
                    (root / "index.db").exists()
                    and min(index_view(root, names)[0].values()) >= args.history * 1000
                ),
                f"{args.history} s recorded per camera",
                args.history + 120,
            )
            _, outages_before = await asyncio.to_thread(index_view, root, names)
            cpu0 = proc_cpu(daemon.pid)
            await asyncio.sleep(args.window)
            base = (proc_cpu(daemon.pid) - cpu0) / args.window
            print(f"daemon CPU without streams: {base * 100:.1f} % of a core")

            channels = {n: f"5001000000131{i + 1:07d}" for i, n in enumerate(names)}
            live_ms: list[float] = []
            for i, name in enumerate(names[: args.live]):
                sent = time.monotonic()
                call = await platform.invite(channels[name], "Play", ssrc=f"01{i:08d}")
                assert call.answer is not None and call.answer.status_code == 200, name
                calls.append(call)
                live_ms.append(await first_rtp(call, sent) * 1000)
            playback_ms: list[float] = []
            for i, name in enumerate(names[: args.playbacks]):
                start_s = first_segment_start(root, name) // 1000 + 1
                sent = time.monotonic()
                call = await platform.invite(
                    channels[name],
                    "Playback",
                    start_s=start_s,
                    end_s=start_s + args.history - 2,
                    ssrc=f"11{i:08d}",
                )
                assert call.answer is not None and call.answer.status_code == 200, name
                calls.append(call)
                playback_ms.append(await first_rtp(call, sent) * 1000)
            cpu1 = proc_cpu(daemon.pid)
            await asyncio.sleep(args.window)
            loaded = (proc_cpu(daemon.pid) - cpu1) / args.window
            streams = len(calls)
            _, outages_after = await asyncio.to_thread(index_view, root, names)
            for call in calls:
                await call.bye()
            frames = [
                await asyncio.to_thread(decodes, c, work / f"s{i}.ps") for i, c in enumerate(calls)
            ]
        finally:
            daemon.send_signal(signal.SIGTERM)
            await asyncio.wait_for(daemon.wait(), 60)
            log.close()
            await platform.close()
    per = (loaded - base) / streams * 100 if streams else float("nan")
    print(f"daemon CPU with {streams} streams: {loaded * 100:.1f} % of a core")
    print(f"CPU per channel: {per:.2f} % of a core (target < 1 %)")
    print(
        f"INVITE to first RTP, live: median {statistics.median(live_ms):.0f} ms, "
        f"max {max(live_ms):.0f} ms (target < 300)"
    )
    if playback_ms:
        print(
            f"INVITE to first RTP, playback: median {statistics.median(playback_ms):.0f} ms, "
            f"max {max(playback_ms):.0f} ms (target < 500)"
        )
    print(f"recording outages while streaming: {outages_after - outages_before}")
    print(f"frames decoded per stream (PyAV, format=mpeg): {frames}")
    print(f"load average: {os.getloadavg()}; cores: {os.cpu_count()}")
    if args.keep:
        print(f"kept {work}")
    else:
        await asyncio.to_thread(shutil.rmtree, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--live", type=int, default=8)
    parser.add_argument("--playbacks", type=int, default=2)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--history", type=int, default=25, help="seconds recorded first")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
