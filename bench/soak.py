"""Soak benchmark: 16 cameras recorded for `--minutes` (default 30) while faults are injected,
then every injected outage is held against the ledger entry it produced.

Set-up: one camera simulator process per camera (`tests.camsim.CameraSim`, its own port, as
real cameras have their own addresses), clips cycling `h264`, `h264aac`, `h265`, `bframes`
(10 fps, keyframe every second). The daemon is `python -m nvr.cli run -c FILE` in a child
process, `segment_seconds = 60`, `stall_seconds = 4`, `reserve_bytes = 64 MiB`, with
`NOTIFY_SOCKET` and `WATCHDOG_USEC` (60 s, as in systemd/nvr.service) pointing at this script,
which plays the service manager and records every notification. Recordings go to a tmpfs
mounted for the run (needs root; the index stays on the ordinary disk), so the disk can be
filled for real.

Injections, one at a time, every `--slot` seconds after a warm-up (a fifth of the run, at most
5 minutes), so each outage has one cause:

- `restart`  cam00's simulator is stopped and started again on the same port;
- `sigstop`  cam01's simulator is frozen with SIGSTOP for 20 s (RTSP and media hang), then
  SIGCONT;
- `silent`   cam02's simulator is stopped and a listener that accepts and never answers takes
  its port for 30 s; then the simulator comes back;
- `disk-full` (once, mid-run) the recordings filesystem is filled to the last byte for 60 s;
  every camera pauses, then resumes when the filler file is removed.

Sampled every 10 s from /proc/<daemon>: resident memory, open descriptors, threads, CPU time,
and the machine's load average. Reported at the end:

- every injection against the ledger entry of each camera it hit: start and end differences
  (target: within 2 s; the end of a camera fault is when the simulator answers again);
- every ledger entry no injection explains, and every hole between consecutive segments of a
  camera that no ledger entry covers (target: none);
- memory, descriptors and threads after warm-up: first vs last minute (target: flat within 5%);
- the largest gap between WATCHDOG=1 pings (a fault of a camera must never stop them) and
  recorder replacements (self-repair; none expected).

`--faults disk-full` (or any comma-separated kinds) repeats those kinds in every slot instead
of the mix, to look at one fault at a time.

Run (as root): ``python -m bench.soak [--minutes 30] [--cameras 16] [--json FILE]``. Runs on the
main thread, plus two helper threads (notification reader, sampler); everything measured runs
in child processes. Results go to docs/reliability.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nvr.storage import Outage, Segment, SegmentStore
from nvr.storage.timestamps import now_ms
from tests.camsim import CameraSim, SilentListener, gst_rtsp_unavailable
from tests.camsim.clips import make_clips
from tests.camsim.fixtures import clips_cache_dir
from tests.diskfill import fill_up
from tests.notify import NotifyListener

CLIPS = ("h264", "h264aac", "h265", "bframes")
MIB = 1024 * 1024
WATCHDOG_S = 60
SAMPLE_S = 10.0
TOLERANCE_MS = 2000
HOLE_MS = 1000
"""A hole between consecutive segments longer than this must be covered by the ledger."""


@dataclass
class Sample:
    t: float
    """Seconds since the daemon started."""
    rss_kib: int
    fds: int
    threads: int
    cpu_s: float
    load1: float


class Sampler:
    """Reads /proc/<pid> every `SAMPLE_S` seconds on its own thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(0 if not self.samples else SAMPLE_S):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
                stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                load1 = float(Path("/proc/loadavg").read_text().split()[0])
            except OSError:
                return
            values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            self.samples.append(
                Sample(
                    t=round(time.monotonic() - self.started, 1),
                    rss_kib=int(values["VmRSS"].split()[0]),
                    fds=fds,
                    threads=int(values["Threads"]),
                    cpu_s=(int(stat[11]) + int(stat[12])) / tick,
                    load1=load1,
                )
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Injection:
    kind: str
    cameras: list[str]
    start_ms: int = 0
    end_ms: int = 0


@dataclass
class Match:
    kind: str
    camera: str
    injected: tuple[int, int]
    ledger: list[tuple[int, int | None, str]]
    start_delta_ms: int | None
    end_delta_ms: int | None
    ok: bool


@dataclass
class Report:
    minutes: float
    cameras: int
    warmup_s: float
    matches: list[Match] = field(default_factory=list)
    unexplained_outages: list[str] = field(default_factory=list)
    unexplained_holes: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    growth: dict[str, float] = field(default_factory=dict)
    first_last: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_ping_gap_s: float = 0.0
    replacements: int = 0
    segments: int = 0
    recorded_hours: float = 0.0
    cpu_percent: float = 0.0
    load_mean: float = 0.0
    samples: list[Sample] = field(default_factory=list)


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot mount a tmpfs for the recordings (needs root): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


KINDS = ("restart", "sigstop", "silent", "disk-full")


def schedule(
    total_s: float, warmup_s: float, slot_s: float, cycle: list[str] | None = None
) -> list[tuple[float, str]]:
    """(seconds after start, kind): one injection per slot, each with 90 s to play out and
    recover before the end. By default the camera faults take turns and the disk is filled
    once, mid-run; a given `cycle` of kinds is simply repeated."""
    times = []
    t = warmup_s
    while t + 90 <= total_s:
        times.append(t)
        t += slot_s
    if cycle is not None:
        return [(at, cycle[i % len(cycle)]) for i, at in enumerate(times)]
    cameras = ["restart", "sigstop", "silent"]
    kinds = [cameras[i % len(cameras)] for i in range(max(0, len(times) - 1))]
    if times:
        kinds.insert(len(times) // 2, "disk-full")
    return list(zip(times, kinds, strict=True))


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, fs: Path, clips: Path) -> None:
        self.args = args
        self.work = work
        self.fs = fs
        self.root = fs / "store"
        self.index = work / "index.db"
        self.cameras = [f"cam{i:02d}" for i in range(args.cameras)]
        self.sims = {
            name: CameraSim(clips, mounts=[f"{name}={CLIPS[i % len(CLIPS)]}"])
            for i, name in enumerate(self.cameras)
        }
        self.config = work / "nvr.toml"
        self.manager = NotifyListener(f"@nvr-soak-{uuid.uuid4().hex}")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: Sampler | None = None
        self.injections: list[Injection] = []

    def write_config(self) -> None:
        lines = [
            f'[storage]\nroot = "{self.root}"\ndatabase_url = "sqlite:///{self.index}"\n'
            f"reserve_bytes = {64 * MIB}\n"
        ]
        for name in self.cameras:
            lines.append(
                f'[[cameras]]\nname = "{name}"\nurl = "{self.sims[name].url(name)}"\n'
                "segment_seconds = 60\nstall_seconds = 4\n"
            )
        self.config.write_text("\n".join(lines), encoding="utf-8")

    def start_daemon(self) -> None:
        env = dict(
            os.environ, NOTIFY_SOCKET=self.manager.address, WATCHDOG_USEC=str(WATCHDOG_S * 10**6)
        )
        launched = time.monotonic()
        with (self.work / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nvr.cli", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self.manager.wait_for("READY=1", 60, after=launched)
        except AssertionError:
            raise RuntimeError("the daemon sent no READY=1 within 60 s") from None
        self.sampler = Sampler(self.proc.pid)

    def stop_daemon(self) -> int | None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def inject(self, kind: str) -> Injection:
        if kind == "restart":
            inj = Injection(kind, ["cam00"], now_ms())
            self.sims["cam00"].restart()
        elif kind == "sigstop":
            inj = Injection(kind, ["cam01"], now_ms())
            self.sims["cam01"].sigstop()
            time.sleep(20)
            self.sims["cam01"].sigcont()
        elif kind == "silent":
            sim = self.sims["cam02"]
            inj = Injection(kind, ["cam02"], now_ms())
            sim.stop()
            listener = SilentListener(sim.port)
            time.sleep(30)
            listener.close()
            sim.start()
        elif kind == "disk-full":
            filler = self.fs / "filler"
            fill_up(filler)
            inj = Injection(kind, list(self.cameras), now_ms())
            time.sleep(60)
            filler.unlink()
        else:
            raise ValueError(kind)
        inj.end_ms = now_ms()
        print(
            f"{time.strftime('%H:%M:%S')} injected {kind} on {','.join(inj.cameras)} "
            f"for {(inj.end_ms - inj.start_ms) / 1000:.1f} s",
            flush=True,
        )
        return inj

    def run(self) -> Report:
        total = self.args.minutes * 60
        warmup = min(300.0, max(60.0, total * 0.2))
        plan = schedule(total, warmup, self.args.slot, self.args.faults)
        print(f"plan: {[(int(t), k) for t, k in plan]}", flush=True)
        for sim in self.sims.values():
            sim.start()
        self.write_config()
        started = time.monotonic()
        self.start_daemon()
        for at, kind in plan:
            wait = started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.injections.append(self.inject(kind))
        wait = started + total - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        stopped_ms = now_ms()
        code = self.stop_daemon()
        print(f"daemon stopped, exit status {code}", flush=True)
        return self.analyse(warmup, stopped_ms)

    def analyse(self, warmup: float, stopped_ms: int) -> Report:
        report = Report(self.args.minutes, len(self.cameras), warmup)
        store = SegmentStore(self.root, f"sqlite:///{self.index}", exclusive=False)
        try:
            outages = {c: store.ledger.outages(c, 0) for c in self.cameras}
            segments = {
                c: sorted(store.segments(c), key=lambda s: s.start_ms) for c in self.cameras
            }
            events = store.events.since(None, 0)
        finally:
            store.close()
        report.replacements = sum(1 for e in events if e.kind == "recorder-replaced")
        report.segments = sum(len(v) for v in segments.values())
        report.recorded_hours = sum(s.duration_ms for v in segments.values() for s in v) / 3.6e6
        explained: set[int] = set()
        for inj in self.injections:
            for cam in inj.cameras:
                report.matches.append(self._match(inj, cam, outages[cam], explained))
        for cam in self.cameras:
            for o in outages[cam]:
                if o.id in explained:
                    continue
                if o.cause == "daemon-stopped" and o.start_ms >= stopped_ms - 15_000:
                    continue
                report.unexplained_outages.append(_describe(o))
            report.unexplained_holes += _holes(cam, segments[cam], outages[cam])
            report.overlaps += _overlaps(cam, segments[cam])
        self._resources(report, warmup)
        pings = self.manager.times("WATCHDOG=1")
        report.max_ping_gap_s = round(
            max((b - a for a, b in itertools.pairwise(pings)), default=0.0), 2
        )
        return report

    def _match(self, inj: Injection, cam: str, outages: list[Outage], explained: set[int]) -> Match:
        hits = [
            o
            for o in outages
            if o.start_ms <= inj.end_ms + 30_000
            and (o.end_ms is None or o.end_ms >= inj.start_ms - 5_000)
            and o.cause != "daemon-stopped"
        ]
        explained.update(o.id for o in hits)
        if len(hits) != 1 or hits[0].end_ms is None:
            return Match(
                inj.kind,
                cam,
                (inj.start_ms, inj.end_ms),
                [(o.start_ms, o.end_ms, o.cause) for o in hits],
                None,
                None,
                False,
            )
        (o,) = hits
        assert o.end_ms is not None
        ds = o.start_ms - inj.start_ms
        de = o.end_ms - inj.end_ms
        return Match(
            inj.kind,
            cam,
            (inj.start_ms, inj.end_ms),
            [(o.start_ms, o.end_ms, o.cause)],
            ds,
            de,
            abs(ds) <= TOLERANCE_MS and abs(de) <= TOLERANCE_MS,
        )

    def _resources(self, report: Report, warmup: float) -> None:
        assert self.sampler is not None
        samples = self.sampler.samples
        report.samples = samples
        after = [s for s in samples if s.t >= warmup]
        if len(after) >= 12:
            head, tail = after[:6], after[-6:]  # the first and the last minute
            for key in ("rss_kib", "fds", "threads"):
                first = sum(getattr(s, key) for s in head) / len(head)
                last = sum(getattr(s, key) for s in tail) / len(tail)
                report.first_last[key] = (round(first, 1), round(last, 1))
                report.growth[key] = round((last - first) / first * 100, 2)
        if len(samples) >= 2:
            span = samples[-1].t - samples[0].t
            report.cpu_percent = round((samples[-1].cpu_s - samples[0].cpu_s) / span * 100, 1)
            report.load_mean = round(sum(s.load1 for s in samples) / len(samples), 2)

    def close(self) -> None:
        self.stop_daemon()
        self.manager.close()
        for sim in self.sims.values():
            sim.stop()


def _describe(o: Outage) -> str:
    end = "open" if o.end_ms is None else f"{(o.end_ms - o.start_ms) / 1000:.1f} s"
    return f"{o.camera} {o.cause} at {o.start_ms} ({end}) {o.detail}"


def _covered(start: int, end: int, outages: list[Outage]) -> bool:
    return any(
        o.start_ms <= start + HOLE_MS and (o.end_ms is None or o.end_ms >= end - HOLE_MS)
        for o in outages
    )


def _holes(cam: str, segs: list[Segment], outages: list[Outage]) -> list[str]:
    out = []
    for a, b in itertools.pairwise(segs):
        if b.start_ms - a.end_ms > HOLE_MS and not _covered(a.end_ms, b.start_ms, outages):
            out.append(f"{cam}: {b.start_ms - a.end_ms} ms between {a.path.name} and {b.path.name}")
    return out


def _overlaps(cam: str, segs: list[Segment]) -> list[str]:
    return [
        f"{cam}: {b.path.name} starts {a.end_ms - b.start_ms} ms before {a.path.name} ends"
        for a, b in itertools.pairwise(segs)
        if b.start_ms < a.end_ms
    ]


def render(report: Report, injections: list[Injection]) -> str:
    lines = [
        f"soak: {report.minutes:g} min, {report.cameras} cameras, warm-up {report.warmup_s:.0f} s, "
        f"{report.segments} segments, {report.recorded_hours:.2f} h of video recorded",
        f"daemon CPU {report.cpu_percent}% of one core; machine load average "
        f"(1 min, mean of samples) {report.load_mean}",
        "",
        "| injection | camera | injected (s) | ledger | start Δ (ms) | end Δ (ms) | within 2 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report.matches:
        ledger = (
            "; ".join(
                f"{cause} {(end - start) / 1000 if end else float('nan'):.1f} s"
                for start, end, cause in m.ledger
            )
            or "none"
        )
        lines.append(
            f"| {m.kind} | {m.camera} | {(m.injected[1] - m.injected[0]) / 1000:.1f} | {ledger} "
            f"| {m.start_delta_ms} | {m.end_delta_ms} | {'yes' if m.ok else 'NO'} |"
        )
    ok = sum(1 for m in report.matches if m.ok)
    lines += [
        "",
        f"matched within 2 s: {ok}/{len(report.matches)}",
        f"ledger entries not caused by an injection: {len(report.unexplained_outages)}",
        *[f"  {x}" for x in report.unexplained_outages[:20]],
        f"holes between segments not in the ledger: {len(report.unexplained_holes)}",
        *[f"  {x}" for x in report.unexplained_holes[:20]],
        f"overlapping segments: {len(report.overlaps)}",
        *[f"  {x}" for x in report.overlaps[:20]],
        "after warm-up, first vs last minute: "
        + ", ".join(
            f"{k} {a:g} -> {b:g} ({report.growth[k]:+.1f}%)"
            for k, (a, b) in report.first_last.items()
        ),
        f"largest gap between WATCHDOG=1 pings: {report.max_ping_gap_s} s "
        f"(watchdog {WATCHDOG_S} s); recorder replacements: {report.replacements}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="soak test of the nvr daemon")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--cameras", type=int, default=16)
    parser.add_argument("--slot", type=float, default=120.0, help="seconds between injections")
    parser.add_argument(
        "--faults",
        type=lambda text: text.split(","),
        help=f"comma-separated kinds to repeat instead of the default mix ({', '.join(KINDS)})",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.cameras < 3:
        parser.error("--cameras must be at least 3 (cam00..cam02 take the camera faults)")
    if args.faults is not None and not set(args.faults) <= set(KINDS):
        parser.error(f"--faults: kinds are {', '.join(KINDS)}")
    if args.slot < 90:
        parser.error("--slot must be at least 90 s (the disk stays full for 60 s)")
    reason = gst_rtsp_unavailable()
    if reason is not None:
        print(f"camera simulator unavailable: {reason}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="nvr-soak-"))
    clips = clips_cache_dir(work / "clips")
    make_clips(clips)
    # ~62 KB/s per camera at the clips' bitrates, plus room: the filler takes the rest.
    size = int(args.cameras * 62_000 * args.minutes * 60 * 1.3 / MIB) + 256
    soak: Soak | None = None
    try:
        with tmpfs(work / "fs", size) as fs:
            soak = Soak(args, work, fs, clips)
            try:
                report = soak.run()
            finally:
                soak.close()
                with contextlib.suppress(FileNotFoundError):
                    (fs / "filler").unlink()
        text = render(report, soak.injections)
        print("\n" + text)
        if args.json is not None:
            doc = {"report": asdict(report), "injections": [asdict(i) for i in soak.injections]}
            args.json.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        good = (
            all(m.ok for m in report.matches)
            and not report.unexplained_outages
            and not report.unexplained_holes
            and all(abs(g) <= 5 for g in report.growth.values())
        )
        return 0 if good else 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
