"""Running as a service: the systemd unit, sd_notify (READY, STATUS, WATCHDOG, STOPPING) on a
real notification socket, and self-repair of a recorder thread that truly hangs.

The daemon runs in-process (`run_daemon` on the test's event loop) with the built-in test
camera; the "service manager" is a datagram socket read by a thread that timestamps every
notification. A hung recorder is a real thread blocked on an event only the test sets."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import av
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from nvr.config import CameraConfig, NvrConfig, StorageConfig
from nvr.daemon import REPAIR_INTERVAL, run_daemon, status_line, unhealthy
from nvr.ingest.sources import Source
from nvr.ingest.supervisor import REPLACED, RecorderHealth, RepairPolicy
from nvr.ingest.testpattern import TestPatternSource
from nvr.sdnotify import Notifier, socket_address, watchdog_seconds
from nvr.storage import SegmentStore
from tests.notify import NotifyListener
from tests.systemd_unit import UNIT, unit_settings

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


# --- the service manager's end of NOTIFY_SOCKET ------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = NotifyListener(f"@nvr-test-{uuid.uuid4().hex}")  # abstract: no path length limit
    try:
        yield sock
    finally:
        sock.close()


# --- sd_notify, pure ---------------------------------------------------------------------------


def test_no_notify_socket_means_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "2000000"}, pid=os.getpid())
    assert not notifier.enabled
    assert notifier.watchdog is None and notifier.ping_interval is None
    assert not notifier.ready("x") and not notifier.ping() and not notifier.stopping("x")


def test_watchdog_environment() -> None:
    pid = 4242
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, pid) == 30.0
    # Inherited from a watched parent: not ours to ping.
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}, pid) is None
    assert watchdog_seconds({}, pid) is None
    assert socket_address("@abc") == b"\0abc"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None


def test_notifications_reach_path_and_abstract_sockets(tmp_path: Path) -> None:
    for address in (str(tmp_path / "notify"), f"@nvr-test-{uuid.uuid4().hex}"):
        sock = NotifyListener(address)
        try:
            env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"}
            notifier = Notifier.from_environment(env, pid=os.getpid())
            assert notifier.ping_interval == 2.0
            assert notifier.ready("recording 1/2 cameras\n(cam2 reconnecting)")
            assert notifier.ping()
            assert notifier.stopping("bye")
            sock.wait_for("STOPPING=1", 5)
            assert [fs for _, fs in sock.messages] == [
                ["READY=1", "STATUS=recording 1/2 cameras (cam2 reconnecting)"],
                ["WATCHDOG=1"],
                ["STOPPING=1", "STATUS=bye"],
            ]
            notifier.close()
        finally:
            sock.close()
    # The manager went away: a notification is lost, the daemon is not disturbed.
    gone = Notifier(str(tmp_path / "notify"), 1.0)
    assert not gone.ping()
    gone.close()


def _health(
    idle: float, *, stuck_after: float = 30.0, repairable: bool = True, alive: bool = True
) -> RecorderHealth:
    return RecorderHealth("cam", "recording", idle, False, alive, stuck_after, repairable)


def test_watchdog_is_withheld_only_when_self_repair_cannot_help() -> None:
    watchdog = 60.0
    assert unhealthy([_health(5)], watchdog) == []
    # Stuck, but the supervisor is about to replace it: keep vouching for the process.
    assert unhealthy([_health(35)], watchdog) == []
    assert unhealthy([_health(65, stuck_after=100)], watchdog) == []
    # Stuck past the time a replacement takes, or no replacement allowed any more.
    assert unhealthy([_health(61)], watchdog) != []
    assert unhealthy([_health(200, stuck_after=100)], watchdog) != []
    assert unhealthy([_health(61, repairable=False)], watchdog) != []
    assert unhealthy([_health(0.1, repairable=False, alive=False)], watchdog) != []


def test_status_line_summarises_cameras_and_storage() -> None:
    from nvr.ingest.status import RecorderStatus

    def status(name: str, state: str) -> RecorderStatus:
        return RecorderStatus(name, state, 0, "", None, 0, 0, 0, 0.0, False)

    line = status_line(
        [status("a", "recording"), status("b", "reconnecting"), status("c", "recording")],
        [_health(40, stuck_after=30) for _ in range(1)],
        5 * 1024**3,
        None,
    )
    assert line == "recording 2/3 cameras (b reconnecting); 5.0 GiB free"
    assert "\n" not in line


def test_repair_policy_allows_for_slow_connections() -> None:
    policy = RepairPolicy(stuck_seconds=30)
    quick = CameraConfig(name="a", url="rtsp://127.0.0.1/x", stall_seconds=4)
    slow = CameraConfig(name="b", url="rtsp://127.0.0.1/x", stall_seconds=20)
    assert policy.stuck_after(quick) == 30
    assert policy.stuck_after(slow) == 80


# --- the unit file -----------------------------------------------------------------------------


def test_unit_declares_notify_watchdog_restart_and_hardening() -> None:
    s = unit_settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["always"]
    # Self-repair acts first, and a replacement in progress cannot delay pings past it.
    watchdog = float(s["WatchdogSec"][0])
    assert watchdog > RepairPolicy().stuck_seconds
    assert watchdog > 2 * (RepairPolicy().fence_timeout + REPAIR_INTERVAL)
    assert s["User"] == ["nvr"] and s["StateDirectory"] == ["nvr"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] == ["yes"]
    assert s["PrivateTmp"] == ["yes"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(s["LimitNOFILE"][0]) >= 16384
    assert s["ExecStart"][0].startswith("/opt/nvr/.venv/bin/nvr run -c /etc/nvr/nvr.toml")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # verify insists that ExecStart's program exists; the unit names the installed path, so
    # check a copy pointing at this environment's `nvr` (same arguments, same everything else).
    nvr = Path(sys.executable).with_name("nvr")
    assert nvr.exists(), nvr
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/nvr/.venv/bin/nvr " in text
    copy = tmp_path / "nvr.service"
    copy.write_text(text.replace("ExecStart=/opt/nvr/.venv/bin/nvr ", f"ExecStart={nvr} "))
    done = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == "", "warnings: " + done.stdout + done.stderr
    # And it does fail on a broken unit (the check can fail).
    copy.write_text(text.replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 or bad.stderr


# --- the daemon under a (simulated) service manager ----------------------------------------------


class _HangingSource:
    """The test pattern until `after` packets, then a read that blocks until `release`."""

    def __init__(
        self, inner: TestPatternSource, after: int, hung: threading.Event, release: threading.Event
    ) -> None:
        self._inner = inner
        self._after = after
        self._hung = hung
        self._release = release
        self.video: VideoStream = inner.video
        self.audio: AudioStream | None = None
        self.description = "test pattern that hangs"
        self.audio_note = ""

    def packets(self) -> Iterator[av.Packet[Any]]:
        for n, packet in enumerate(self._inner.packets()):
            if n == self._after:
                self._hung.set()
                self._release.wait()  # truly stuck: no timeout, no progress
            yield packet

    def close(self) -> None:
        self._inner.close()


class HangingOpener:
    """The built-in test camera whose first connection hangs, in `open()` or in `packets()`
    after `after` packets; later connections work."""

    __test__ = False

    def __init__(self, where: str, after: int = 30) -> None:
        self.where = where
        self.after = after
        self.hung = threading.Event()
        self.release = threading.Event()
        self.opens = 0
        self._lock = threading.Lock()

    def open(self) -> Source:
        with self._lock:
            self.opens += 1
            first = self.opens == 1
        if first and self.where == "open":
            self.hung.set()
            self.release.wait()
        source = TestPatternSource()
        if first and self.where == "packets":
            return _HangingSource(source, self.after, self.hung, self.release)
        return source

    def probe_reachable(self) -> bool:
        return True


def config_for(root: Path) -> NvrConfig:
    return NvrConfig(
        storage=StorageConfig(root=root, reserve_bytes=0),
        cameras=[
            CameraConfig(
                name="cam", url="builtin:testpattern", segment_seconds=10, stall_seconds=1.0
            )
        ],
    )


def notifier_for(listener: NotifyListener, watchdog: float) -> Notifier:
    env = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": str(int(watchdog * 1_000_000)),
        "WATCHDOG_PID": str(os.getpid()),
    }
    return Notifier.from_environment(env)


def block_loop(seconds: float) -> None:
    """Deliberately block the calling thread (the event loop, in the test below)."""
    time.sleep(seconds)


async def wait_until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `cond` on a worker thread (it may read the index) until true."""
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def in_thread(call: Callable[[], T]) -> T:
    """Run a blocking wait off the loop, so the daemon under test keeps running."""
    return await asyncio.to_thread(call)


class Daemon:
    """`run_daemon` as a task of the test's loop, with a read-only view of its index."""

    def __init__(self, root: Path, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.root = root
        self.task = task
        self.stop_event = stop

    def reader(self) -> SegmentStore:
        return SegmentStore(self.root, f"sqlite:///{self.root / 'index.db'}", exclusive=False)

    def outages(self) -> list[Any]:
        store = self.reader()
        try:
            return store.ledger.outages("cam")
        finally:
            store.close()

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)


def start_daemon(
    root: Path, notifier: Notifier, opener: HangingOpener | None, repair: RepairPolicy
) -> Daemon:
    stop = asyncio.Event()
    kwargs: dict[str, Any] = {}
    if opener is not None:
        kwargs["opener_factory"] = lambda _camera: opener
    task = asyncio.create_task(
        run_daemon(config_for(root), stop=stop, notifier=notifier, repair=repair, **kwargs),
        name="daemon-under-test",
    )
    return Daemon(root, task, stop)


@pytest.mark.slow
async def test_ready_then_pings_which_stop_while_the_loop_is_blocked(
    tmp_path: Path, listener: NotifyListener
) -> None:
    root = tmp_path / "store"
    watchdog = 2.0
    daemon = start_daemon(root, notifier_for(listener, watchdog), None, RepairPolicy())
    try:
        ready = await in_thread(lambda: listener.wait_for("READY=1", 20))
        assert (root / "index.db").exists()  # READY comes after the index is open
        assert listener.fields("STATUS=")[0].startswith("STATUS=recording 0/1 cameras")
        await in_thread(lambda: listener.wait_for("WATCHDOG=1", 5, after=ready))
        await wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 3, 10, "regular pings")

        blocked = time.monotonic()
        block_loop(4.0)  # the event loop (and so the daemon's heartbeat) stands still
        unblocked = time.monotonic()
        await in_thread(lambda: listener.wait_for("WATCHDOG=1", 5, after=unblocked))
        # A ping already in the socket when the loop stopped may land just after `blocked`.
        assert listener.times("WATCHDOG=1", blocked + 0.3, unblocked) == []
        before = listener.times("WATCHDOG=1", 0, blocked)
        assert len(before) >= 3 and all(b - a < watchdog for a, b in itertools.pairwise(before))
        await wait_until(
            lambda: any("recording 1/1" in f for f in listener.fields("STATUS=")),
            20,
            "STATUS with the camera recording",
        )
    finally:
        await daemon.stop()
    assert listener.times("STOPPING=1")


@pytest.mark.slow
async def test_no_watchdog_ping_while_a_recorder_hangs(
    tmp_path: Path, listener: NotifyListener
) -> None:
    """With self-repair exhausted (no replacement allowed), a hung recorder thread stops the
    pings while the loop itself keeps running (STATUS keeps coming), and they resume when
    the thread does."""
    opener = HangingOpener("packets", after=20)
    watchdog = 2.0
    repair = RepairPolicy(stuck_seconds=1.0, step_factor=0, max_replacements=0)
    daemon = start_daemon(tmp_path / "store", notifier_for(listener, watchdog), opener, repair)
    try:
        await in_thread(lambda: listener.wait_for("READY=1", 20))
        assert await in_thread(lambda: opener.hung.wait(30))
        hung = time.monotonic()
        quiet_from = hung + watchdog + 1.0  # pings stop once the thread is idle > watchdog
        # The loop is alive (STATUS keeps coming, naming the stuck camera), yet vouches for
        # nothing: watch a few seconds of that.
        later = await in_thread(lambda: listener.wait_for("STATUS=", 15, after=quiet_from + 3))
        assert any("cam stuck" in f for f in listener.fields("STATUS="))
        assert listener.times("WATCHDOG=1", quiet_from, later) == []
        assert listener.times("WATCHDOG=1", 0, hung), "pings before the hang"
        released = time.monotonic()
        opener.release.set()
        await in_thread(lambda: listener.wait_for("WATCHDOG=1", 10, after=released))
        assert opener.opens == 1  # no replacement was started
    finally:
        opener.release.set()
        await daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["packets", "open"])
async def test_stuck_recorder_is_replaced_and_recording_continues(
    tmp_path: Path, listener: NotifyListener, where: str
) -> None:
    opener = HangingOpener(where, after=30)
    watchdog = 4.0
    repair = RepairPolicy(stuck_seconds=2.0, step_factor=0)
    daemon = start_daemon(tmp_path / "store", notifier_for(listener, watchdog), opener, repair)
    old_thread: threading.Thread | None = None
    try:
        await in_thread(lambda: listener.wait_for("READY=1", 20))
        assert await in_thread(lambda: opener.hung.wait(30))
        old_thread = next(t for t in threading.enumerate() if t.name == "rec-cam")

        def replaced() -> bool:
            return any(o.cause == REPLACED for o in daemon.outages())

        await wait_until(replaced, 15, "the replacement in the outage ledger")
        # The old thread is really still stuck, and a second recorder works beside it (the
        # supervisor writes the ledger row before it builds and starts the replacement).
        await wait_until(
            lambda: sum(t.name == "rec-cam" for t in threading.enumerate()) == 2,
            15,
            "a second recorder thread beside the stuck one",
        )
        assert old_thread.is_alive()

        def resumed() -> bool:
            store = daemon.reader()
            try:
                (gap,) = [o for o in store.ledger.outages("cam") if o.cause == REPLACED]
                return gap.end_ms is not None and any(
                    s.start_ms >= gap.end_ms for s in store.segments("cam")
                )
            finally:
                store.close()

        await wait_until(resumed, 30, "a segment recorded by the replacement")
        assert opener.opens == 2
        # Self-repair kept the process healthy: no gap in the pings as long as the watchdog.
        pings = listener.times("WATCHDOG=1")
        assert max(b - a for a, b in itertools.pairwise(pings)) < watchdog

        # The abandoned thread wakes up: it must end without writing to the index.
        opener.release.set()
        thread = old_thread
        await in_thread(lambda: thread.join(15))
        assert not thread.is_alive()
        if where == "packets":  # its segment in flight is salvaged by the supervisor

            def salvaged() -> bool:
                store = daemon.reader()
                try:
                    return any(s.recovered for s in store.segments("cam"))
                finally:
                    store.close()

            await wait_until(salvaged, 10, "the abandoned segment to be salvaged")
    finally:
        opener.release.set()
        await daemon.stop()

    store = SegmentStore(tmp_path / "store", f"sqlite:///{tmp_path / 'store' / 'index.db'}")
    try:
        outages = store.ledger.outages("cam")
        (gap,) = [o for o in outages if o.cause == REPLACED]
        assert [o.cause for o in outages] == [REPLACED, "daemon-stopped"], outages
        assert gap.end_ms is not None and gap.end_ms > gap.start_ms
        assert any(e.kind == REPLACED for e in store.events.since("cam"))
        segments = sorted(store.segments("cam"), key=lambda s: s.start_ms)
        recovered = [s for s in segments if s.recovered]
        assert len(recovered) == (1 if where == "packets" else 0)
        for seg in recovered:  # what the stuck thread had written, before the gap
            assert seg.end_ms <= gap.start_ms + 1000, (seg, gap)
        for seg in segments:
            assert hashlib.sha256(seg.path.read_bytes()).hexdigest() == seg.sha256
            if not seg.recovered:
                assert seg.start_ms >= gap.end_ms  # nothing from two writers interleaved
        for a, b in itertools.pairwise(segments):
            assert b.start_ms >= a.end_ms, (a, b)
        assert not list((tmp_path / "store").rglob("*.part"))
    finally:
        store.close()
