"""Garbage-collection pauses while 24 h playback plans are built (issue 13).

A full (generation 2) collection walks every object the collector tracks, with the GIL held,
so it stops the event loop for as long as it walks; in the daemon under `bench.abuse`'s
"24 h plans" phase those pauses were the p99 of /healthz. This measures them in one process
the way the daemon builds plans, without the HTTP layer and the recorders:

1. a 60 s H.264 + AAC clip (FFmpeg's test source) is remuxed through the store's writer into
   ``--hours`` of 60 s segments of a camera ``history``, each with its sample index stored
   (`bench.playback.synthesize_with_audio`, as `bench.abuse` does);
2. `gc.freeze()` after the imports (as `nvr run` does), then a `PlaybackService` over the
   store, its segment index cache warmed with every segment;
3. for ``--seconds``, ``--clients`` tasks on one event loop each resolve and build a plan of
   24 h starting in a different segment, again and again (the service's limits apply:
   excess requests get `PlanBusy` and wait 1 s), while a ticker measures how late a 10 ms
   sleep of the loop wakes.

Printed: the collections of each generation (count, median, max), the loop's lateness
(p50, p99, max) and the objects the collector tracks at a full collection's start.

Run: ``python -m bench.gc_pauses [--hours 25] [--seconds 20] [--clients 20]``. Runs on the
main thread (the loop); plans are built on its worker threads.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nvr.api.app  # noqa: F401  (what the daemon has imported before it freezes)
from bench.playback import synthesize_with_audio
from nvr.api.playback import PlanBusy, PlaybackService
from nvr.storage import SegmentStore
from nvr.storage.timestamps import now_ms

DAY_MS = 86_400_000


def make_clip(path: Path) -> None:
    subprocess.run(
        [
            *("ffmpeg", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc=size=640x360:rate=10"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"),
            *("-t", "60", "-c:v", "libx264", "-g", "20", "-pix_fmt", "yuv420p"),
            *("-c:a", "aac", "-shortest", str(path)),
        ],
        check=True,
    )


class Pauses:
    """gc callbacks: the wall time of each collection by generation, and the tracked objects
    at the start of each full collection."""

    def __init__(self) -> None:
        self.by_gen: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.tracked: list[int] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if info["generation"] == 2:
                self.tracked.append(len(gc.get_objects()))
            self._t0 = time.perf_counter()
        else:
            self.by_gen[info["generation"]].append(time.perf_counter() - self._t0)


async def load(
    pb: PlaybackService, first_ms: int, span: int, clients: int, seconds: float
) -> tuple[int, int, list[float]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    served = busy = 0
    counter = 0
    late: list[float] = []

    async def client(user: int) -> None:
        nonlocal served, busy, counter
        while loop.time() < deadline:
            counter += 1
            start = first_ms + (counter % span) * 60_000 + 30_500
            rec = await pb.resolve("history", start, start + DAY_MS)
            assert rec is not None
            try:
                await pb.file(rec, user)
                served += 1
            except PlanBusy:
                busy += 1
                await asyncio.sleep(1)

    async def ticker() -> None:
        while loop.time() < deadline:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            late.append(time.perf_counter() - t - 0.01)

    await asyncio.gather(ticker(), *(client(i) for i in range(clients)))
    return served, busy, late


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="nvr-bench-gc-"))
    try:
        clip = work / "clip.mp4"
        make_clip(clip)
        root = work / "store"
        store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
        try:
            synthesize_with_audio(store, clip, args.hours, now_ms() - 180_000)
        finally:
            store.close()
        gc.collect()
        gc.freeze()
        store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
        try:
            pb = PlaybackService(store)
            refs = store.segment_refs("history", 0, 2**62)
            pb.indexes.get_many(refs)
            first_ms, span = refs.start_ms[0], len(refs) - 1
            del refs
            gc.collect()
            pauses = Pauses()
            gc.callbacks.append(pauses)
            cpu = time.process_time()
            try:
                served, busy, late = asyncio.run(
                    load(pb, first_ms, span, args.clients, args.seconds)
                )
            finally:
                gc.callbacks.remove(pauses)
            cpu = time.process_time() - cpu
        finally:
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    late.sort()
    lines = [
        f"{args.clients} clients, {args.seconds:g} s, {args.hours:g} h of history: "
        f"{served} plans of 24 h built, {busy} refused busy; {cpu:.1f} s of CPU",
        f"loop lateness: p50 {late[len(late) // 2] * 1000:.1f} ms, "
        f"p99 {late[int(len(late) * 0.99)] * 1000:.1f} ms, max {late[-1] * 1000:.1f} ms",
    ]
    for g, p in pauses.by_gen.items():
        if p:
            lines.append(
                f"gen {g}: {len(p)} collections, median {statistics.median(p) * 1000:.2f} ms, "
                f"max {max(p) * 1000:.1f} ms"
            )
    if pauses.tracked:
        lines.append(f"tracked objects at full collections: max {max(pauses.tracked)}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gc_pauses", description=__doc__)
    p.add_argument("--hours", type=float, default=25.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=20)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    print(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
