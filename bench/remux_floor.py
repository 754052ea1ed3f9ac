"""The PyAV floor: the least Python a remuxing recorder can run, for `bench.ingest` to compare.

One thread per camera opens the RTSP URL with the same FFmpeg options as
`ingest.sources.RtspOpener`, demuxes the video stream and muxes every packet unchanged (only
re-based to the segment's first DTS) into fragmented MP4 files with the same muxer options as
`storage.writer.SegmentWriter`, written by FFmpeg's own file I/O (no hashing, no index, no
timestamp repair, no watchdog). A new file starts at the first keyframe after
``--segment-seconds``. What this costs is what PyAV and its bundled FFmpeg cost; anything our
daemon spends above it is our own code.

Run: ``python -m bench.remux_floor OUT_DIR URL [URL ...]``; stops on SIGTERM or SIGINT (each
thread finishes its file). Threads: the main thread waits; one ``floor-<n>`` thread per URL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import av

from nvr.storage.writer import MUX_OPTIONS

OPEN_OPTIONS = {
    "rtsp_transport": "tcp",
    "timeout": "4000000",
    "allowed_media_types": "video+audio",
    "analyzeduration": "2000000",
    "probesize": "1000000",
}


def record(url: str, out: Path, segment_seconds: float, stop: threading.Event) -> None:
    """Remux `url` into `out/NNNNN.mp4` files until `stop` is set or the stream ends."""
    out.mkdir(parents=True, exist_ok=True)
    with av.open(url, options=OPEN_OPTIONS, timeout=None) as source:
        video = source.streams.video[0]
        tb = video.time_base
        if tb is None:
            raise RuntimeError(f"{url}: video stream has no time base")
        limit = int(segment_seconds / tb)
        sink: av.container.OutputContainer | None = None
        stream: av.video.stream.VideoStream | None = None
        first = 0
        last = -1
        files = 0
        try:
            for packet in source.demux(video):
                if stop.is_set():
                    break
                dts = packet.dts
                if dts is None:
                    continue  # the very first RTSP packet carries no timestamp
                if packet.is_keyframe and (sink is None or dts - first >= limit):
                    if sink is not None:
                        sink.close()
                    sink = av.open(str(out / f"{files:05d}.mp4"), "w", options=MUX_OPTIONS)
                    stream = sink.add_stream_from_template(video)
                    files += 1
                    first = dts
                if sink is None or stream is None or dts <= last:
                    continue
                last = dts
                pts = packet.pts if packet.pts is not None else dts
                packet.stream = stream
                packet.dts = dts - first
                packet.pts = pts - first
                sink.mux_one(packet)
        finally:
            if sink is not None:
                sink.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.remux_floor", description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("urls", nargs="+")
    p.add_argument("--segment-seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [
        threading.Thread(
            target=record,
            args=(url, args.out / f"cam{i:02d}", args.segment_seconds, stop),
            name=f"floor-{i}",
            daemon=True,
        )
        for i, url in enumerate(args.urls)
    ]
    for t in threads:
        t.start()
    while not stop.wait(0.5):
        if not any(t.is_alive() for t in threads):
            return 1
    for t in threads:
        t.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
