"""The recorder against a scripted camera on a simulated clock (tests/scripted.py): segment
boundaries, gaps and the outage ledger, reconnects and the back-off's probe, timestamp jumps
and server clock steps. Real recorder threads, a real SQLite store, every file reopened with
PyAV; no RTSP server and no wall-clock waits, so each test takes well under a second of work.
The same behaviour against a real RTSP camera is in tests/test_recording.py (marked slow)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvr.ingest.errors import AuthRejected, CameraUnreachable, StreamEnded, StreamStalled
from nvr.ingest.recorder import stagger_phase
from nvr.storage import SegmentStore, now_ms
from nvr.storage.timestamps import DAY_MS
from tests.media import check_file
from tests.recording_rig import assert_contiguous
from tests.scripted import (
    BOOT_OFFSET,
    Connection,
    Refused,
    SimulatedClock,
    Step,
    open_store,
    open_store_on_uptime,
    record_then_kill,
    run_script,
)

CODECS = {"h264": "h264", "h264aac": "h264", "h265": "hevc", "bframes": "h264"}


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(now_ms())


@pytest.fixture
def store(tmp_path: Path, clock: SimulatedClock) -> Iterator[SegmentStore]:
    s = open_store(tmp_path / "store", clock)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("clip", list(CODECS))
def test_segments_are_cut_at_the_first_keyframe_after_the_target(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore, clip: str
) -> None:
    """35 s in 10 s segments: the first shortened by the camera's stagger phase and cut at
    the next keyframe (one a second), then 10 s each, then the rest at stop; back to back in
    wall time, every file starting with a keyframe and as long as the index says."""
    began = clock.wall_ms()
    run_script(store, scripted_clips, clock, [Connection(clip, seconds=35)])
    segs = store.segments("cam")
    first = math.ceil(10 - stagger_phase("cam", 10))
    assert [s.duration_ms for s in segs] == [first * 1000, 10_000, 10_000, (15 - first) * 1000]
    assert segs[0].start_ms == began
    assert segs[-1].end_ms == began + 35_000
    assert_contiguous(segs)
    for seg in segs:
        found = check_file(seg.path, decode=False)
        assert found.video_codec == CODECS[clip]
        assert found.frames == seg.frames == seg.duration_ms // 100
        if clip == "h264aac":  # the audio along, as long as the video within a frame
            assert found.audio_codec == "aac" and found.audio_packets > 0
            assert abs(found.audio_packets * 1024 / 16_000 - seg.duration_ms / 1000) <= 0.13
    (outage,) = store.ledger.outages("cam")
    assert outage.cause == "daemon-stopped" and outage.start_ms == segs[-1].end_ms


def test_camera_gone_and_back_is_one_outage_from_last_footage_to_first(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore
) -> None:
    """The camera hangs up, refuses three connections, then answers the back-off's probe:
    one outage (named by the last failure) from the end of the footage to the start of the
    next, and the probe cuts the fourth back-off (4 s) short: 0.5 + 1 + 2 s of waiting."""
    script: list[Step] = [
        Connection(seconds=12, end=StreamEnded),
        Refused(CameraUnreachable),
        Refused(CameraUnreachable),
        Refused(CameraUnreachable),
        Connection(seconds=12),
    ]
    rec = run_script(store, scripted_clips, clock, script)
    segs = store.segments("cam")
    outages = store.ledger.outages("cam")
    assert [o.cause for o in outages] == ["unreachable", "daemon-stopped"]
    gap = outages[0]
    before = [s for s in segs if s.end_ms <= gap.start_ms]
    after = [s for s in segs if s.start_ms >= gap.start_ms]
    assert before and after and len(before) + len(after) == len(segs)
    assert gap.start_ms == before[-1].end_ms
    assert gap.end_ms == after[0].start_ms
    assert gap.end_ms - gap.start_ms == 3_500
    assert sum(s.duration_ms for s in segs) == 24_000
    assert_contiguous(before)
    assert_contiguous(after)
    assert rec.status().reconnects == 4  # the end, three refusals (the stop is not one)


def test_a_stall_waits_out_its_back_off_when_the_connection_was_short(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore
) -> None:
    """A stream that stalls (3 s without media) after 5 s: a `stalled` outage from the end of
    the footage; the camera answers the probe at once, but a connection that recorded only a
    few seconds does not cut the back-off short (a tight failure loop otherwise)."""
    script: list[Step] = [
        Connection(seconds=5, end=StreamStalled, silence_s=3.0),
        Connection(seconds=5),
    ]
    run_script(store, scripted_clips, clock, script)
    segs = store.segments("cam")
    gap, stop = store.ledger.outages("cam")
    assert gap.cause == "stalled" and stop.cause == "daemon-stopped"
    assert gap.start_ms == segs[0].end_ms
    assert gap.end_ms == segs[1].start_ms
    assert gap.end_ms - gap.start_ms == 3_000 + 500  # the silence, then the first back-off


def test_a_rejected_login_is_not_probed_and_backs_off_in_full(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore
) -> None:
    """A camera refusing the login from the start: one `auth-rejected` outage from the first
    attempt until footage begins; its back-off is never cut short by the probe (the camera
    answers, but a wrong password does not heal by itself)."""
    began = clock.wall_ms()
    script: list[Step] = [Refused(AuthRejected), Refused(AuthRejected), Connection(seconds=3)]
    run_script(store, scripted_clips, clock, script)
    (seg,) = store.segments("cam")
    gap, _stop = store.ledger.outages("cam")
    assert gap.cause == "auth-rejected"
    assert gap.start_ms == began
    assert gap.end_ms == seg.start_ms == began + 500 + 1_000


def test_timestamp_jump_starts_a_new_segment_and_is_recorded(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore
) -> None:
    """The camera's timestamps jump an hour ahead mid-segment: the segment ends there, the
    next is marked as a discontinuity and starts where the previous ended (no gap: the
    camera kept sending), a `discontinuity` event is written, and no outage."""
    script = [Connection(seconds=20, jump_at_s=8.0, jump_s=3600.0)]
    run_script(store, scripted_clips, clock, script, segment_seconds=60)
    segs = store.segments("cam")
    assert [s.duration_ms for s in segs] == [8_000, 12_000]
    assert [s.discontinuity for s in segs] == [False, True]
    assert segs[1].start_ms == segs[0].end_ms
    assert_contiguous(segs)
    (event,) = [e for e in store.events.since("cam") if e.kind == "discontinuity"]
    assert event.value is not None and abs(event.value - 3600) <= 0.1  # within a frame
    assert [o.cause for o in store.ledger.outages("cam")] == ["daemon-stopped"]


@pytest.mark.parametrize("jump_s", [-2.0, -0.5, 3600.0])
def test_a_slow_commit_at_a_timestamp_jump_leaves_no_gap(
    scripted_clips: Path,
    clock: SimulatedClock,
    store: SegmentStore,
    jump_s: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commit of the segment cut by a timestamp jump takes 1.5 s (a slow fsync on a
    loaded machine): the packets meanwhile wait in the socket and are read late. The next
    segment still starts where the previous one ended, because its start comes from when
    its first packet arrived, not from when the recorder got round to opening its file (the
    CI failure: a segment 1413 ms after the previous end)."""
    commit = store.commit
    slow = [True]

    def slow_commit(*args: object, **kwargs: object) -> object:
        if slow[0]:
            slow[0] = False
            clock.advance(1.5)
        return commit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "commit", slow_commit)
    script = [Connection(seconds=20, jump_at_s=8.0, jump_s=jump_s)]
    run_script(store, scripted_clips, clock, script, segment_seconds=60)
    assert not slow[0], "the jump's cut never committed"
    segs = store.segments("cam")
    assert [s.discontinuity for s in segs] == [False, True], segs
    assert segs[1].start_ms == segs[0].end_ms, segs
    assert_contiguous(segs)


def test_a_server_clock_step_is_written_down_and_never_overlaps_footage(
    scripted_clips: Path, clock: SimulatedClock, store: SegmentStore
) -> None:
    """The server's wall clock steps 5 s back mid-recording: a closed `clock-step` row in
    the ledger, a new segment from the step on, and segment times that never go back."""
    script = [Connection(seconds=20, step_wall_at_s=8.0, step_wall_ms=-5_000)]
    run_script(store, scripted_clips, clock, script, segment_seconds=60)
    segs = store.segments("cam")
    assert len(segs) == 2, segs
    assert segs[1].start_ms >= segs[0].end_ms
    assert sum(s.duration_ms for s in segs) == 20_000
    steps = [o for o in store.ledger.outages("cam") if o.cause == "clock-step"]
    assert len(steps) == 1 and steps[0].end_ms is not None


def test_kills_after_server_clock_steps_back_keep_the_timeline_in_order_and_the_gaps_real(
    tmp_path: Path, scripted_clips: Path
) -> None:
    """Issue 11, item 1's leftovers: the server clock steps back (days) while the recorder
    runs and while it is down, and the recorder is killed with a segment in flight each
    time, once less than the 2 s a `.part` file takes to be renamed to its settled start.
    Every salvaged segment must be indexed after the footage it follows (ids and times in
    recording order, nothing overlapping), every file must still play, and each kill's
    `not-running` outage must last the real time nothing was recorded (before: zero long,
    the footage after the restart stamped on from the previous end)."""
    clock = SimulatedClock(now_ms())
    root = tmp_path / "store"
    base = clock.wall_ms() - BOOT_OFFSET - round(clock.monotonic() * 1000)
    parts: list[Path | None] = []
    downs = [30.0, 20.0, 10.0]

    def run(script: list[Step], kill: bool) -> None:
        store = open_store_on_uptime(root, clock, base)
        try:
            store.recover()
            if kill:
                parts.append(record_then_kill(store, scripted_clips, clock, script))
            else:
                run_script(store, scripted_clips, clock, script)
        finally:
            store.close()

    # 1. A kill 8.5 s into the third segment.
    run([Connection(seconds=25.5)], kill=True)
    # 2. Down 30 s, during which the clock is set back 5 days; killed 1.5 s after the
    #    restart's first keyframe (its `.part` not yet renamed to a settled start).
    clock.advance(downs[0])
    clock.step_wall(-5 * DAY_MS)
    run([Connection(seconds=1.5)], kill=True)
    # 3. Down 20 s; NTP steps the clock back 2 days 12 s into the recording, which cuts a
    #    segment; killed 2 s later, right after that cut.
    clock.advance(downs[1])
    run([Connection(seconds=14.0, step_wall_at_s=12.0, step_wall_ms=-2 * DAY_MS)], kill=True)
    # 4. Down 10 s, then a clean stop.
    clock.advance(downs[2])
    run([Connection(seconds=12.0)], kill=False)

    assert all(p is not None for p in parts), parts  # a segment was in flight each time
    store = open_store_on_uptime(root, clock, base)
    try:
        segs = store.segments("cam")  # in index (id) order
        assert sum(s.recovered for s in segs) == 3
        for prev, seg in itertools.pairwise(segs):
            assert seg.start_ms >= prev.end_ms, (prev, seg)  # recording order, no overlap
        for seg in segs:
            found = check_file(seg.path)
            assert found.first_is_key and found.dts_monotonic, seg.path
            assert found.decoded >= found.frames - 2, (seg.path, found)
            assert seg.path == store.segment_path("cam", seg.start_ms)
        kills = [o for o in store.ledger.outages("cam") if o.cause == "not-running"]
        assert len(kills) == 3, store.ledger.outages("cam")
        for outage, down in zip(kills, downs, strict=True):
            assert outage.duration_ms is not None
            # The downtime, plus at most the fragment in flight lost by the kill (a frame
            # of tolerance for the start estimate).
            assert down * 1000 - 100 <= outage.duration_ms <= down * 1000 + 1_100, outage
        steps = [o for o in store.ledger.outages("cam") if o.cause == "clock-step"]
        assert len(steps) == 1  # the one seen while recording
        assert len(store.audit.entries(action="clock-step")) == 2  # both held
        assert store.verify().ok
    finally:
        store.close()


@pytest.mark.parametrize("step_ms", [-5 * DAY_MS, 0, 3 * DAY_MS], ids=["back", "none", "forward"])
@pytest.mark.parametrize(
    "before_kill",
    [
        # The kill lands in the first segment after a forward step (its times jumped ahead
        # with the clock, over no real time) ...
        [Connection(seconds=14.0, step_wall_at_s=12.0, step_wall_ms=3 * DAY_MS)],
        # ... or in the first segment after the camera was gone for 5 s (a real gap).
        [Connection(seconds=12.0), Refused(seconds=5.0), Connection(seconds=3.0)],
    ],
    ids=["after-a-forward-step", "after-a-camera-outage"],
)
def test_a_kill_then_a_clock_step_while_down_gives_the_outage_its_real_length(
    tmp_path: Path, scripted_clips: Path, before_kill: list[Step], step_ms: int
) -> None:
    """The segment in flight at the kill is salvaged at the restart (stamped then); the
    real time since the footage ended is measured from the segment before it plus what
    followed in real time, so neither a forward step's jump nor an earlier outage is
    counted as downtime. A clock set back while the daemon was down cannot shorten the
    kill's outage to nothing, and one set forward does not lengthen it by the step: that
    span is a `clock-step` row of its own, as a running recorder writes."""
    clock = SimulatedClock(now_ms())
    root = tmp_path / "store"
    base = clock.wall_ms() - BOOT_OFFSET - round(clock.monotonic() * 1000)
    store = open_store_on_uptime(root, clock, base)
    assert record_then_kill(store, scripted_clips, clock, before_kill) is not None
    steps_before = [o for o in store.ledger.outages("cam") if o.cause == "clock-step"]
    store.close()
    clock.advance(20.0)
    clock.step_wall(step_ms)
    store = open_store_on_uptime(root, clock, base)
    try:
        (salvaged,) = store.recover()
        run_script(store, scripted_clips, clock, [Connection(seconds=12.0)])
        segs = store.segments("cam")
        assert salvaged in segs and salvaged.recovered
        for prev, seg in itertools.pairwise(segs):
            assert seg.start_ms >= prev.end_ms, (prev, seg)
        (outage,) = [o for o in store.ledger.outages("cam") if o.cause == "not-running"]
        assert outage.duration_ms is not None and outage.end_ms is not None
        assert 20_000 - 100 <= outage.duration_ms <= 21_100, outage
        steps = [o for o in store.ledger.outages("cam") if o.cause == "clock-step"]
        new_steps = steps[len(steps_before) :]
        resumed = next(s for s in segs if s.start_ms >= outage.end_ms)
        if step_ms > 0:
            (step,) = new_steps
            assert step.start_ms == outage.end_ms and step.end_ms == resumed.start_ms
            assert step.duration_ms is not None and abs(step.duration_ms - step_ms) <= 1_100
        else:
            assert new_steps == [] and resumed.start_ms == outage.end_ms
    finally:
        store.close()
