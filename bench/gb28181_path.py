"""GB/T 28181 live path, in-process: what one live stream costs the daemon's process, without
the camera simulator, the recorders and the platform (whose noise drowns the difference in
bench/gb28181.py on a shared machine).

A publisher thread plays the recorder: it hands `--cameras` packet taps (`nvr.ingest.tap`)
a 25 fps H.264-sized frame each every 40 ms (a 60 kB keyframe every second, 18 kB frames
between, about 4 Mbit/s), through a `GopCache` per camera as the daemon does while
registered. Then `--streams` live streams (`LiveSource` -> `PsMuxer` -> `RtpSender` over
UDP, as `Sessions._stream` runs them) send to a receiver in another process on 127.0.0.1.
The process's CPU (user + system, `getrusage`) over `--window` seconds without streams
and with them: per stream = difference / streams, in % of one core. `--stage handoff` or
`mux` stops each stream after the tap hand-off or after the PS muxer (where the cost is).

Run: ``python -m bench.gb28181_path [--cameras 4] [--streams 4] [--window 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from fractions import Fraction

from nvr.gb28181.media import GopCache, LiveSource
from nvr.gb28181.ps import PsMuxer
from nvr.gb28181.rtp import RtpSender
from nvr.ingest.tap import PacketTap, TapFrame, TapStream

RECEIVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    s.recv(70000)
"""


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def publish(taps: list[PacketTap], stop: threading.Event) -> None:
    """The recorders' side: a frame per camera every 40 ms (on this thread, as theirs)."""
    stream = TapStream("h264", 1280, 720, b"", Fraction(1, 90_000))
    frames = [(os.urandom(60_000 if i % 25 == 0 else 18_000), i % 25 == 0) for i in range(50)]
    i, t0 = 0, time.monotonic()
    while not stop.is_set():
        data, key = frames[i % len(frames)]
        for tap in taps:
            if tap.wants(key):
                tap.publish(TapFrame(stream, bytes(data), key, i * 3600, i * 3600, 3600, 0.0))
        i += 1
        time.sleep(max(0.0, t0 + i * 0.04 - time.monotonic()))


async def live(cache: GopCache, port: int, ssrc: int, stage: str) -> None:
    sender = RtpSender("udp", ("127.0.0.1", port), ssrc, bind_host="127.0.0.1")
    await sender.prepare()
    await sender.open()
    source = LiveSource(cache)
    muxer: PsMuxer | None = None
    try:
        async for frame in source.frames():
            if stage == "handoff":
                continue
            if muxer is None:
                muxer = PsMuxer(source.codec or "h264", frame.audio_codec)
            pack = muxer.video(frame.data, frame.pts, frame.dts, frame.keyframe)
            if stage == "mux":
                continue
            await sender.send(pack, frame.dts)
    finally:
        source.close()
        await sender.close()


async def main(args: argparse.Namespace) -> None:
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None
    port = int(await receiver.stdout.readline())
    taps = [PacketTap(f"cam{n}") for n in range(args.cameras)]
    caches = [GopCache(tap) for tap in taps]
    stop = threading.Event()
    thread = threading.Thread(target=publish, args=(taps, stop), name="publisher")
    thread.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.sleep(1)
        c0 = cpu()
        await asyncio.sleep(args.window)
        base = (cpu() - c0) / args.window
        tasks = [
            asyncio.create_task(live(caches[k % len(caches)], port, k + 1, args.stage))
            for k in range(args.streams)
        ]
        await asyncio.sleep(1)
        c0 = cpu()
        await asyncio.sleep(args.window)
        with_streams = (cpu() - c0) / args.window
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop.set()
        thread.join()
        for cache in caches:
            cache.close()
        receiver.kill()
        await receiver.wait()
    per = (with_streams - base) / args.streams
    print(f"stage: {args.stage}; {args.cameras} cameras, {args.streams} live streams")
    print(f"process CPU without streams: {base * 100:.2f} % of a core")
    print(f"process CPU with streams: {with_streams * 100:.2f} % of a core")
    print(f"CPU per live stream: {per * 100:.2f} % of a core")
    print(f"load average: {os.getloadavg()}; cores: {os.cpu_count()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--stage", choices=["handoff", "mux", "send"], default="send")
    asyncio.run(main(parser.parse_args()))
