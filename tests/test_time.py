"""Time checks: the server clock's synchronisation state, camera clocks from RTCP sender
reports, and server clock steps under a recording camera (an injected clock that steps, the
loopback RTSP simulator, a real store)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvr.clock_status import server_status_line
from nvr.ingest.sources import RtspOpener
from nvr.ingest.timecheck.monitor import ClockMonitor
from nvr.ingest.timecheck.notes import ClockNotes
from nvr.ingest.timecheck.rtcp import ClockedOpener, RtcpClockProbe
from nvr.ingest.timecheck.steps import CLOCK_STEP, ClockStepDetector
from nvr.storage import SegmentStore, now_ms
from nvr.storage.server_clock import (
    STA_UNSYNC,
    TIME_ERROR,
    ServerClockState,
    read_server_clock,
    server_clock_state,
)
from tests.api_rig import store_at
from tests.camsim import CameraSim
from tests.media import check_file
from tests.recording_rig import wait_for
from tests.scripted import Connection, SimulatedClock, run_script
from tests.scripted import open_store as open_scripted_store


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[tuple[SimulatedClock, SegmentStore]]:
    """A simulated clock and a store on it, for the scripted camera."""
    clock = SimulatedClock(now_ms())
    s = open_scripted_store(tmp_path / "store", clock)
    try:
        yield clock, s
    finally:
        s.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SegmentStore]:
    yield from store_at(tmp_path / "store")


# --- the server clock --------------------------------------------------------------------------


def test_adjtimex_answers_are_interpreted() -> None:
    ok = server_clock_state(0, 0x2001, 1500, 250_000, 20_000)  # PLL | NANO, 20 µs to slew
    assert ok.synchronised and ok.state == "ok"
    assert ok.est_error_s == pytest.approx(0.0015) and ok.offset_s == pytest.approx(20e-6)
    assert "synchronised (estimated error 1.5 ms)" in ok.describe()
    assert not server_clock_state(TIME_ERROR, 0, 0, 16_000_000, 0).synchronised
    flagged = server_clock_state(0, STA_UNSYNC, 0, 16_000_000, 0)
    assert not flagged.synchronised and flagged.state == "unsynchronised"
    assert "NOT synchronised (maximum error 16.000 s)" in flagged.describe()


def test_the_real_kernel_clock_state_is_read() -> None:
    state = read_server_clock()  # read-only adjtimex: no privilege, changes nothing
    assert 0.0 <= state.est_error_s <= state.max_error_s <= 16.5, state
    assert state.synchronised == (state.state != "unsynchronised")
    assert server_status_line().startswith(("server clock:", "WARNING server clock:"))


def test_unsynchronised_server_is_audited_once_and_its_recovery_too(store: SegmentStore) -> None:
    unsynced = ServerClockState(False, "unsynchronised", 0.0, 16.0, 0.0)
    synced = ServerClockState(True, "ok", 0.002, 0.05, 0.0)
    states = [unsynced, unsynced, synced, synced]
    monitor = ClockMonitor(store, read_server=lambda: states.pop(0))
    for _ in range(4):
        monitor.check_server()
    entries = [(e.action, e.target, e.outcome) for e in store.audit.entries(actor="system")]
    assert entries == [
        ("clock-warning", "server", "warning"),
        ("clock-recovered", "server", "ok"),
    ]
    assert store.audit.verify() == []
    assert server_status_line(lambda: unsynced).startswith("WARNING server clock: NOT synch")
    assert server_status_line(lambda: synced).startswith("server clock: synchronised")


def test_monitor_thread_runs_due_camera_checks_and_stops(store: SegmentStore) -> None:
    class Check:
        camera = "cam"

        def __init__(self) -> None:
            self.ran = threading.Event()
            self.wake: Callable[[], None] = lambda: None
            self.due = False

        def clock_check_due(self, now: float) -> bool:
            return self.due

        def check_clock(self) -> None:
            self.due = False
            self.ran.set()

        def set_waker(self, wake: Callable[[], None]) -> None:
            self.wake = wake

    check = Check()
    reads: list[float] = []

    def read() -> ServerClockState:
        reads.append(time.monotonic())
        return ServerClockState(True, "ok", 0.0, 0.1, 0.0)

    monitor = ClockMonitor(store, read_server=read, server_interval_s=3600)
    monitor.adopt("cam", check)
    monitor.start()
    try:
        wait_for(lambda: bool(reads), 5, "the first server clock reading")
        assert not check.ran.is_set()
        check.due = True
        check.wake()  # as an opener does after a connect
        assert check.ran.wait(5)
    finally:
        monitor.stop()
        monitor.thread.join(5)
    assert not monitor.thread.is_alive() and len(reads) == 1


# --- camera clocks -----------------------------------------------------------------------------


def test_rtcp_probe_measures_a_camera_30s_ahead() -> None:
    now = [1_700_000_000.0]
    realtime: list[int | None] = [None]
    # The camera's clock is 30 s ahead; its pts 0 was captured at server time now - 5.
    probe = RtcpClockProbe(lambda: realtime[0], Fraction(1, 90000), lambda: now[0], samples=20)
    assert probe.observe(0) is None  # no sender report yet
    realtime[0] = int((now[0] - 5 + 30) * 1e6)
    reading = None
    for i in range(20):
        pts = int((5 + i * 0.1) * 90000)
        now[0] = 1_700_000_000.0 + i * 0.1 + 0.04 + (0.03 if i % 3 else 0)  # 40-70 ms delays
        reading = probe.observe(pts)
    assert reading is not None and reading.source == "rtcp"
    assert reading.offset_s == pytest.approx(30 - 0.04, abs=1e-6)  # low by the least delay
    assert probe.done and probe.observe(0) is None


def test_rtcp_probe_discards_a_window_with_a_timestamp_jump() -> None:
    now = [100.0]
    probe = RtcpClockProbe(lambda: 0, Fraction(1, 1000), lambda: now[0], samples=10)
    for i in range(10):
        now[0] = 100.0 + i
        jump = 30_000 if i >= 5 else 0
        assert probe.observe(100_000 + i * 1000 + jump) is None
    assert not probe.done
    for i in range(10):
        now[0] = 200.0 + i
        reading = probe.observe(200_000 + i * 1000)
    assert reading is not None and reading.offset_s == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_rtcp_sender_reports_of_a_real_rtsp_server_give_the_camera_clock(
    camsim: CameraSim, store: SegmentStore
) -> None:
    rtsp = RtspOpener(
        camsim.url("h264aac"), username=None, password=None, transport="tcp", timeout_s=3.0
    )
    opener = ClockedOpener(rtsp, "cam", limit_s=2.0)
    opener.attach(ClockNotes(store))
    source = opener.open()
    try:
        for n, _packet in enumerate(source.packets()):
            if store.events.since("cam") or n > 300:
                break
    finally:
        source.close()
    (event,) = store.events.since("cam")
    assert event.kind == "clock-offset" and event.detail.startswith("rtcp:")
    # GStreamer stamps its sender reports from this machine's clock: no offset to speak of.
    assert event.value is not None and abs(event.value) < 1.0, event
    assert store.audit.entries(action="clock-warning") == []


# --- server clock steps ------------------------------------------------------------------------


def test_step_detector() -> None:
    d = ClockStepDetector()
    assert d.sample(1_000_000, 10.0) is None
    assert d.sample(1_000_100, 10.1) is None
    assert d.sample(1_000_200 + 900, 10.2) is None  # under the threshold
    step = d.sample(1_000_300 + 900 - 30_000, 10.3)
    assert step is not None and step.step_ms == -30_000
    assert step.span == (step.at_ms, step.at_ms + 30_000)
    step = d.sample(1_000_400 + 900 + 2_000, 10.4)
    assert step is not None and step.step_ms == 32_000
    # Slewing over a long quiet stretch (500 ppm of an hour = 1.8 s) is not a step.
    assert d.sample(1_000_400 + 900 + 2_000 + 3_601_800, 3610.4) is None


@given(
    st.lists(st.tuples(st.integers(1, 2_000), st.integers(-200, 200)), min_size=2, max_size=60),
    st.integers(0, 59),
    st.integers(1_500, 100_000).flatmap(lambda n: st.sampled_from([n, -n])),
)
def test_step_detector_finds_exactly_the_one_step(
    samples: list[tuple[int, int]], where: int, size: int
) -> None:
    """Samples `gap` ms apart, each wall reading off by up to ±200 ms; one step of `size`."""
    d = ClockStepDetector(threshold_ms=1000)
    mono, wall = 0.0, 1_700_000_000_000
    found: list[tuple[int, int]] = []
    at = where % len(samples)
    for i, (gap, jitter) in enumerate(samples):
        mono += gap / 1000
        wall += gap + (size if i == at else 0)
        step = d.sample(wall + jitter, mono)
        if step is not None:
            found.append((i, step.step_ms))
    if at == 0:
        assert found == []  # a step before the first sample cannot be seen
    else:
        assert [i for i, _ in found] == [at]
        assert abs(found[0][1] - size) <= 400


@pytest.mark.parametrize("step_ms", [-30_000, 30_000], ids=["back-30s", "forward-30s"])
def test_server_clock_step_makes_no_overlap_and_one_clock_event(
    scripted_clips: Path, simulated: tuple[SimulatedClock, SegmentStore], step_ms: int
) -> None:
    """A scripted camera on a simulated clock (tests/scripted.py) whose server wall clock
    steps 30 s back or forward 6 s into the recording; 25 s in 10 s segments."""
    clock, store = simulated
    script = [Connection(seconds=25, step_wall_at_s=6.0, step_wall_ms=step_ms)]
    run_script(store, scripted_clips, clock, script, segment_seconds=10)
    segs = store.segments("cam")
    for prev, seg in itertools.pairwise(segs):
        assert seg.start_ms >= prev.end_ms, (prev, seg)  # never overlapping nor backwards
        assert seg.end_ms - seg.start_ms == seg.duration_ms
    for seg in segs:
        found = check_file(seg.path)
        assert found.first_is_key and found.dts_monotonic
        assert abs(found.duration_s * 1000 - seg.duration_ms) <= 100
    (event,) = [o for o in store.ledger.outages("cam") if o.cause == CLOCK_STEP]
    assert event.end_ms is not None and abs(event.end_ms - event.start_ms - 30_000) <= 50
    assert ("forward" if step_ms > 0 else "back") in event.detail
    # The segment in flight at the step ends at the next keyframe; the next one starts on the
    # stepped clock, never before the previous end.
    (cut,) = [i for i, s in enumerate(segs) if s.discontinuity]
    assert cut >= 1
    a, b = segs[cut - 1], segs[cut]
    if step_ms > 0:
        assert abs(a.end_ms - event.start_ms) <= 1500, (a, event)
        assert abs(b.start_ms - event.end_ms) <= 1500, (b, event)
    else:
        assert b.start_ms == a.end_ms, (a, b)
