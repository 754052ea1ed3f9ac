"""Retention under a wrong or stepped server clock (issue 11, item 1; R2, R4, R11).

Real `nvr` processes under Debian's libfaketime (`faketime`) for the three reported cases:
(a) `nvr purge` run 31 days ahead of a store recorded minutes earlier, (b) a daemon whose
clock steps 31 days forward while it records, (c) footage recorded under a clock 40 days
slow, then the daemon restarted with the true clock; and a daemon SIGKILLed right after a
step back (its index must stay in recording order, the kill's outage as long as it was).
Daemon tests wait for retention passes by their count in status.json. Then, on simulated
clocks with a real store, the box that never had a time source (it must still purge, by
uptime evidence) and a hold that ends once the clock has been synchronised and stable.

The process tests are marked slow (each `nvr` start-up costs seconds); the fast tier keeps
their store-level guarantees (a step holds purges and deletes until an operator confirms, a
confirmed purge goes by evidence time) in the simulated-clock tests.

libfaketime fakes CLOCK_MONOTONIC and CLOCK_BOOTTIME too; the evidence of time is read from
`/proc/uptime`, which it does not touch, as no real clock step does (storage/clock.py).

One of the four files of the fault suite issue 11's proof asks for (`tests/test_faults.py`
there, split by item so pytest-xdist can spread them; all listed in docs/reliability.md).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvr.config import NvrConfig, RetentionConfig, StorageConfig
from nvr.retention import RetentionService
from nvr.storage import ClockSuspicious, SegmentStore, now_ms
from nvr.storage.clock import read_uptime_ms
from nvr.storage.media.fragments import scan_fragments
from nvr.storage.timestamps import DAY_MS
from tests.api_rig import run_api
from tests.camsim import CameraSim
from tests.media import check_file
from tests.recording_rig import wait_for
from tests.store_clock import BOOT_OFFSET, FakeClock, add_segment

NVR = [sys.executable, "-m", "nvr.cli"]
FAKETIME = shutil.which("faketime")
needs_faketime = pytest.mark.skipif(
    FAKETIME is None, reason="Debian package faketime (libfaketime) not installed"
)
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def config_file(
    tmp_path: Path, root: Path, camera_url: str | None = None, **retention: int
) -> Path:
    text = f'[storage]\nroot = "{root}"\nreserve_bytes = 0\n[retention]\ndays = 30\n'
    for key, value in retention.items():
        text += f"{key} = {value}\n"
    if camera_url is not None:
        text += (
            f'[[cameras]]\nname = "cam"\nurl = "{camera_url}"\nsegment_seconds = 10\n'
            "stall_seconds = 3.0\n"
        )
    path = tmp_path / "nvr.toml"
    path.write_text(text)
    return path


def nvr(args: list[str], cwd: Path, fake: str | None = None) -> subprocess.CompletedProcess[str]:
    """`nvr ARGS`, under `faketime -f FAKE` when given."""
    cmd = [*NVR, *args]
    if fake is not None:
        assert FAKETIME is not None
        cmd = [FAKETIME, "-f", fake, *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def read_store(root: Path) -> SegmentStore:
    return SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)


def recorded_minutes_ago(root: Path, count: int = 4) -> list[int]:
    """A store recorded by a real run of the recorder (this process, real clocks): `count`
    one-second segments from four minutes ago; returns their ids."""
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        start = now_ms() - 4 * 60_000
        for i in range(count):
            add_segment(store, "cam", start + i * 1000)
        return [s.id for s in store.segments("cam")]
    finally:
        store.close()


# --- (a) nvr purge with a clock 31 days ahead ------------------------------------------------


@pytest.mark.slow  # six `nvr` processes under libfaketime; the store's part: the Box tests below
@needs_faketime
def test_purge_31_days_ahead_refuses_and_says_why_then_a_confirmed_one_keeps_fresh_footage(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    ids = recorded_minutes_ago(root)
    config = config_file(tmp_path, root)

    done = nvr(["purge", "-c", str(config)], tmp_path, fake="+31d")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused, nothing deleted" in done.stderr
    assert "clock is suspicious" in done.stderr and "forward 31.0 days" in done.stderr
    assert "--i-confirm-clock" in done.stderr
    store = read_store(root)
    try:
        assert [s.id for s in store.segments("cam")] == ids
        assert all(s.path.exists() for s in store.segments("cam"))
        (refused,) = store.audit.entries(action="purge", outcome="refused")
        assert "clock" in refused.detail["why"]
    finally:
        store.close()

    # The door itself refuses too, whoever asks (here `nvr delete`).
    done = nvr(
        [
            "delete",
            "-c",
            str(config),
            "cam",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
        tmp_path,
        fake="+31d",
    )
    assert done.returncode == 1 and "clock is suspicious" in done.stderr, done.stderr

    done = nvr(["purge", "-c", str(config), "--i-confirm-clock"], tmp_path, fake="+31d")
    assert done.returncode == 2 and "--reason" in done.stderr

    # A human who checked may proceed (audited with who and why); the evidence still keeps
    # footage recorded minutes ago, whatever the clock says.
    done = nvr(
        ["purge", "-c", str(config), "--i-confirm-clock", "--reason", "checked the wall clock"],
        tmp_path,
        fake="+31d",
    )
    assert done.returncode == 0, done.stderr
    assert "clock confirmed by cli:" in done.stdout and "purged 0 segments" in done.stdout
    store = read_store(root)
    try:
        assert [s.id for s in store.segments("cam")] == ids
        (confirm,) = store.audit.entries(action="clock-confirm")
        assert confirm.actor.startswith("cli:")
        assert confirm.detail["reason"] == "checked the wall clock"
        assert store.verify().ok
    finally:
        store.close()
    done = nvr(["purge", "-c", str(config)], tmp_path)  # the true clock: nothing to refuse
    assert done.returncode == 0 and "purged 0 segments" in done.stdout, done.stderr


@pytest.mark.slow  # `nvr` processes under libfaketime; the store's part: the Box tests below
@needs_faketime
def test_a_confirmed_purge_under_a_stepped_clock_deletes_only_what_evidence_proves_old(
    tmp_path: Path,
) -> None:
    """Footage recorded 40 days ago by a recorder that has run since (simulated clock and
    uptime of this boot), plus today's: a confirmed purge 31 days ahead deletes the old."""
    root = tmp_path / "store"
    clock = FakeClock(now_ms() - 40 * DAY_MS)
    store = SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=clock,
        uptime=lambda: clock() - BOOT_OFFSET,
    )
    for i in range(3):
        add_segment(store, "cam", clock.now + i * 1000)
    store.close()
    fresh = recorded_minutes_ago(root, count=1)
    config = config_file(tmp_path, root)
    done = nvr(["purge", "-c", str(config)], tmp_path, fake="+31d")
    assert done.returncode == 1 and "clock is suspicious" in done.stderr
    done = nvr(
        ["purge", "-c", str(config), "--i-confirm-clock", "--reason", "NTP checked"],
        tmp_path,
        fake="+31d",
    )
    assert done.returncode == 0 and "purged 3 segments" in done.stdout, done.stderr
    store = read_store(root)
    try:
        kept = [s.id for s in store.segments("cam")]
        assert kept == fresh[-1:]  # today's footage stays
        (purge,) = store.audit.entries(action="purge", outcome="ok")
        assert purge.detail["segments"] == 3
        assert store.verify().ok
    finally:
        store.close()


# --- (b) a daemon whose clock steps 31 days forward while it records -----------------------


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "daemon.log"


def start_daemon(
    config: Path, log: Path, fake: str | None = None, fake_file: Path | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if fake is not None or fake_file is not None:
        env["LD_PRELOAD"] = LIBFAKETIME
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"  # as a real step: only the wall clock moves
        if fake_file is not None:
            env["FAKETIME_TIMESTAMP_FILE"] = str(fake_file)
            env["FAKETIME_CACHE_DURATION"] = "1"
        else:
            assert fake is not None
            env["FAKETIME"] = fake
    with log.open("ab") as out:
        return subprocess.Popen(
            [*NVR, "run", "-c", str(config)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def retention_passes(root: Path) -> int:
    """Retention passes the running daemon has finished (its status.json; -1 unreadable)."""
    try:
        doc = json.loads((root / "status.json").read_text())
    except (OSError, ValueError):
        return -1  # not written yet, or caught mid-rewrite
    progress = doc.get("retention") or {}
    return int(progress.get("passes", -1))


def wait_passes(root: Path, count: int, why: str) -> None:
    """Wait until the daemon has finished `count` more retention passes than now."""
    wait_for(lambda: retention_passes(root) >= 0, 30, "status.json with retention passes")
    target = retention_passes(root) + count
    wait_for(lambda: retention_passes(root) >= target, 60, f"{count} retention passes {why}")


def salvageable_part(root: Path) -> bool:
    """Whether a `.part` file under `root` holds a complete fragment."""
    for part in root.rglob("*.mp4.part"):
        try:
            scan = scan_fragments(part)
        except (OSError, ValueError):
            continue
        if scan.has_moov and scan.fragments > 0:
            return True
    return False


def recording(root: Path) -> bool:
    try:
        return '"state": "recording"' in (root / "status.json").read_text()
    except OSError:
        return False


@pytest.mark.slow
@needs_faketime
def test_daemon_clock_stepping_31_days_forward_purges_nothing_recorded_before(
    tmp_path: Path, camsim: CameraSim, daemon_log: Path
) -> None:
    root = tmp_path / "store"
    before = recorded_minutes_ago(root)
    config = config_file(tmp_path, root, camsim.url("h264"), interval_seconds=1)
    fake = tmp_path / "faketime"
    fake.write_text("+0\n")
    proc = start_daemon(config, daemon_log, fake_file=fake)
    try:
        wait_for(lambda: recording(root), 120, "the daemon to record")
        stepped_ms = now_ms() + 31 * DAY_MS
        fake.write_text("+31d\n")
        store = read_store(root)
        try:
            wait_for(lambda: store.clock_verdict().hold is not None, 15, "the step to be held")
            # Footage recorded after the step (stamped 31 days on) makes everything before
            # it look 31 days old to the wall clock; passes run every second.
            wait_for(
                lambda: any(s.start_ms >= stepped_ms - 60_000 for s in store.segments("cam")),
                30,
                "a segment recorded on the stepped clock",
            )
            wait_for(lambda: b"purging held back" in daemon_log.read_bytes(), 10, "a held pass")
            wait_passes(root, 3, "after the first held one")
            ids = [s.id for s in store.segments("cam")]
            assert ids[: len(before)] == before, daemon_log.read_text()
            assert all(s.path.exists() for s in store.segments("cam"))
            assert store.audit.entries(action="purge", outcome="ok") == []
            (step,) = store.audit.entries(action="clock-step")
            assert step.detail["step_ms"] > 30 * DAY_MS
        finally:
            store.close()
        status = nvr(["status", "-c", str(config)], tmp_path)
        assert "WARNING retention: purging HELD BACK" in status.stdout, status.stdout
        assert "stepped forward 31.0 days" in status.stdout
        assert "--i-confirm-clock" in status.stdout
        assert "recorder run: pid" in status.stdout
    finally:
        stop(proc)
    assert b"server clock stepped forward" in daemon_log.read_bytes()


# --- (c) recorded under a clock 40 days slow, restarted with the true clock ----------------


@pytest.mark.slow
@needs_faketime
def test_footage_recorded_40_days_slow_is_not_purged_when_the_true_clock_returns(
    tmp_path: Path, camsim: CameraSim, daemon_log: Path
) -> None:
    root = tmp_path / "store"
    config = config_file(tmp_path, root, camsim.url("h264"), interval_seconds=1)
    proc = start_daemon(config, daemon_log, fake="-40d")
    try:
        wait_for(lambda: recording(root), 120, "the daemon to record, 40 days slow")
        wait_for(lambda: any(root.rglob("*.mp4")), 120, "a segment recorded 40 days slow")
    finally:
        stop(proc)  # the segment in flight is finished and indexed
    store = read_store(root)
    try:
        slow = store.segments("cam")
        assert slow and all(s.end_ms < now_ms() - 39 * DAY_MS for s in slow)
    finally:
        store.close()

    proc = start_daemon(config, daemon_log)
    try:
        wait_for(lambda: recording(root), 120, "the daemon to record on the true clock")
        wait_passes(root, 3, "on the true clock")
    finally:
        stop(proc)
    store = read_store(root)
    try:
        segs = store.segments("cam")
        assert [s.id for s in segs[: len(slow)]] == [s.id for s in slow]
        assert segs[-1].end_ms > now_ms() - 60_000  # today's footage is the newest
        verdict = store.clock_verdict()
        assert verdict.held and "forward 40.0 days" in verdict.reason
    finally:
        store.close()
    # An operator confirms the (now true) clock: still nothing recorded minutes ago goes.
    done = nvr(
        ["purge", "-c", str(config), "--i-confirm-clock", "--reason", "NTP now synchronised"],
        tmp_path,
    )
    assert done.returncode == 0 and "purged 0 segments" in done.stdout, done.stderr
    store = read_store(root)
    try:
        assert [s.id for s in store.segments("cam")[: len(slow)]] == [s.id for s in slow]
        assert not store.clock_verdict().held
    finally:
        store.close()


# --- a kill right after a step back: timeline order, and the outage's real length ----------


@pytest.mark.slow
@needs_faketime
def test_a_kill_after_a_step_back_keeps_footage_in_order_and_the_outage_as_long_as_it_was(
    tmp_path: Path, camsim: CameraSim, daemon_log: Path
) -> None:
    """The clock steps back 5 days under a recording daemon, which cuts a segment; the
    daemon is SIGKILLed right after that cut (the new segment in flight, its `.part` file
    not yet 2 s old) and restarted under the same clock. Before: the salvaged segment was
    indexed at its wall-clock name, 5 days before the footage it follows, and the kill's
    `not-running` outage was zero long. Now: the index is in recording order, nothing
    overlaps, every file plays, and the outage lasts at least from the kill to the
    restart's run (by the kernel's uptime, which no step moves)."""
    root = tmp_path / "store"
    config = config_file(tmp_path, root, camsim.url("h264"), interval_seconds=1)
    fake = tmp_path / "faketime"
    fake.write_text("+0\n")
    proc = start_daemon(config, daemon_log, fake_file=fake)
    store = read_store(root)
    try:
        wait_for(lambda: recording(root), 120, "the daemon to record")
        wait_for(lambda: bool(store.segments("cam")), 60, "a first segment")
        indexed = len(store.segments("cam"))
        stepped_up = read_uptime_ms()  # the segment in flight at the kill begins after this
        fake.write_text("-5d\n")
        wait_for(
            lambda: any(o.cause == "clock-step" for o in store.ledger.outages("cam")),
            30,
            "the recorder to see the step",
        )
        wait_for(lambda: len(store.segments("cam")) > indexed, 30, "the step's cut")
        # Kill once the segment the cut began has a complete fragment (about 1 s: one GOP),
        # so there is footage to salvage; its `.part` file is then about 1 s old.
        wait_for(lambda: salvageable_part(root), 30, "a fragment after the cut")
        proc.kill()
        killed_up = read_uptime_ms()
        proc.wait(30)
        parts = list(root.rglob("*.mp4.part"))
        proc = start_daemon(config, daemon_log, fake_file=fake)
        wait_for(lambda: len(store.runs(2)) == 2 and store.runs(1)[0].pid == proc.pid, 120, "run")
        restarted_up = store.runs(1)[0].started_uptime_ms
        wait_for(
            lambda: any(
                o.cause == "not-running" and o.end_ms is not None
                for o in store.ledger.outages("cam")
            ),
            120,
            "the restarted daemon to record",
        )
        seen_up = read_uptime_ms()
        stop(proc)
        segs = store.segments("cam")
        for prev, seg in itertools.pairwise(segs):
            assert seg.start_ms >= prev.end_ms, (prev, seg, daemon_log.read_text())
        for seg in segs:
            found = check_file(seg.path)
            assert found.first_is_key and found.dts_monotonic, seg.path
            assert found.decoded >= found.frames - 2, (seg.path, found)
        assert parts and not any(p.exists() for p in parts), parts
        assert [s.path.name for s in segs if s.recovered] == [
            p.name.removesuffix(".part") for p in parts
        ]
        (outage,) = [o for o in store.ledger.outages("cam") if o.cause == "not-running"]
        assert outage.duration_ms is not None
        # At least the time the daemon was dead (from the kill to its next run); at most
        # from the step (the footage in flight at the kill began after it) until the test
        # saw the daemon record again.
        down, most = restarted_up - killed_up, seen_up - stepped_up
        assert down <= outage.duration_ms <= most, (outage, down, most, daemon_log.read_text())
        assert store.audit.entries(action="purge", outcome="ok") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        store.close()


# --- the box with no time source, and a hold that ends by itself --------------------------


FUTURE = now_ms() + 400 * DAY_MS
"""A simulated box's clock starts here: after every real creation time (`created_ms` is
stamped by the real clock), so the newest footage's time is the box's own."""


class Box:
    """A simulated machine: wall clock, uptime, boot and the kernel's sync state."""

    def __init__(self, wall: int) -> None:
        self.wall = wall
        self.up = 1000
        self.boot = "boot-1"
        self.synced = False

    def run(self, ms: int) -> None:
        self.wall += ms
        self.up += ms

    def reboot(self, down_ms: int) -> None:
        self.wall += down_ms
        self.up = 1000
        self.boot = f"boot-{int(self.boot.split('-')[1]) + 1}"

    def open(self, root: Path, exclusive: bool = True) -> SegmentStore:
        return SegmentStore(
            root,
            f"sqlite:///{root / 'index.db'}",
            exclusive=exclusive,
            clock=lambda: self.wall,
            uptime=lambda: self.up,
            synchronised=lambda: self.synced,
            boot_id=self.boot,
            clock_stable_s=600,
        )


def service(root: Path, store: SegmentStore) -> RetentionService:
    return RetentionService(
        NvrConfig(storage=StorageConfig(root=root), retention=RetentionConfig()), store
    )


def record_days(box: Box, store: SegmentStore, days: float) -> None:
    """Record one segment every 6 hours for `days` of the box's time."""
    for _ in range(round(days * 4)):
        add_segment(store, "cam", box.wall - 1000)
        box.run(DAY_MS // 4)
        store.clock_heartbeat()


def test_a_box_that_never_synchronised_still_purges_by_uptime_evidence(tmp_path: Path) -> None:
    root = tmp_path / "store"
    box = Box(FUTURE)
    store = box.open(root)
    record_days(box, store, 35)
    purge = service(root, store)
    verdict = store.clock_verdict()
    assert not verdict.held and "not synchronised" in verdict.describe()
    # 35 days of uptime: what is older than 30 days by both clocks goes, and only that.
    assert purge.purge_once() == 20
    oldest = store.segments("cam")[0]
    assert box.wall - oldest.end_ms < 30 * DAY_MS + DAY_MS // 4
    store.close()

    # Powered off for 10 days: an unsynchronised clock proves no downtime, so the footage
    # from before is kept longer by the downtime, never deleted earlier.
    box.reboot(10 * DAY_MS)
    store = box.open(root)
    purge = service(root, store)
    assert purge.purge_once() == 0  # the wall clock alone says 10 more days have passed
    record_days(box, store, 2)
    # Two days of uptime free two days of footage (8 segments, and the one the newest
    # footage's time held back before): by the wall clock it is all 39 days old and more.
    assert purge.purge_once() == 9
    assert box.wall - store.segments("cam")[0].end_ms > 39 * DAY_MS
    store.close()


def test_a_step_on_a_box_without_time_source_holds_until_an_operator_confirms(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    box = Box(FUTURE)
    store = box.open(root)
    record_days(box, store, 31)
    box.wall += 31 * DAY_MS  # someone sets the date a month ahead
    verdict = store.clock_heartbeat()
    assert verdict.held and verdict.hold is not None and "forward 31.0 days" in verdict.reason
    record_days(box, store, 1)
    count = len(store.segments("cam"))
    purge = service(root, store)
    assert purge.purge_once() == 0 and len(store.segments("cam")) == count
    with pytest.raises(ClockSuspicious, match=r"forward 31\.0 days"):
        store.delete_range("cam", 0, box.wall, actor="admin")
    # Still held after a restart of the recorder (the hold is in the index).
    store.close()
    box.run(60_000)
    store = box.open(root)
    assert store.clock_verdict().held
    cli = box.open(root, exclusive=False)
    cli.confirm_clock(actor="cli:alice", reason="set the date by hand from a radio clock")
    cli.close()
    assert not store.clock_heartbeat().held
    # Purged by evidence only: 32 days of uptime, not the 63 days the wall clock claims.
    assert service(root, store).purge_once() == 9  # the first 2 days and a minute
    assert store.segments("cam")[0].end_ms > FUTURE + 2 * DAY_MS
    (confirm,) = store.audit.entries(action="clock-confirm")
    assert confirm.actor == "cli:alice" and "radio clock" in confirm.detail["reason"]
    store.close()


def test_a_hold_ends_once_the_clock_is_synchronised_and_stable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    box = Box(FUTURE)
    box.synced = True
    store = box.open(root)
    record_days(box, store, 31)
    box.wall -= 3 * 3_600_000  # NTP steps the clock back three hours
    assert store.clock_heartbeat().held
    box.run(300_000)
    assert store.clock_heartbeat().held  # 5 of the 10 stable minutes
    box.synced = False
    box.run(300_000)
    assert store.clock_heartbeat().held  # sync lost: the count starts again
    box.synced = True
    box.run(300_000)
    assert store.clock_heartbeat().held  # synchronised again: stable from here
    box.run(300_000)
    assert store.clock_heartbeat().held
    box.run(301_000)
    assert not store.clock_heartbeat().held
    (cleared,) = store.audit.entries(action="clock-confirm")
    assert cleared.actor == "system" and "stable" in cleared.detail["reason"]
    assert service(root, store).purge_once() > 0
    store.close()


def test_uptime_is_read_from_the_kernel_not_from_the_faked_clocks() -> None:
    """`/proc/uptime` against CLOCK_BOOTTIME of this (unfaked) process: the same clock."""
    a = read_uptime_ms()
    b = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000
    assert abs(a - b) < 100


def test_health_says_purging_is_held_and_what_to_do(users_template: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    # A recorder run whose clock was set 31 days ahead (against this boot's uptime).
    SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=lambda: now_ms() + 31 * DAY_MS,
        uptime=read_uptime_ms,
    ).close()
    for api in run_api(root):
        with api.as_user("vera") as c:
            health = c.get("/api/health").json()
            assert health["status"] == "degraded" and health["retention_held"] is True
            assert any(
                "purging held back" in r and "--i-confirm-clock" in r for r in health["reasons"]
            )
            assert "HELD BACK" in health["retention_clock"]
            api.store.confirm_clock(actor="cli:olga", reason="checked against a GPS clock")
            health = c.get("/api/health").json()
            assert health["status"] == "ok" and health["retention_held"] is False
            assert "HELD" not in health["retention_clock"]
            assert not any("purging held back" in r for r in health["reasons"])
