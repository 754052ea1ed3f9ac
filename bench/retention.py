"""Retention at scale: purge passes and one-day timeline queries on a big index.

Builds a real SQLite index (through the store's own migrations) holding `--cameras` x
`--days` of 60 s segments (100 x 31 = about 4.5 million rows), with real (tiny) files for the
oldest hours so purges really unlink, fsync and drop rows. Then, on a simulated clock:

- a steady-state purge pass (one minute of footage per camera has just expired);
- a purge pass with nothing to do (what the daemon runs most minutes);
- a catch-up purge of an hour per camera (after the daemon was down);
- a one-day timeline query (`SegmentStore.segments(camera, day)`, 1440 rows) and the
  camera's outages for that day, median and worst over many cameras and days.

Run: `python -m bench.retention [--cameras 100] [--days 31] [--dir DIR]`. Prints numbers;
asserts nothing (targets: each pass and each query well under a second).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from config import NvrConfig, StorageConfig
from retention import RetentionService
from storage import SegmentStore

DAY_MS = 86_400_000
SEG_MS = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % DAY_MS)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def build(root: Path, cameras: int, days: int, real_hours: int) -> int:
    """Fill the index directly (bulk SQL) after the store created the schema."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    paths = {}
    for c in range(cameras):
        for i in range(real_hours * 60):
            start = T0 + i * SEG_MS
            paths[(c, i)] = store.segment_path(f"cam{c:03d}", start)
    store.close()
    db = sqlite3.connect(root / "index.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    per_camera = days * DAY_MS // SEG_MS
    rows = 0
    for c in range(cameras):
        cam = f"cam{c:03d}"
        prev = "0" * 64
        batch = []
        for i in range(per_camera):
            start = T0 + i * SEG_MS
            path = paths.get((c, i))
            rel = str(path.relative_to(root)) if path else f"{cam}/virtual/{i}.mp4"
            chain = f"{c:04d}{i:060d}"
            batch.append(
                (
                    cam,
                    start,
                    start + SEG_MS,
                    SEG_MS,
                    1000,
                    rel,
                    "h264",
                    None,
                    640,
                    360,
                    600,
                    "0" * 64,
                    prev,
                    chain,
                    0,
                    0,
                    0,
                    start + SEG_MS,
                )
            )
            prev = chain
        db.executemany(
            "INSERT INTO segments (camera, start_ms, end_ms, duration_ms, bytes, path,"
            " video_codec, audio_codec, width, height, frames, sha256, prev_chain, chain,"
            " recovered, discontinuity, garbage, created_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            batch,
        )
        db.execute(
            "INSERT INTO outages (camera, start_ms, end_ms, cause, detail) VALUES (?,?,?,?,?)",
            (cam, T0 + 5 * DAY_MS, T0 + 5 * DAY_MS + 30_000, "stalled", "bench"),
        )
        rows += len(batch)
        db.commit()
    db.close()
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    return rows


def timed(fn: object) -> tuple[float, object]:
    assert callable(fn)
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: tmp)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="nvr-bench-retention-"))
    root = base / "store"
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        f", SQLite {sqlite3.sqlite_version}; index at {root}"
    )
    t, rows = timed(lambda: build(root, args.cameras, args.days, real_hours=2))
    size = (root / "index.db").stat().st_size
    print(f"built {rows:,} segment rows in {t:.1f} s (index {size / 1e9:.2f} GB)")

    clock = Clock(T0 + 30 * DAY_MS + SEG_MS + 1)  # the first minute of each camera expired
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", clock=clock)
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root, reserve_bytes=0)), store)

    t, n = timed(service.purge_once)
    print(f"steady-state purge pass: {n} segments deleted in {t * 1000:.0f} ms")
    t, n = timed(service.purge_once)
    print(f"idle purge pass (nothing expired): {n} segments in {t * 1000:.0f} ms")
    clock.now += 60 * SEG_MS
    t, n = timed(service.purge_once)
    print(f"catch-up purge pass (an hour per camera): {n} segments in {t * 1000:.0f} ms")

    samples: list[float] = []
    outage_samples: list[float] = []
    count = 0
    for k in range(40):
        cam = f"cam{(k * 37) % args.cameras:03d}"
        day = 1 + (k * 7) % (args.days - 1)
        start, end = T0 + day * DAY_MS, T0 + (day + 1) * DAY_MS
        t, segs = timed(lambda cam=cam, s=start, e=end: store.segments(cam, s, e))
        assert isinstance(segs, list)
        count = len(segs)
        samples.append(t)
        t2, _ = timed(lambda cam=cam, s=start: store.outages(cam, s))
        outage_samples.append(t2)
    print(
        f"one-day timeline ({count} segments): median {statistics.median(samples) * 1000:.1f}"
        f" ms, worst {max(samples) * 1000:.1f} ms over {len(samples)} queries"
    )
    print(
        f"one-day outages query: median {statistics.median(outage_samples) * 1000:.2f} ms, "
        f"worst {max(outage_samples) * 1000:.2f} ms"
    )
    store.close()


if __name__ == "__main__":
    main()
