"""Crash benchmark: SIGKILL the daemon at random moments while it records 4 cameras, restart
it, and check after every restart that nothing indexed was lost and what was in flight came
back.

Set-up: four camera simulators (`tests.camsim.CameraSim`, one process and port per camera, as
four real cameras would be), serving `h264aac`, `h264`, `h265` and `bframes` (10 fps, keyframe
every second). The daemon is `python -m nvr.cli run -c FILE` in a child process with
`segment_seconds = 10` and `NOTIFY_SOCKET` pointing at this script, so each start is timed to
its READY=1 (index open, interrupted segments salvaged, recorders started).

Each round: start the daemon, wait for READY=1 and for every camera to be recording, wait a
random 0.5-12 s (seeded: `--seed`), SIGKILL, take a snapshot of the index (rows and `.part`
files), restart, and once READY=1 arrives check through `storage.SegmentStore` (read-only):

- **no indexed segment lost**: every (camera, start, sha256) of the snapshot is still indexed;
- **integrity**: every row's file exists and re-hashes to its sha256 (new rows each round,
  every row at the end), and `nvr verify -c FILE` (hash chains, files, audit log) exits 0;
- **salvage**: every `.part` in flight at the kill is now an indexed `recovered` segment, or
  is kept on disk as holding no complete fragment (reported, never deleted);
- **ledger**: each camera has an outage covering the kill (`not-running`, from its last
  footage), closed once recording resumed, and lasting at least the real downtime (from
  the kill to the restarted daemon's run, by kernel uptime, which no clock step moves);
- **order**: each camera's rows, in index order, never start before the previous one ends;
- **video lost per crash** per camera: kill time minus the end of the last footage that
  survived (indexed or salvaged). Target: the fragment in flight, about 1-2 s.

Scenarios (`--scenario`):

- ``random`` (default): SIGKILL at a random moment, as above.
- ``rename-insert``: fault injection between a segment's rename and its index row: the daemon
  runs as `python -m bench.crashpoint`, which SIGKILLs itself at the first recorder commit
  after a random moment, the file renamed and fsynced, its row not inserted. Checked besides:
  every such stranded `.mp4` is indexed as `recovered` at the restart (start-up recovery).
- ``full-index``: the index on a 16 MiB tmpfs of its own (needs root) is filled to the last
  byte at a random moment; in every other round the room its reserve gives back when it is
  released is filled too, so held segments and the ledger cannot be written either. Once
  every camera shows `storage-full` and a random 0.5-3 s more, SIGKILL; the filler is
  removed and the daemon restarted. Checked besides: the held segment files (on disk, no row
  at the kill) are indexed as `recovered` at the restart; the outage from the last footage
  may be the `storage-full` one the reserve let the daemon write. Recording was paused at
  the kill, so the video lost *by the kill* is 0 for a camera with no `.part` file in
  flight; the pause itself (ledgered) is reported apart. After the kills,
  `--resumes N` (default 5) fill-and-free cycles without a kill measure how soon recording
  resumes once the index has room again (issue 11, item 6: "within 1 s"): from the filler's
  removal to each recorder's `room again, resuming` log line (the check that found room;
  checks are 1 s apart), and to the end of its `storage-full` outage in the ledger (its
  first footage again: reconnection and the camera's next keyframe included).
- ``clock-step``: the daemon runs under libfaketime (Debian `faketime`; its offset read from
  a file, only the wall clock faked, as a real step) with retention passes every second and
  a 30-day window. Each round steps the clock forward or back by 1-12 hours or 1-40 days at
  a random moment, SIGKILLs a random 0.5-8 s later, and in half the rounds steps it again
  while the daemon is down. Every segment is minutes old, inside the window: any purge is an
  early delete. Checked besides: no `purge` audited as ok and no segment deleted, ever; the
  step is held (`clock-step` audited, a hold in the index); `nvr verify` (run under the same
  clock) passes. At the end an operator confirms the clock (`nvr purge --i-confirm-clock`)
  and the evidence still purges nothing. Video lost per kill is measured where the footage
  in flight is stamped on the clock of the kill (after a step back, footage is stamped on
  from the previous footage's end until the clock catches up: not measurable that way).

Run: ``python -m bench.crash [--crashes 50] [--seed 1] [--scenario S] [--json FILE]``. Runs
on the main thread; everything measured runs in child processes. Results go to
docs/reliability.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nvr.storage import SegmentStore
from nvr.storage.clock import read_uptime_ms
from nvr.storage.timestamps import now_ms
from tests.camsim import CameraSim, gst_rtsp_unavailable
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir
from tests.diskfill import fill_up

CLIPS = ("h264aac", "h264", "h265", "bframes")
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
HOUR_S = 3600
DAY_S = 86400
MAX_OFFSET_S = 45 * DAY_S


class ServiceManager:
    """The receiving end of NOTIFY_SOCKET (an abstract datagram socket), as systemd would be."""

    def __init__(self) -> None:
        self.address = f"@nvr-bench-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address[1:].encode())

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait_for(self, field_: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {field_} from the daemon within {timeout:.0f} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if field_ in data.decode(errors="replace").split("\n"):
                return

    def close(self) -> None:
        self.sock.close()


@dataclass
class Round:
    index: int
    ran_s: float
    """How long the daemon had been recording when it was killed."""
    restart_to_ready_s: float
    """From exec of the restarted daemon to its READY=1 (salvage included)."""
    indexed_before: int
    lost_rows: int
    parts_in_flight: int
    salvaged: int
    unsalvageable: int
    lost_video_ms: dict[str, int]
    first_segment: list[str]
    """Cameras whose segment in flight was the first of their connection."""
    verify_ok: bool
    empty_removed: int = 0
    """`.part` files in flight holding the MP4 header only (killed at a cut, before the first
    sample), removed at the restart and audited as `remove-empty-part` (issue 11, item 7)."""
    stranded: int = 0
    """Complete `.mp4` files without an index row at the kill (renamed, or held)."""
    stranded_indexed: int = 0
    """Of those, indexed as `recovered` by the restart."""
    paused_ms: dict[str, int] = field(default_factory=dict)
    """full-index: kill time minus the end of the footage, for cameras paused (storage-full,
    no `.part` file in flight) when killed: the pause, not a loss of the kill."""
    reserve_filled: bool = False
    """full-index: the room of the index's released reserve was filled too."""
    steps_s: list[int] = field(default_factory=list)
    """clock-step: the steps of the round (while running, and while down), seconds."""
    offset_s: int = 0
    """clock-step: the daemon's clock offset at the kill, seconds."""
    unmeasured: list[str] = field(default_factory=list)
    """clock-step: cameras whose surviving footage is stamped on an earlier clock."""
    out_of_order: int = 0
    """Consecutive rows of a camera (index order) where the later starts before the
    earlier ends: footage indexed out of recording order, or overlapping."""
    down_ms: int = 0
    """Real time from the kill to the restarted daemon's run (kernel uptime): the least
    the kill's outage must last."""
    outage_ms: dict[str, int] = field(default_factory=dict)
    """Per camera, the length of the kill's outage in the ledger (from its last footage)."""
    problems: list[str] = field(default_factory=list)


class Bench:
    def __init__(
        self, work: Path, sims: list[CameraSim], scenario: str, index_dir: Path | None
    ) -> None:
        self.work = work
        self.scenario = scenario
        self.root = work / "store"
        self.config = work / "nvr.toml"
        self.trigger = work / "crash-at-insert"
        self.index_dir = index_dir
        self.cameras = [f"cam{i}" for i in range(len(sims))]
        db = (index_dir or self.root) / "index.db"
        self.db = db
        lines = [f'[storage]\nroot = "{self.root}"\ndatabase_url = "sqlite:///{db}"\n']
        if scenario == "clock-step":
            lines.append("[retention]\ndays = 30\ninterval_seconds = 1\n")
        self.fake_file = work / "faketime"
        self.offset_s = 0
        """clock-step: the offset of the daemon's wall clock (and its CLI's), seconds."""
        self.set_clock(0)
        for name, sim, clip in zip(self.cameras, sims, CLIPS, strict=False):
            lines.append(
                f'[[cameras]]\nname = "{name}"\nurl = "{sim.url(name)}"\n'
                f"segment_seconds = 10\n# {clip}\n"
            )
        self.config.write_text("\n".join(lines), encoding="utf-8")
        self.manager = ServiceManager()
        self.proc: subprocess.Popen[bytes] | None = None
        self.hashed: set[int] = set()
        self.kept_parts: set[Path] = set()
        """`.part` files already found to hold no complete fragment (kept, never deleted)."""

    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def set_clock(self, offset_s: int) -> None:
        """clock-step: step the daemon's wall clock (libfaketime reads the file each second)."""
        self.offset_s = offset_s
        tmp = self.fake_file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n", encoding="utf-8")
        tmp.replace(self.fake_file)

    def env(self) -> dict[str, str]:
        """The environment of the daemon and its CLI: under libfaketime for clock-step (the
        wall clock only: a real step does not move the monotonic clocks)."""
        env = dict(os.environ)
        if self.scenario == "clock-step":
            env["LD_PRELOAD"] = LIBFAKETIME
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            env["FAKETIME_TIMESTAMP_FILE"] = str(self.fake_file)
            env["FAKETIME_CACHE_DURATION"] = "1"
        return env

    def reader(self) -> SegmentStore:
        return SegmentStore(self.root, self.url(), exclusive=False)

    def start(self) -> float:
        """Start the daemon; seconds until READY=1."""
        self.manager.drain()
        env = dict(self.env(), NOTIFY_SOCKET=self.manager.address)
        started = time.monotonic()
        with (self.work / "daemon.log").open("ab") as log:
            command = [sys.executable, "-m", "nvr.cli", "run", "-c", str(self.config)]
            if self.scenario == "rename-insert":
                command = [
                    sys.executable,
                    "-m",
                    "bench.crashpoint",
                    str(self.config),
                    str(self.trigger),
                ]
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.manager.wait_for("READY=1", 60)
        return time.monotonic() - started

    def wait_recording(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                doc = json.loads((self.root / "status.json").read_text(encoding="utf-8"))
                cams = doc["cameras"]
                if doc["pid"] == self.pid() and all(
                    cams.get(c, {}).get("state") == "recording" for c in self.cameras
                ):
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError("cameras did not all start recording")

    def passes(self) -> int:
        """Retention passes the running daemon has finished (status.json; -1 unknown)."""
        try:
            doc = json.loads((self.root / "status.json").read_text(encoding="utf-8"))
            if doc["pid"] != self.pid():
                return -1
            return int(doc["retention"]["passes"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def wait_passes(self, count: int, timeout: float = 120) -> None:
        """Until the daemon has finished `count` more retention passes than now."""
        deadline = time.monotonic() + timeout
        while (start := self.passes()) < 0:
            if time.monotonic() > deadline:
                raise RuntimeError("no retention passes in status.json")
            time.sleep(0.2)
        while self.passes() < start + count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not finish {count} retention passes")
            time.sleep(0.2)

    def wait_state(self, state: str, timeout: float = 60) -> None:
        """Until status.json shows every camera in `state`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                doc = json.loads((self.root / "status.json").read_text(encoding="utf-8"))
                cams = doc["cameras"]
                if all(cams.get(c, {}).get("state") == state for c in self.cameras):
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"cameras did not all reach {state}")

    def wait_dead(self, timeout: float = 60) -> int:
        """Until the daemon has killed itself (the injected fault); its exit status."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def stranded(self) -> list[Path]:
        store = self.reader()
        try:
            return store.consistency().files_without_rows
        finally:
            store.close()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def terminate(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def rows(self) -> dict[int, Any]:
        store = self.reader()
        try:
            return {s.id: s for c in self.cameras for s in store.segments(c)}
        finally:
            store.close()

    def check_files(self, rows: dict[int, Any], every: bool = False) -> list[str]:
        problems = []
        for sid, seg in rows.items():
            if not seg.path.exists():
                problems.append(f"missing file {seg.path}")
                continue
            if every or sid not in self.hashed:
                if hashlib.sha256(seg.path.read_bytes()).hexdigest() != seg.sha256:
                    problems.append(f"sha256 differs: {seg.path}")
                self.hashed.add(sid)
        return problems

    def verify_cli(self) -> tuple[bool, str]:
        return self.cli("verify")

    def cli(self, *args: str) -> tuple[bool, str]:
        """`nvr ARGS -c FILE` on the daemon's clock; whether it exited 0, and its output."""
        done = subprocess.run(
            [sys.executable, "-m", "nvr.cli", args[0], "-c", str(self.config), *args[1:]],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=self.env(),
        )
        return done.returncode == 0, " | ".join((done.stdout + done.stderr).strip().splitlines())

    def removed_empty_parts(self) -> set[str]:
        """Paths (relative to the root) of header-only `.part` files removed, as audited."""
        store = self.reader()
        try:
            entries = store.audit.entries(action="remove-empty-part", limit=100_000)
            return {str(e.detail.get("path")) for e in entries}
        finally:
            store.close()

    def purges(self) -> int:
        """Segments deleted by purges audited as ok (all footage here is inside its window)."""
        store = self.reader()
        try:
            entries = store.audit.entries(action="purge", outcome="ok", limit=100_000)
            return sum(int(e.detail.get("segments", 0)) for e in entries)
        finally:
            store.close()

    def holds(self) -> tuple[int, bool]:
        """clock-step: steps audited (`clock-step`), and whether a hold is in force."""
        store = self.reader()
        try:
            steps = len(store.audit.entries(action="clock-step", limit=100_000))
            return steps, store.clock_verdict().hold is not None
        finally:
            store.close()


def run_round(bench: Bench, index: int, rng: random.Random) -> Round:
    """Kill the running daemon at a random moment, restart it and check what survived."""
    bench.wait_recording()
    first_id = max(bench.rows(), default=0)
    recording_since = time.monotonic()
    time.sleep(rng.uniform(0.5, 20.0))  # about two segments: the kill lands anywhere in them
    filler = bench.index_dir / "filler" if bench.index_dir is not None else None
    reserve_filled = False
    steps: list[int] = []
    if bench.scenario == "rename-insert":
        bench.trigger.touch()  # the next commit renames its file, then the daemon dies
        code = bench.wait_dead(60)
        killed_ms = now_ms()
        killed_up = read_uptime_ms()
        if code != -signal.SIGKILL:
            raise RuntimeError(f"the daemon ended with {code}, not at the injected fault")
        before = bench.rows()
    else:
        if filler is not None:
            fill_up(filler)
            if index % 2 == 1:
                # The reserve too: the room it gives back when released is filled at once.
                reserve_filled = fill_released_reserve(bench.db, filler)
            bench.wait_state("storage-full")
            time.sleep(rng.uniform(0.5, 3.0))
        if bench.scenario == "clock-step":
            steps.append(step_clock(bench, rng))
            time.sleep(rng.uniform(0.5, 8.0))  # retention passes every second meanwhile
        killed_ms = now_ms() + bench.offset_s * 1000  # on the daemon's clock
        offset_at_kill = bench.offset_s
        killed_up = read_uptime_ms()
        bench.kill()
        # Read once the daemon is dead: a snapshot taken before the kill misses rows
        # committed in between (a clock step cuts every camera's segment at once).
        before = bench.rows()
        if bench.scenario == "clock-step" and rng.random() < 0.5:
            steps.append(step_clock(bench, rng))  # the restart finds another clock
    parts = sorted(p for p in bench.root.rglob("*.mp4.part") if p not in bench.kept_parts)
    stranded = bench.stranded()
    if filler is not None:
        filler.unlink()  # room again before the restart
    ran = time.monotonic() - recording_since
    # Whose segment in flight was the first of its connection (nothing committed yet)?
    first = {
        c
        for c in bench.cameras
        if not any(sid > first_id and s.camera == c for sid, s in before.items())
    }
    ready_s = bench.start()  # recovery (salvage) happens before READY=1
    bench.wait_recording()  # every recorder has taken over its ledger by now

    after = bench.rows()
    problems = []
    lost_rows = [
        s for sid, s in before.items() if sid not in after or after[sid].sha256 != s.sha256
    ]
    problems += [f"indexed segment lost: {s.camera} {s.path.name}" for s in lost_rows]
    problems += bench.check_files(after)
    new = [s for sid, s in after.items() if sid not in before]
    recovered_paths = {s.path for s in new if s.recovered}
    stranded_indexed = [p for p in stranded if p in recovered_paths]
    problems += [
        f"stranded {p.name} not indexed as recovered by the restart"
        for p in stranded
        if p not in recovered_paths
    ]
    if bench.scenario == "rename-insert" and not stranded:
        problems.append("the injected fault left no file without a row")
    salvaged = [s for s in new if s.recovered]
    still_parts = [p for p in parts if p.exists()]
    bench.kept_parts.update(still_parts)
    salvaged_names = {s.path.name + ".part" for s in salvaged}
    empty = bench.removed_empty_parts()
    for part in parts:
        if part.exists() or part.name in salvaged_names:
            continue
        if str(part.relative_to(bench.root)) not in empty:
            problems.append(f"{part.name} vanished without becoming a recovered segment")
    lost_video: dict[str, int] = {}
    paused: dict[str, int] = {}
    unmeasured: list[str] = []
    outage_ms: dict[str, int] = {}
    out_of_order = 0
    store = bench.reader()
    try:
        down_ms = store.runs(1)[0].started_uptime_ms - killed_up
        for cam in bench.cameras:
            rows = sorted((sid, s) for sid, s in after.items() if s.camera == cam)
            for (_, prev), (_, seg) in itertools.pairwise(rows):
                if seg.start_ms < prev.end_ms:
                    out_of_order += 1
                    problems.append(
                        f"{cam}: {seg.path.name} indexed after {prev.path.name} but starts "
                        f"{prev.end_ms - seg.start_ms} ms before it ends"
                    )
        for cam in bench.cameras:
            surviving = [
                s for sid, s in after.items() if s.camera == cam and (sid in before or s.recovered)
            ]
            if not surviving:
                problems.append(f"{cam}: no footage survived at all")
                continue
            last_end = max(s.end_ms for s in surviving)
            causes = {"not-running"}
            if bench.scenario == "full-index":
                causes.add("storage-full")  # written from the index's reserve before the kill
            gaps = [
                o
                for o in store.ledger.outages(cam, last_end)
                if o.cause in causes and o.start_ms == last_end
            ]
            if not gaps:
                problems.append(f"{cam}: no not-running outage from the last footage")
            elif gaps[0].end_ms is not None:
                outage_ms[cam] = gaps[0].end_ms - gaps[0].start_ms
                if bench.scenario != "full-index" and outage_ms[cam] < down_ms - 100:
                    problems.append(
                        f"{cam}: its outage lasts {outage_ms[cam]} ms, the daemon was down "
                        f"{down_ms} ms"
                    )
            if bench.scenario == "full-index" and not any(
                p.is_relative_to(bench.root / cam) for p in parts
            ):
                # Paused (every camera showed storage-full) with no segment in flight: the
                # kill lost nothing; the pause is ledgered (storage-full, or not-running when
                # even the reserve's room was filled) and reported apart.
                paused[cam] = killed_ms - last_end
                lost_video[cam] = 0
            elif bench.scenario == "clock-step" and not -1000 <= killed_ms - last_end < 60_000:
                unmeasured.append(cam)  # stamped on an earlier clock (after a step back)
            else:
                lost_video[cam] = killed_ms - last_end
    finally:
        store.close()
    verify_ok, verify_line = bench.verify_cli()
    if not verify_ok:
        problems.append(f"nvr verify failed: {verify_line}")
    if bench.scenario == "clock-step":
        purged = bench.purges()
        if purged:
            problems.append(f"{purged} segments purged, all of them inside the window")
        audited, held = bench.holds()
        if not held or audited < 1:
            problems.append(f"the step is not held (clock-step audited {audited} times)")
    return Round(
        index=index,
        ran_s=round(ran, 2),
        restart_to_ready_s=round(ready_s, 2),
        indexed_before=len(before),
        lost_rows=len(lost_rows),
        parts_in_flight=len(parts),
        salvaged=len(salvaged),
        unsalvageable=len(still_parts),
        empty_removed=sum(
            1 for p in parts if not p.exists() and str(p.relative_to(bench.root)) in empty
        ),
        lost_video_ms=lost_video,
        first_segment=sorted(first),
        verify_ok=verify_ok,
        stranded=len(stranded),
        stranded_indexed=len(stranded_indexed),
        paused_ms=paused,
        reserve_filled=reserve_filled,
        steps_s=steps,
        offset_s=offset_at_kill if bench.scenario == "clock-step" else 0,
        unmeasured=unmeasured,
        out_of_order=out_of_order,
        down_ms=down_ms,
        outage_ms=outage_ms,
        problems=problems,
    )


def step_clock(bench: Bench, rng: random.Random) -> int:
    """Step the daemon's clock forward or back by 1-12 hours or 1-40 days (the offset kept
    within 45 days of the true time); the step, seconds."""
    size = rng.randint(1, 12) * HOUR_S if rng.random() < 0.5 else rng.randint(1, 40) * DAY_S
    step = size if rng.random() < 0.5 else -size
    if abs(bench.offset_s + step) > MAX_OFFSET_S:
        step = -step
    bench.set_clock(bench.offset_s + step)
    return step


def fill_released_reserve(db: Path, filler: Path, timeout: float = 60) -> bool:
    """Once the daemon releases the index's reserve (its first failed write), fill the room
    it gave back; True if that happened within `timeout`."""
    reserve = db.with_name(db.name + ".reserve")
    deadline = time.monotonic() + timeout
    while reserve.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    fill_up(filler)
    return True


def measure_resumes(bench: Bench, cycles: int, rng: random.Random) -> tuple[list[str], bool]:
    """full-index: fill the index's filesystem, free it once every camera is paused, and
    measure per camera how soon it resumed (see the module's docstring)."""
    assert bench.index_dir is not None
    filler = bench.index_dir / "filler"
    log = bench.work / "daemon.log"
    to_check: list[int] = []
    to_footage: list[int] = []
    problems: list[str] = []
    for cycle in range(cycles):
        bench.wait_recording()
        time.sleep(rng.uniform(0.5, 5.0))
        fill_up(filler)
        bench.wait_state("storage-full")
        time.sleep(rng.uniform(1.0, 3.0))
        offset = log.stat().st_size
        freed_ms = now_ms()
        filler.unlink()
        bench.wait_recording()
        time.sleep(1)  # the log lines are written by now
        with log.open("rb") as f:
            f.seek(offset)
            resumed = {
                line.split(b"camera ", 2)[1].split(b":")[0].decode(): log_ms(line)
                for line in f
                if b"room again, resuming" in line
            }
        store = bench.reader()
        try:
            for cam in bench.cameras:
                if cam not in resumed:
                    problems.append(f"resume {cycle}: {cam} logged no resume")
                    continue
                to_check.append(resumed[cam] - freed_ms)
                ends = [
                    o.end_ms
                    for o in store.ledger.outages(cam, freed_ms - 600_000)
                    if o.cause == "storage-full"
                    and o.start_ms < freed_ms
                    and o.end_ms is not None
                    and o.end_ms >= freed_ms
                ]
                if not ends:
                    problems.append(f"resume {cycle}: {cam} has no closed storage-full outage")
                    continue
                to_footage.append(max(ends) - freed_ms)
        finally:
            store.close()
    lines = [
        f"resume after the index has room again ({cycles} fill-and-free cycles x 4 cameras), "
        "ms from the filler's removal:",
        f"  to the check that found room (checks 1 s apart): {_stats(to_check)}",
        f"  to footage again (ledger: end of storage-full; reconnection and next keyframe "
        f"included): {_stats(to_footage)}",
    ] + [f"  PROBLEM: {p}" for p in problems]
    return lines, not problems and bool(to_check)


def log_ms(line: bytes) -> int:
    """The time of a daemon log line (`2026-12-02T02:41:07.893Z ...`), ms since the epoch."""
    stamp = line.split(b" ", 1)[0].decode().rstrip("Z")
    return int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)


def confirm_at_end(bench: Bench) -> tuple[list[str], bool]:
    """clock-step: an operator confirms the (stepped) clock; the evidence still purges
    nothing, by the CLI or by the daemon's passes (every second) afterwards."""
    steps, held = bench.holds()
    ids = set(bench.rows())
    ok_, out = bench.cli("purge", "--i-confirm-clock", "--reason", "bench: clock checked")
    bench.wait_passes(3)  # three of the daemon's passes under the confirmed clock
    _, held_after = bench.holds()
    gone = len(ids - set(bench.rows()))
    purged = bench.purges()
    good = ok_ and "purged 0 segments" in out and not held_after and not gone and not purged
    return [
        f"steps audited as clock-step: {steps}; hold in force before the confirmation: {held}",
        f"segments purged by the daemon or the CLI over the whole run: {purged}",
        f"confirmed at the end (`nvr purge --i-confirm-clock`): {out[:400]}; hold cleared: "
        f"{not held_after}; of the {len(ids)} segments then, gone three passes later: {gone}",
    ], good


def summarise(
    rounds: list[Round],
    final: list[str],
    ledger_closed: bool,
    scenario: str = "random",
    extra: list[str] | None = None,
) -> str:
    steady = [
        ms for r in rounds for cam, ms in r.lost_video_ms.items() if cam not in r.first_segment
    ]
    early = [ms for r in rounds for cam, ms in r.lost_video_ms.items() if cam in r.first_segment]
    ready = [r.restart_to_ready_s for r in rounds]
    lines = [
        f"scenario {scenario}: {len(rounds)} SIGKILLs, 4 cameras, segments of 10 s",
        f"files without a row at the kill: {sum(r.stranded for r in rounds)}; indexed as "
        f"recovered by the restart: {sum(r.stranded_indexed for r in rounds)}",
        f"indexed segments lost: {sum(r.lost_rows for r in rounds)}",
        f"rounds with problems: {sum(1 for r in rounds if r.problems)}",
        f"nvr verify passed after every restart: {all(r.verify_ok for r in rounds)}",
        f"ledger closed for every camera at the end: {ledger_closed}",
        f".part files in flight at the kills: {sum(r.parts_in_flight for r in rounds)}; "
        f"salvaged into recovered segments: {sum(r.salvaged for r in rounds)}; "
        f"kept (no complete fragment yet): {sum(r.unsalvageable for r in rounds)}; removed "
        f"as header only (audited): {sum(r.empty_removed for r in rounds)}",
        "video lost per camera per crash (kill time - end of surviving footage), ms:",
        f"  kill in a later segment ({len(steady)}): {_stats(steady)}",
        f"  kill in the first segment of a connection ({len(early)}): {_stats(early)}",
        f"restart to READY=1 (incl. salvage), s: median {statistics.median(ready):.2f}, "
        f"max {max(ready):.2f}",
        f"final full re-hash of every segment: {'ok' if not final else final[:5]}",
    ]
    if scenario == "full-index":
        paused = [ms for r in rounds for ms in r.paused_ms.values()]
        lines += [
            f"rounds with the released reserve's room filled too: "
            f"{sum(r.reserve_filled for r in rounds)}",
            f"cameras paused (nothing in flight) at the kill: {len(paused)} "
            f"of {4 * len(rounds)}; kill - last footage for them, ms: {_stats(paused)}",
        ]
    if scenario == "clock-step":
        steps = [st for r in rounds for st in r.steps_s]
        down = sum(len(r.steps_s) - 1 for r in rounds)
        offsets = [r.offset_s for r in rounds]
        lines += [
            f"clock steps: {len(steps)} ({sum(st > 0 for st in steps)} forward, "
            f"{sum(st < 0 for st in steps)} back; {len(rounds)} while running, {down} while "
            f"down), sizes {min(abs(st) for st in steps) / HOUR_S:.0f} h to "
            f"{max(abs(st) for st in steps) / DAY_S:.0f} d; offset at the kills "
            f"{min(offsets) / DAY_S:+.2f} to {max(offsets) / DAY_S:+.2f} days",
            f"cameras whose surviving footage is stamped on an earlier clock (loss not "
            f"measured): {sum(len(r.unmeasured) for r in rounds)}",
        ]
    excess = [ms - r.down_ms for r in rounds for ms in r.outage_ms.values()]
    short = [e for e in excess if e < -100]
    lines += [
        f"rows indexed out of recording order or overlapping: "
        f"{sum(r.out_of_order for r in rounds)}",
        f"kill outages (ledger) minus the real downtime (kill to the restart's run, by "
        f"uptime), ms, {len(excess)} camera-kills: {_stats(excess)}; shorter than the "
        f"downtime: {len(short)}",
    ]
    return "\n".join(lines + (extra or []))


def _stats(values: list[int]) -> str:
    if not values:
        return "none"
    return (
        f"min {min(values)}, median {statistics.median(values):.0f}, "
        f"p95 {_pct(values, 95):.0f}, max {max(values)}"
    )


def _pct(values: list[int], pct: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--crashes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every round as JSON here")
    parser.add_argument(
        "--scenario",
        choices=("random", "rename-insert", "full-index", "clock-step"),
        default="random",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--resumes", type=int, default=5, help="full-index: fill-and-free cycles measured"
    )
    args = parser.parse_args(argv)
    reason = gst_rtsp_unavailable()
    if reason is not None:
        print(f"camera simulator unavailable: {reason}", file=sys.stderr)
        return 2
    if args.scenario == "clock-step" and not Path(LIBFAKETIME).exists():
        print(f"libfaketime unavailable ({LIBFAKETIME}): apt install faketime", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nvr-crash-"))
    clips = clips_cache_dir(work / "clips")
    make_clips(clips)
    sims = [CameraSim(clips, mounts=[f"cam{i}={clip}"]) for i, clip in enumerate(CLIPS)]
    rng = random.Random(args.seed)
    rounds: list[Round] = []
    bench: Bench | None = None
    index_dir: Path | None = None
    if args.scenario == "full-index":
        index_dir = work / "indexfs"
        index_dir.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(index_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"cannot mount the index's tmpfs (needs root): {done.stderr}", file=sys.stderr)
            return 2
    try:
        for sim in sims:
            sim.start()
        bench = Bench(work, sims, args.scenario, index_dir)
        bench.start()
        for i in range(args.crashes):
            r = run_round(bench, i, rng)
            rounds.append(r)
            worst = max(r.lost_video_ms.values(), default=-1)
            print(
                f"crash {i + 1:3d}/{args.crashes}: after {r.ran_s:5.1f} s, "
                f"{r.parts_in_flight} in flight, {r.salvaged} salvaged, "
                f"worst loss {worst} ms, verify {'ok' if r.verify_ok else 'FAILED'}"
                + (f"; PROBLEMS: {r.problems}" if r.problems else ""),
                flush=True,
            )
        bench.wait_recording()
        time.sleep(3)
        extra: list[str] = []
        confirmed_ok = True
        if args.scenario == "clock-step":
            extra, confirmed_ok = confirm_at_end(bench)
        if args.scenario == "full-index" and args.resumes > 0:
            extra, confirmed_ok = measure_resumes(bench, args.resumes, rng)
        bench.terminate()
        final = bench.check_files(bench.rows(), every=True)
        store = bench.reader()
        try:
            # After SIGTERM only `daemon-stopped` entries may be open.
            ledger_closed = all(
                o.cause == "daemon-stopped"
                for c in bench.cameras
                for o in store.ledger.open_outages(c)
            )
        finally:
            store.close()
        text = summarise(rounds, final, ledger_closed, args.scenario, extra)
        print("\n" + text)
        if args.json is not None:
            args.json.write_text(
                json.dumps({"rounds": [asdict(r) for r in rounds], "summary": text}, indent=1),
                encoding="utf-8",
            )
        ok = not final and ledger_closed and confirmed_ok and not any(r.problems for r in rounds)
        return 0 if ok else 1
    finally:
        if bench is not None:
            bench.terminate()
            bench.manager.close()
        for sim in sims:
            sim.stop()
        if index_dir is not None:
            subprocess.run(["umount", "-l", str(index_dir)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
