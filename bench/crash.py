"""Crash benchmark: SIGKILL the daemon at random moments while it records 4 cameras, restart
it, and check after every restart that nothing indexed was lost and what was in flight came
back.

Set-up: four camera simulators (`tests.camsim.CameraSim`, one process and port per camera, as
four real cameras would be), serving `h264aac`, `h264`, `h265` and `bframes` (10 fps, keyframe
every second). The daemon is `python -m nvr.cli run -c FILE` in a child process with
`segment_seconds = 10` and `NOTIFY_SOCKET` pointing at this script, so each start is timed to
its READY=1 (index open, interrupted segments salvaged, recorders started).

Each round: start the daemon, wait for READY=1 and for every camera to be recording, wait a
random 0.5-12 s (seeded: `--seed`), take a snapshot of the index (rows and `.part` files),
SIGKILL, restart, and once READY=1 arrives check through `storage.SegmentStore` (read-only):

- **no indexed segment lost**: every (camera, start, sha256) of the snapshot is still indexed;
- **integrity**: every row's file exists and re-hashes to its sha256 (new rows each round,
  every row at the end), and `nvr verify -c FILE` (hash chains, files, audit log) exits 0;
- **salvage**: every `.part` in flight at the kill is now an indexed `recovered` segment, or
  is kept on disk as holding no complete fragment (reported, never deleted);
- **ledger**: each camera has an outage covering the kill (`not-running`, from its last
  footage), closed once recording resumed;
- **video lost per crash** per camera: kill time minus the end of the last footage that
  survived (indexed or salvaged). Target: the fragment in flight, about 1-2 s.

Scenarios (`--scenario`):

- ``random`` (default): SIGKILL at a random moment, as above.
- ``rename-insert``: fault injection between a segment's rename and its index row: the daemon
  runs as `python -m bench.crashpoint`, which SIGKILLs itself at the first recorder commit
  after a random moment, the file renamed and fsynced, its row not inserted. Checked besides:
  every such stranded `.mp4` is indexed as `recovered` at the restart (start-up recovery).
- ``full-index``: the index on a 16 MiB tmpfs of its own (needs root) is filled to the last
  byte at a random moment; once every camera shows `storage-full` (segments held, the ledger
  written from the index's reserve) and a random 0.5-3 s more, SIGKILL; the filler is removed
  and the daemon restarted. Checked besides: the held segment files (on disk, no row at the
  kill) are indexed as `recovered` at the restart; the outage from the last footage may be
  the `storage-full` one the reserve let the daemon write.

Run: ``python -m bench.crash [--crashes 50] [--seed 1] [--scenario S] [--json FILE]``. Runs
on the main thread; everything measured runs in child processes. Results go to
docs/reliability.md by hand.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
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
from pathlib import Path
from typing import Any

from storage import SegmentStore
from storage.timestamps import now_ms
from tests.camsim import CameraSim, gst_rtsp_unavailable
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir

CLIPS = ("h264aac", "h264", "h265", "bframes")


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
    stranded: int = 0
    """Complete `.mp4` files without an index row at the kill (renamed, or held)."""
    stranded_indexed: int = 0
    """Of those, indexed as `recovered` by the restart."""
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

    def reader(self) -> SegmentStore:
        return SegmentStore(self.root, self.url(), exclusive=False)

    def start(self) -> float:
        """Start the daemon; seconds until READY=1."""
        self.manager.drain()
        env = dict(os.environ, NOTIFY_SOCKET=self.manager.address)
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
        done = subprocess.run(
            [sys.executable, "-m", "nvr.cli", "verify", "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return done.returncode == 0, " | ".join((done.stdout + done.stderr).strip().splitlines())


def run_round(bench: Bench, index: int, rng: random.Random) -> Round:
    """Kill the running daemon at a random moment, restart it and check what survived."""
    bench.wait_recording()
    first_id = max(bench.rows(), default=0)
    recording_since = time.monotonic()
    time.sleep(rng.uniform(0.5, 20.0))  # about two segments: the kill lands anywhere in them
    filler = bench.index_dir / "filler" if bench.index_dir is not None else None
    if bench.scenario == "rename-insert":
        bench.trigger.touch()  # the next commit renames its file, then the daemon dies
        code = bench.wait_dead(60)
        killed_ms = now_ms()
        if code != -signal.SIGKILL:
            raise RuntimeError(f"the daemon ended with {code}, not at the injected fault")
        before = bench.rows()
    else:
        if filler is not None:
            fill_up(filler)
            bench.wait_state("storage-full")
            time.sleep(rng.uniform(0.5, 3.0))
        before = bench.rows()
        killed_ms = now_ms()
        bench.kill()
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
    for part in parts:
        if not part.exists() and part.name not in salvaged_names:
            problems.append(f"{part.name} vanished without becoming a recovered segment")
    lost_video: dict[str, int] = {}
    store = bench.reader()
    try:
        for cam in bench.cameras:
            surviving = [
                s for sid, s in after.items() if s.camera == cam and (sid in before or s.recovered)
            ]
            if not surviving:
                problems.append(f"{cam}: no footage survived at all")
                continue
            last_end = max(s.end_ms for s in surviving)
            lost_video[cam] = killed_ms - last_end
            causes = {"not-running"}
            if bench.scenario == "full-index":
                causes.add("storage-full")  # written from the index's reserve before the kill
            gaps = [
                o
                for o in store.outages(cam, last_end)
                if o.cause in causes and o.start_ms == last_end
            ]
            if not gaps:
                problems.append(f"{cam}: no not-running outage from the last footage")
    finally:
        store.close()
    verify_ok, verify_line = bench.verify_cli()
    if not verify_ok:
        problems.append(f"nvr verify failed: {verify_line}")
    return Round(
        index=index,
        ran_s=round(ran, 2),
        restart_to_ready_s=round(ready_s, 2),
        indexed_before=len(before),
        lost_rows=len(lost_rows),
        parts_in_flight=len(parts),
        salvaged=len(salvaged),
        unsalvageable=len(still_parts),
        lost_video_ms=lost_video,
        first_segment=sorted(first),
        verify_ok=verify_ok,
        stranded=len(stranded),
        stranded_indexed=len(stranded_indexed),
        problems=problems,
    )


def fill_up(path: Path) -> None:
    """Write until the filesystem has not one free block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def summarise(
    rounds: list[Round], final: list[str], ledger_closed: bool, scenario: str = "random"
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
        f"kept (no complete fragment yet): {sum(r.unsalvageable for r in rounds)}",
        "video lost per camera per crash (kill time - end of surviving footage), ms:",
        f"  kill in a later segment ({len(steady)}): {_stats(steady)}",
        f"  kill in the first segment of a connection ({len(early)}): {_stats(early)}",
        f"restart to READY=1 (incl. salvage), s: median {statistics.median(ready):.2f}, "
        f"max {max(ready):.2f}",
        f"final full re-hash of every segment: {'ok' if not final else final[:5]}",
    ]
    return "\n".join(lines)


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
        "--scenario", choices=("random", "rename-insert", "full-index"), default="random"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    reason = gst_rtsp_unavailable()
    if reason is not None:
        print(f"camera simulator unavailable: {reason}", file=sys.stderr)
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
        bench.terminate()
        final = bench.check_files(bench.rows(), every=True)
        store = bench.reader()
        try:
            # After SIGTERM only `daemon-stopped` entries may be open.
            ledger_closed = all(
                o.cause == "daemon-stopped" for c in bench.cameras for o in store.open_outages(c)
            )
        finally:
            store.close()
        text = summarise(rounds, final, ledger_closed, args.scenario)
        print("\n" + text)
        if args.json is not None:
            args.json.write_text(
                json.dumps({"rounds": [asdict(r) for r in rounds], "summary": text}, indent=1),
                encoding="utf-8",
            )
        ok = not final and ledger_closed and not any(r.problems for r in rounds)
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
