"""Retention at scale: purge passes and one-day timeline queries on a big index.

Builds a real SQLite index (through the store's own migrations) holding `--cameras` x
`--days` of 60 s segments (100 x 31 = about 4.5 million rows), with real (tiny) files for the
oldest hours so purges really unlink, fsync and drop rows. Then, on a simulated clock:

- a steady-state purge pass (one minute of footage per camera has just expired);
- a purge pass with nothing to do (what the daemon runs most minutes);
- a catch-up purge of an hour per camera (after the daemon was down);
- a one-day timeline query (`SegmentStore.segments(camera, day)`, 1440 rows) and the
  camera's outages for that day, median and worst over many cameras and days.

With `--locked F` (e.g. 0.1), each camera has one evidence lock per day over the first F of
the day, so a fraction F of all footage is locked, the oldest expired footage included (the
case that stalled purging when candidates were taken without regard to locks). The clock then
starts just after the first locked span has expired, and the real files cover the two hours
after it.

Run: `python -m bench.retention [--cameras 100] [--days 31] [--locked 0.1] [--dir DIR]`.
Prints numbers; asserts nothing (targets: each pass and each query well under a second; with
10 % locked, a steady pass < 200 ms at 100 cameras x 31 days).
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

from nvr.config import NvrConfig, StorageConfig
from nvr.retention import RetentionService
from nvr.storage import SegmentStore
from nvr.storage.timestamps import DAY_MS

SEG_MS = 60_000
T0 = 1_790_000_000_000 - (1_790_000_000_000 % DAY_MS)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def locked_segments(locked: float) -> int:
    """Segments at the start of each day covered by that day's lock."""
    return round(locked * DAY_MS / SEG_MS)


def build(root: Path, cameras: int, days: int, real_hours: int, locked: float = 0.0) -> int:
    """Fill the index directly (bulk SQL) after the store created the schema (as a recorder
    run on the simulated clock, whose uptime is that clock: no step when the bench's clock
    opens it again)."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", clock=Clock(T0))
    paths = {}
    first = locked_segments(locked)
    for c in range(cameras):
        for i in range(first, first + real_hours * 60):
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
        if first:
            db.executemany(
                "INSERT INTO locks (camera, start_ms, end_ms, created_ms, created_by, reason,"
                " case_id, expires_ms) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        cam,
                        T0 + d * DAY_MS,
                        T0 + d * DAY_MS + first * SEG_MS,
                        T0,
                        "bench",
                        "bench",
                        None,
                        T0 + 800 * DAY_MS,
                    )
                    for d in range(days)
                ],
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
    parser.add_argument(
        "--locked", type=float, default=0.0, help="fraction of each day locked (e.g. 0.1)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to build (default: tmp)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="nvr-bench-retention-"))
    root = base / "store"
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
        f", SQLite {sqlite3.sqlite_version}; index at {root}"
    )
    t, rows = timed(lambda: build(root, args.cameras, args.days, real_hours=2, locked=args.locked))
    size = (root / "index.db").stat().st_size
    print(f"built {rows:,} segment rows in {t:.1f} s (index {size / 1e9:.2f} GB)")
    first = locked_segments(args.locked)
    if first:
        print(
            f"locked: {args.cameras * args.days:,} locks, the first {first} segments of every "
            f"day of every camera ({first * SEG_MS / DAY_MS:.1%} of the footage)"
        )

    # The first unlocked minute of each camera has just expired (with --locked, after the
    # first locked span of each camera, already expired).
    clock = Clock(T0 + 30 * DAY_MS + (first + 1) * SEG_MS + 1)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", clock=clock)
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root, reserve_bytes=0)), store)

    t, n = timed(service.purge_once)
    print(f"first purge pass after start: {n} segments deleted in {t * 1000:.0f} ms")
    steady: list[float] = []
    counts: list[int] = []
    for _ in range(10):
        clock.now += SEG_MS  # one more minute of each camera expires
        t, n = timed(service.purge_once)
        steady.append(t)
        assert isinstance(n, int)
        counts.append(n)
    print(
        f"steady-state purge pass (a minute per camera expired): {statistics.median(counts):.0f}"
        f" segments deleted, median {statistics.median(steady) * 1000:.0f} ms, worst "
        f"{max(steady) * 1000:.0f} ms over {len(steady)} passes"
    )
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
        t2, _ = timed(lambda cam=cam, s=start: store.ledger.outages(cam, s))
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
