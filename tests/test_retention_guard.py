"""The delete door under races and edits (issue 11, items 2-5): the garbage flag, windows
stored with the footage, purging past locked footage, and a lock committed by another process
while a delete is being decided. Real SQLite files, and a real PostgreSQL where one runs on
127.0.0.1:5432 (trust auth; skipped with the reason otherwise)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from nvr.config import NvrConfig, StorageConfig
from nvr.retention import RetentionService, RetentionViolation, SegmentSpan, plan_purge
from nvr.retention import service as retention_service
from nvr.storage import SegmentStore, StorageIOError
from nvr.storage.timestamps import DAY_MS
from tests.api_rig import nvr_here
from tests.store_clock import BOOT_OFFSET, T0, FakeClock, add_segment

PG_USER = os.environ.get("NVR_TEST_PG_USER", "postgres")
PG_DSN = f"host=127.0.0.1 port=5432 user={PG_USER} dbname=test connect_timeout=3"


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty index database: a SQLite file, or a new PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    try:
        import psycopg
    except ImportError:
        pytest.skip("PostgreSQL tests need the psycopg driver (pip install -e '.[test]')")
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True)
    except psycopg.OperationalError as err:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 (user {PG_USER}, db test): {err}")
    name = f"nvr_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql+psycopg://{PG_USER}@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def open_store(
    root: Path,
    url: str,
    clock: FakeClock,
    days: Callable[[str], int] = lambda _c: 30,
    pause: Callable[[str], None] | None = None,
) -> SegmentStore:
    return SegmentStore(
        root,
        url,
        clock=clock,
        retention_days=days,
        pause=pause,
        uptime=lambda: clock() - BOOT_OFFSET,
    )


def day_starts(store: SegmentStore, camera: str = "cam") -> list[int]:
    return [(s.start_ms - T0) // DAY_MS for s in store.segments(camera)]


# --- item 5: a lock from another process races a delete ----------------------------------

LOCKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nvr.storage import SegmentStore, StorageIOError
    root, url, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = SegmentStore(Path(root), url, exclusive=False)
    print("locking", flush=True)
    lock = store.locks.add("cam", start, end, actor="second-process", reason="race")
    print("locked", lock.id, flush=True)
    store.close()
    """
)


def start_locker(root: Path, url: str, start_ms: int, end_ms: int) -> subprocess.Popen[str]:
    """`LockRegister.add` in a second process; returns once it is about to write the lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(root), url, str(start_ms), str(end_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "locking", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def test_lock_committed_after_the_plan_is_seen_by_the_door_and_nothing_is_deleted(
    tmp_path: Path, index_url: str
) -> None:
    """Retention planned the purge of 8 expired segments; before the door's transaction a
    second process locks the oldest three. The door sees the lock: nothing is deleted."""
    root = tmp_path / "store"
    clock = FakeClock(T0)

    def pause(point: str) -> None:
        if point == "unguarded":
            finish(start_locker(root, index_url, T0, T0 + 3 * DAY_MS - 1))

    store = open_store(root, index_url, clock, pause=pause)
    for day in range(8):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 0
    assert day_starts(store) == list(range(8))
    assert all(s.path.exists() for s in store.segments("cam"))
    refused = store.audit.entries(outcome="refused")
    assert len(refused) == 1 and "locked as evidence" in refused[0].detail["why"]
    assert [(e.actor, e.action) for e in store.audit.entries(outcome="ok")] == [
        ("second-process", "lock")
    ]
    assert store.verify().ok
    store.close()


def test_a_lock_waits_for_the_delete_that_checked_before_it(tmp_path: Path, index_url: str) -> None:
    """Check and mark are one write transaction: a lock another process tries to commit
    after the door checked cannot commit before the door has marked (it waits), so no
    deleted segment was ever covered by a committed lock."""
    root = tmp_path / "store"
    clock = FakeClock(T0)
    seen: dict[str, object] = {}

    def pause(point: str) -> None:
        if point != "checked":
            return
        proc = start_locker(root, index_url, T0, T0 + 3 * DAY_MS - 1)
        deadline = time.monotonic() + 3.0
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["committed during the check"] = proc.poll() is not None
        seen["proc"] = proc

    store = open_store(root, index_url, clock, pause=pause)
    for day in range(8):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 8
    proc = seen["proc"]
    assert isinstance(proc, subprocess.Popen)
    finish(proc)
    assert seen["committed during the check"] is False
    entries = [(e.actor, e.action, e.outcome) for e in store.audit.entries()]
    assert entries == [("retention", "purge", "ok"), ("second-process", "lock", "ok")]
    assert store.verify().ok
    store.close()


# --- item 4: locked footage never stalls a purge ------------------------------------------


def test_purge_pages_past_locked_footage(
    tmp_path: Path, index_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of 3: 8 expired segments, the oldest 3 locked -> the other 5 purged."""
    monkeypatch.setattr(retention_service, "BATCH", 3)
    root = tmp_path / "store"
    clock = FakeClock(T0)
    store = open_store(root, index_url, clock)
    for day in range(10):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 38 * DAY_MS  # days 0..7 have expired
    store.locks.add("cam", T0, T0 + 3 * DAY_MS - 1, actor="op", reason="evidence")
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 5
    assert day_starts(store) == [0, 1, 2, 8, 9]
    assert store.verify().ok
    store.close()


def test_purge_candidates_skip_every_locked_span_and_see_locks_end(tmp_path: Path) -> None:
    root = tmp_path / "store"
    url = f"sqlite:///{root / 'index.db'}"
    clock = FakeClock(T0)
    store = open_store(root, url, clock)
    for day in range(12):
        add_segment(store, "cam", T0 + day * DAY_MS)
        add_segment(store, "other", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS  # days 0..9 have expired
    store.locks.add("cam", T0 + DAY_MS, T0 + DAY_MS + 1, actor="op", reason="a")
    store.locks.add("cam", T0 + 3 * DAY_MS, T0 + 5 * DAY_MS - 1, actor="op", reason="b")
    hold = store.locks.add(
        "cam", T0 + 6 * DAY_MS, T0 + 6 * DAY_MS + 5, actor="op", reason="c", hold=True
    )
    store.locks.add(
        "cam", T0 + 7 * DAY_MS, T0 + 8 * DAY_MS, actor="op", reason="d", until_ms=T0 + 41 * DAY_MS
    )
    store.locks.add("other", T0, T0 + 9 * DAY_MS, actor="op", reason="e")
    found = [((s.start_ms - T0) // DAY_MS, s.camera) for s in store.purge_candidates(limit=100)]
    assert sorted(found) == [
        (0, "cam"),
        (2, "cam"),
        (5, "cam"),
        (8, "cam"),
        (9, "cam"),
        (9, "other"),
    ]
    assert [(s.start_ms - T0) // DAY_MS for s in store.purge_candidates(limit=2)] == [0, 2]
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 6
    assert store.purge_candidates() == []
    # A lock that ends frees footage below spans already searched: it is found.
    store.locks.release_hold(hold.id, actor="admin", reason="case closed")
    clock.now = T0 + 41 * DAY_MS + 1  # lock d expired; day 10 expired too
    found = [((s.start_ms - T0) // DAY_MS, s.camera) for s in store.purge_candidates()]
    assert sorted(found) == [(6, "cam"), (7, "cam"), (10, "cam"), (10, "other")]
    assert service.purge_once() == 4
    assert day_starts(store) == [1, 3, 4, 11]
    assert store.verify().ok
    store.close()


# --- item 3: each camera's window is stored with its footage -----------------------------


def test_a_camera_removed_from_the_config_keeps_its_stored_window(
    tmp_path: Path, index_url: str
) -> None:
    root = tmp_path / "store"
    clock = FakeClock(T0)
    store = open_store(root, index_url, clock, days={"long": 90, "short": 30}.__getitem__)
    for day in range(3):
        add_segment(store, "long", T0 + day * DAY_MS)
        add_segment(store, "short", T0 + day * DAY_MS)
    store.close()
    # Decommissioned: "long" is no longer in the config, whose default window is 30 days.
    clock.now = T0 + 40 * DAY_MS
    store = open_store(root, index_url, clock)
    assert store.window_days("long") == 90 and store.window_days("short") == 30
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 3
    assert day_starts(store, "long") == [0, 1, 2] and store.segments("short") == []
    assert service.capacity_once().window_days == 90  # the forecast holds it to 90 days
    with pytest.raises(RetentionViolation, match="90-day retention window"):
        store.delete_range("long", T0, T0 + DAY_MS, actor="admin")
    clock.now = T0 + 92 * DAY_MS
    # The recorder goes on recording (footage is never purged newer than the newest
    # footage's time minus the window).
    add_segment(store, "other", clock.now - 2000)
    assert service.purge_once() == 2
    assert day_starts(store, "long") == [2]
    assert store.verify().ok
    store.close()


def test_a_window_only_grows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    url = f"sqlite:///{root / 'index.db'}"
    clock = FakeClock(T0)
    store = open_store(root, url, clock, days=lambda _c: 60)
    add_segment(store, "cam", T0)
    store.close()
    store = open_store(root, url, clock, days=lambda _c: 45)  # the config shortened it
    add_segment(store, "cam", T0 + DAY_MS)
    assert store.window_days("cam") == 60
    store.close()
    store = open_store(root, url, clock, days=lambda _c: 120)  # ... and lengthened it
    assert store.window_days("cam") == 120
    store.close()
    db = sqlite3.connect(root / "index.db")
    assert db.execute("SELECT camera, days FROM camera_windows").fetchall() == [("cam", 120)]
    db.close()


def test_cli_purge_with_another_config_keeps_the_stored_window(tmp_path: Path) -> None:
    """`nvr purge -c other.toml` (which has never heard of camera `long`) keeps its 90 days."""
    root = tmp_path / "store"
    now = int(time.time() * 1000)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}", retention_days=lambda _c: 90)
    add_segment(store, "long", now - 40 * DAY_MS)
    add_segment(store, "long", now - 20 * DAY_MS)
    store.close()
    other = tmp_path / "other.toml"
    other.write_text(
        f'[storage]\nroot = "{root}"\n[retention]\ndays = 30\n'
        '[[cameras]]\nname = "other"\nurl = "rtsp://127.0.0.1:9/x"\n'
    )
    done = nvr_here(["purge", "-c", str(other)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "purged 0 segments" in done.stdout, done.stdout
    reader = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    assert len(reader.segments("long")) == 2
    reader.close()


# --- item 2: the garbage flag is no permission --------------------------------------------


def mark_garbage(url: str, where: str) -> None:
    """Edit the index behind the store's back, as someone with the database could."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE segments SET garbage = true WHERE {where}"))
    engine.dispose()


def test_fresh_footage_marked_as_garbage_is_reported_kept_and_unmarked(
    tmp_path: Path, index_url: str
) -> None:
    root = tmp_path / "store"
    url = index_url
    clock = FakeClock(T0)
    store = open_store(root, url, clock)
    for day in range(40):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS
    fresh = store.segments("cam")[-3:]
    store.close()
    mark_garbage(url, f"start_ms >= {T0 + 37 * DAY_MS}")  # days 37..39: inside the window
    mark_garbage(url, f"start_ms = {T0 + 2 * DAY_MS}")  # day 2: expired, but no purge marked it

    store = open_store(root, url, clock)
    report = store.verify()
    assert not report.ok
    assert any("3 segments marked for deletion outside any purge" in p for p in report.problems), (
        report.problems
    )
    assert any("1 segments marked for deletion outside any purge" in p for p in report.problems), (
        report.problems
    )
    store.recover()
    assert all(s.path.exists() for s in fresh)
    assert day_starts(store) == list(range(40))  # un-marked: playable again, nothing lost
    refused = store.audit.entries(action="delete-resume", outcome="refused")
    assert len(refused) == 2
    whys = sorted(e.detail["why"] for e in refused)
    assert "inside the 30-day retention window" in whys[0]
    assert "no chain gap recorded" in whys[1]
    assert store.audit.entries(action="delete-resume", outcome="ok") == []
    assert store.verify().ok, store.verify().problems
    assert store.audit.verify() == []
    store.close()


def interrupted_delete(
    store: SegmentStore, ids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that dies between marking its rows and unlinking their files."""

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(StorageIOError):
        store.delete_segments(ids, actor="retention")
    monkeypatch.undo()


def test_an_interrupted_purge_is_finished_after_the_recheck_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    url = f"sqlite:///{root / 'index.db'}"
    clock = FakeClock(T0)
    store = open_store(root, url, clock)
    for day in range(12):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS
    assert len(store.delete_segments([s.id for s in store.segments("cam")[:2]], actor="r")) == 2
    victims = store.segments("cam")[:3]  # days 2..4: their gap extends the first one
    interrupted_delete(store, [s.id for s in victims], monkeypatch)
    assert store.verify().ok, store.verify().problems  # a marked run with its gap is fine
    store.close()

    store = open_store(root, url, clock)
    store.recover()
    assert not any(s.path.exists() for s in victims)
    assert day_starts(store) == list(range(5, 12))
    done = store.audit.entries(action="delete-resume")
    assert [(e.outcome, e.detail["segments"]) for e in done] == [("ok", 3)]
    assert store.verify().ok, store.verify().problems
    store.close()


def test_an_interrupted_purge_of_footage_locked_since_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock committed after the mark, before the restart (e.g. `nvr lock` beside a crashed
    daemon): the marked run is kept, un-marked, its gap undone, and verify stays clean."""
    root = tmp_path / "store"
    url = f"sqlite:///{root / 'index.db'}"
    clock = FakeClock(T0)
    store = open_store(root, url, clock)
    for day in range(12):
        add_segment(store, "cam", T0 + day * DAY_MS)
    clock.now = T0 + 40 * DAY_MS
    assert len(store.delete_segments([s.id for s in store.segments("cam")[:2]], actor="r")) == 2
    victims = store.segments("cam")[:3]  # days 2..4
    interrupted_delete(store, [s.id for s in victims], monkeypatch)
    store.locks.add("cam", T0 + 3 * DAY_MS, T0 + 3 * DAY_MS + 1, actor="op", reason="late")
    store.close()

    store = open_store(root, url, clock)
    store.recover()
    assert all(s.path.exists() for s in victims)
    assert day_starts(store) == list(range(2, 12))
    refused = store.audit.entries(action="delete-resume", outcome="refused")
    assert len(refused) == 1 and "locked as evidence" in refused[0].detail["why"]
    assert store.verify().ok, store.verify().problems
    # The next purge deletes what the lock does not cover, with a gap verify accepts.
    service = RetentionService(NvrConfig(storage=StorageConfig(root=root)), store)
    assert service.purge_once() == 7  # days 2, 4..9
    assert day_starts(store) == [3, 10, 11]
    assert store.verify().ok, store.verify().problems
    store.close()


# --- item 4, for all inputs: the candidates are exactly the expired, unlocked segments ----

span_specs = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 60 * 24), st.integers(1, 72)),
    max_size=40,
)
lock_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 60 * 24),
        st.integers(1, 10 * 24),
        st.booleans(),
    ),
    max_size=6,
)
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("candidates") / "store"
    # Made by a recorder run at T0 (the simulated clock's world, see BOOT_OFFSET).
    SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        clock=FakeClock(T0),
        uptime=lambda: T0 - BOOT_OFFSET,
    ).close()
    return root


candidate_worlds = given(
    span_specs, lock_specs, lock_specs, st.integers(0, 40 * 24), st.integers(0, 20 * 24)
)
"""Segments, the locks before and after, the hour now and how far time then moves."""


@settings(max_examples=40, deadline=None)
@candidate_worlds
def test_purge_candidates_are_exactly_the_expired_unlocked_segments(
    empty_index: Path,
    raw: list[tuple[str, int, int]],
    first_locks: list[tuple[str, int, int, bool]],
    later_locks: list[tuple[str, int, int, bool]],
    now_h: int,
    step_h: int,
) -> None:
    """The fast tier's sample of the property below (a store per example costs ~0.1 s)."""
    check_candidates(empty_index, raw, first_locks, later_locks, now_h, step_h)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@candidate_worlds
def test_purge_candidates_are_exactly_the_expired_unlocked_segments_at_length(
    empty_index: Path,
    raw: list[tuple[str, int, int]],
    first_locks: list[tuple[str, int, int, bool]],
    later_locks: list[tuple[str, int, int, bool]],
    now_h: int,
    step_h: int,
) -> None:
    """The property with 200 examples (the whole suite's run)."""
    check_candidates(empty_index, raw, first_locks, later_locks, now_h, step_h)


def check_candidates(
    root: Path,
    raw: list[tuple[str, int, int]],
    first_locks: list[tuple[str, int, int, bool]],
    later_locks: list[tuple[str, int, int, bool]],
    now_h: int,
    step_h: int,
) -> None:
    """Segments and locks (hours from T0) straight into the index; the candidates must match
    the pure decision (`plan_purge`), before and after locks change, rows go and time moves."""
    db = sqlite3.connect(root / "index.db")
    # The rows are set up and changed behind the store's back; their durability is not what
    # is tested, and an fsync per commit made this the fast tier's longest test.
    db.execute("PRAGMA synchronous = OFF")
    db.execute("DELETE FROM segments")
    db.execute("DELETE FROM locks")
    db.executemany(
        "INSERT INTO segments (camera, start_ms, end_ms, duration_ms, bytes, path, video_codec,"
        " width, height, frames, sha256, prev_chain, chain, recovered, discontinuity, garbage,"
        " created_ms) VALUES (?,?,?,0,0,?,'h264',0,0,0,'','','',0,0,0,0)",
        [
            (cam, T0 + h * HOUR_MS, T0 + (h + d) * HOUR_MS, f"{cam}/{i}.mp4")
            for i, (cam, h, d) in enumerate(raw)
        ],
    )

    def add_locks(specs: list[tuple[str, int, int, bool]]) -> None:
        db.executemany(
            "INSERT INTO locks (camera, start_ms, end_ms, created_ms, created_by, reason,"
            " expires_ms, released_ms) VALUES (?,?,?,0,'t','r',?,NULL)",
            [
                (
                    cam,
                    T0 + h * HOUR_MS,
                    T0 + (h + d) * HOUR_MS,
                    None if hold else T0 + 1000 * DAY_MS,
                )
                for cam, h, d, hold in specs
            ],
        )
        db.commit()

    add_locks(first_locks)
    clock = FakeClock(T0 + (30 * 24 + now_h) * HOUR_MS)
    store = SegmentStore(
        root,
        f"sqlite:///{root / 'index.db'}",
        exclusive=False,
        clock=clock,
        uptime=lambda: clock() - BOOT_OFFSET,
    )

    def expected() -> set[int]:
        rows = db.execute("SELECT id, camera, start_ms, end_ms FROM segments").fetchall()
        spans = [SegmentSpan(*r) for r in rows]
        # Never newer than the newest footage's time minus the window (these rows were
        # "created" at 0: the newest time is the latest end).
        newest = max((r[3] for r in rows), default=clock.now)
        now = min(clock.now, newest)
        return set(plan_purge(spans, store.locks.find(), now_ms=now, window_days=lambda _c: 30))

    try:
        assert {s.id for s in store.purge_candidates()} == expected()
        # Some go (as a purge would), a lock ends, new locks come, time moves on.
        db.execute("DELETE FROM segments WHERE id % 2 = 0")
        db.execute("UPDATE locks SET released_ms = 1 WHERE id = (SELECT min(id) FROM locks)")
        add_locks(later_locks)
        clock.now += step_h * HOUR_MS
        assert {s.id for s in store.purge_candidates()} == expected()
        assert {s.id for s in store.purge_candidates()} == expected()  # with what it remembers
    finally:
        store.close()
        db.close()
