"""Retention: the window floor, evidence locks, purge, refusals and integrity verification."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvr.config import CameraConfig, NvrConfig, RetentionConfig, StorageConfig
from nvr.retention import Forecast, RetentionService, SegmentSpan, forecast, plan_purge
from nvr.storage import (
    Lock,
    LockError,
    RetentionViolation,
    SegmentStore,
    StorageError,
    now_ms,
)
from nvr.storage.guard import add_years
from nvr.storage.timestamps import DAY_MS
from tests.api_rig import nvr_here
from tests.store_clock import T0, FakeClock, add_segment, open_store

# --- the decision, for all inputs ---------------------------------------------------------

spans = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 100 * DAY_MS), st.integers(1, DAY_MS)),
    max_size=40,
)
lock_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 100 * DAY_MS),
        st.integers(1, 10 * DAY_MS),
        st.one_of(st.none(), st.integers(0, 200 * DAY_MS)),
        st.booleans(),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)  # no timed assertions: a loaded machine is slow
@given(spans, lock_specs, st.integers(0, 200 * DAY_MS), st.integers(30, 60))
def test_purge_never_selects_young_or_locked_footage_and_selects_all_else(
    raw: list[tuple[str, int, int]],
    raw_locks: list[tuple[str, int, int, int | None, bool]],
    now: int,
    window_b: int,
) -> None:
    segments = [SegmentSpan(i, cam, start, start + dur) for i, (cam, start, dur) in enumerate(raw)]
    locks = [
        Lock(
            i,
            cam,
            start,
            start + dur,
            0,
            "t",
            "r",
            None,
            expires,
            released_ms=0 if released else None,
        )
        for i, (cam, start, dur, expires, released) in enumerate(raw_locks)
    ]
    windows = {"a": 30, "b": window_b}
    chosen = set(plan_purge(segments, locks, now_ms=now, window_days=windows.__getitem__))
    for seg in segments:
        young = seg.end_ms > now - windows[seg.camera] * DAY_MS
        locked = any(
            lk.camera == seg.camera
            and lk.start_ms < seg.end_ms
            and lk.end_ms > seg.start_ms
            and lk.released_ms is None
            and (lk.expires_ms is None or lk.expires_ms > now)
            for lk in locks
        )
        assert (seg.id in chosen) == (not young and not locked), (seg, young, locked)


# --- a real store under a simulated clock -------------------------------------------------


@pytest.fixture(scope="module")
def day_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Camera `cam`: one segment per day for 40 days from T0, written once per module (40
    real segments, each fsynced, are seconds on a loaded machine)."""
    root = tmp_path_factory.mktemp("days") / "store"
    clock = FakeClock(T0)
    store = open_store(root, clock)
    try:
        for day in range(40):
            add_segment(store, "cam", T0 + day * DAY_MS)
    finally:
        store.close()
    return root


@pytest.fixture
def day_store(day_template: Path, tmp_path: Path) -> tuple[SegmentStore, FakeClock]:
    """A copy of `day_template` opened with the clock at T0 + 40 days."""
    root = tmp_path / "store"
    shutil.copytree(day_template, root)
    clock = FakeClock(T0 + 40 * DAY_MS)
    return open_store(root, clock), clock


def starts(store: SegmentStore) -> list[int]:
    return [(s.start_ms - T0) // DAY_MS for s in store.segments("cam")]


def test_purge_removes_exactly_expired_unlocked_and_respects_lock_expiry(
    day_store: tuple[SegmentStore, FakeClock],
) -> None:
    store, clock = day_store
    lock = store.locks.add(
        "cam",
        T0 + 2 * DAY_MS,
        T0 + 3 * DAY_MS,
        actor="op",
        reason="assault",
        case_id="C-17",
        until_ms=clock.now + 5 * DAY_MS,
    )
    assert lock.expires_ms == clock.now + 5 * DAY_MS
    config = NvrConfig(storage=StorageConfig(root=store.root))
    service = RetentionService(config, store)
    assert service.purge_once() == 9  # days 0..9 are past 30 days; day 2 is locked
    assert starts(store) == [2, *range(10, 40)]
    clock.now += 4 * DAY_MS  # days 10..13 expire; the lock still holds day 2
    assert service.purge_once() == 4
    assert starts(store)[:2] == [2, 14]
    clock.now += 2 * DAY_MS  # the lock has expired: day 2 goes, with days 14..15
    assert service.purge_once() == 3
    assert starts(store)[:1] == [16]
    report = store.verify()
    assert report.ok, report.problems  # purges leave the chain verifiable
    db = sqlite3.connect(store.root / "index.db")
    # Each purge extended the gap it adjoined: one gap per camera, however many passes.
    assert db.execute("SELECT count(*), sum(removed) FROM chain_gaps").fetchone() == (1, 16)
    db.close()
    purges = store.audit.entries(action="purge")
    assert sum(e.detail["segments"] for e in purges) == 16
    store.close()


def test_locks_default_two_years_extend_only_and_holds(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = open_store(tmp_path, clock)
    lock = store.locks.add("cam", T0 - DAY_MS, T0, actor="op", reason="theft")
    assert lock.expires_ms == add_years(T0, 2)
    with pytest.raises(LockError, match="never shortened"):
        store.locks.extend(lock.id, add_years(T0, 1), actor="op")
    later = store.locks.extend(lock.id, add_years(T0, 3), actor="op")
    assert later.expires_ms == add_years(T0, 3)
    hold = store.locks.add("cam", T0 - DAY_MS, T0, actor="op", reason="court", hold=True)
    assert hold.hold and hold.active(add_years(T0, 50))
    with pytest.raises(LockError, match="needs a reason"):
        store.locks.release_hold(hold.id, actor="admin", reason=" ")
    with pytest.raises(LockError, match="not a legal hold"):
        store.locks.release_hold(lock.id, actor="admin", reason="done")
    released = store.locks.release_hold(hold.id, actor="admin", reason="case closed")
    assert not released.active(T0)
    actions = [(e.action, e.outcome) for e in store.audit.entries()]
    assert actions == [
        ("lock", "ok"),
        ("lock-extend", "refused"),
        ("lock-extend", "ok"),
        ("lock", "ok"),
        ("lock-release", "ok"),
    ]
    with pytest.raises(LockError):
        store.locks.add("cam", T0, T0 - 1, actor="op", reason="x")
    store.close()


def test_library_delete_inside_window_or_locked_is_refused_and_audited(
    day_store: tuple[SegmentStore, FakeClock],
) -> None:
    store, _clock = day_store
    before = starts(store)
    with pytest.raises(RetentionViolation, match="inside the 30-day retention window"):
        store.delete_range("cam", T0 + 35 * DAY_MS, T0 + 37 * DAY_MS, actor="mallory")
    store.locks.add("cam", T0, T0 + DAY_MS, actor="op", reason="evidence")
    with pytest.raises(RetentionViolation, match="locked as evidence"):
        store.delete_range("cam", T0, T0 + 2 * DAY_MS, actor="mallory")
    # Purge candidates include the locked one; the door refuses a batch that contains it.
    ids = [s.id for s in store.segments("cam")[:3]]
    with pytest.raises(RetentionViolation):
        store.delete_segments(ids, actor="retention")
    assert starts(store) == before  # all or nothing: nothing was deleted
    refused = store.audit.entries(outcome="refused")
    assert [e.actor for e in refused] == ["mallory", "mallory", "retention"]
    assert "retention window" in refused[0].detail["why"]
    gone = store.delete_range("cam", T0 + DAY_MS, T0 + 3 * DAY_MS, actor="admin")
    assert [(s.start_ms - T0) // DAY_MS for s in gone] == [1, 2]
    assert store.verify().ok
    store.close()


def write_config(tmp_path: Path, root: Path, days: int = 30) -> Path:
    path = tmp_path / "nvr.toml"
    path.write_text(
        f'[storage]\nroot = "{root}"\n[retention]\ndays = {days}\n'
        '[[cameras]]\nname = "cam"\nurl = "rtsp://127.0.0.1:9/x"\n'
    )
    return path


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return nvr_here(args, cwd)


def test_cli_lock_delete_verify(tmp_path: Path) -> None:
    root = tmp_path / "store"
    clock = FakeClock(T0)
    store = open_store(root, clock)
    for day in range(3):
        add_segment(store, "cam", T0 + day * DAY_MS)
    fresh = now_ms()  # the CLI runs on the real clock: one segment that is young
    store.close()
    real = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    add_segment(real, "cam", fresh - 60_000)
    real.close()
    config = write_config(tmp_path, root)
    iso0 = "2026-09-21T00:00:00Z"

    done = cli(
        [
            "delete",
            "-c",
            str(config),
            "cam",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00+08:00",
        ],
        tmp_path,
    )
    assert done.returncode == 1 and "refused" in done.stderr and "retention window" in done.stderr
    done = cli(
        [
            "lock",
            "-c",
            str(config),
            "cam",
            "--from",
            iso0,
            "--to",
            "2026-09-22T12:00:00Z",
            "--reason",
            "robbery",
            "--case",
            "C-9",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    done = cli(["locks", "-c", str(config)], tmp_path)
    assert "robbery" in done.stdout and "C-9" in done.stdout
    done = cli(
        ["delete", "-c", str(config), "cam", "--from", iso0, "--to", "2026-09-25T00:00:00Z"],
        tmp_path,
    )
    assert done.returncode == 1 and "locked as evidence" in done.stderr
    done = cli(
        [
            "delete",
            "-c",
            str(config),
            "cam",
            "--from",
            "2026-09-23T00:00:00Z",
            "--to",
            "2026-09-24T00:00:00Z",
        ],
        tmp_path,
    )
    assert done.returncode == 0 and "deleted 1 segment (" in done.stdout, done.stderr
    done = cli(["delete", "-c", str(config), "cam", "--from", "yesterday", "--to", iso0], tmp_path)
    assert done.returncode == 2 and "ISO 8601" in done.stderr
    for command in ("delete", "tamper-check"):
        done = cli([command, "-c", str(config), "cam", "--from", iso0, "--to", iso0], tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert f"nvr {command}: --to must be after --from" in done.stderr
    done = cli(["verify", "-c", str(config)], tmp_path)
    assert done.returncode == 0, done.stdout

    reader = SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)
    refused = [e for e in reader.audit.entries() if e.outcome == "refused"]
    assert len(refused) == 2 and all(e.actor.startswith("cli:") for e in refused)
    reader.close()


@pytest.mark.parametrize("tamper", ["byte", "file", "row"])
def test_verify_reports_tampering(tmp_path: Path, tamper: str) -> None:
    root = tmp_path / "store"
    store = open_store(root, FakeClock(T0))
    for i in range(4):
        add_segment(store, "cam", T0 + i * 1000)
    victim = store.segments("cam")[1]
    store.close()
    config = write_config(tmp_path, root)
    assert cli(["verify", "-c", str(config)], tmp_path).returncode == 0
    if tamper == "byte":
        data = bytearray(victim.path.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.path.write_bytes(bytes(data))
        expect = f"altered file {victim.path.relative_to(root)}"
    elif tamper == "file":
        victim.path.unlink()
        expect = f"missing file {victim.path.relative_to(root)}"
    else:
        db = sqlite3.connect(root / "index.db")
        db.execute("DELETE FROM segments WHERE id = ?", (victim.id,))
        db.commit()
        db.close()
        expect = "hash chain broken"
    done = cli(["verify", "-c", str(config)], tmp_path)
    assert done.returncode == 1
    assert expect in done.stdout, done.stdout
    if tamper == "row":
        assert f"unindexed file {victim.path.relative_to(root)}" in done.stdout


def test_forecast_states() -> None:
    hour = 3_600_000
    daily = 2 * 10**9  # two cameras, 1 GB a day each

    def fc(free: int, stored: int = 0, locked: int = 0, media_ms: int = 48 * hour) -> Forecast:
        return forecast(
            recorded_bytes_24h=daily,
            recorded_media_ms_24h=media_ms,
            cameras_recording=2,
            free_bytes=free,
            reserve_bytes=0,
            stored_bytes=stored,
            locked_bytes=locked,
            window_days=30,
        )

    ok = fc(40 * daily)
    assert ok.state == "ok" and abs(ok.forecast_days - 40) < 1e-6
    assert fc(33 * daily).state == "warning"
    assert fc(20 * daily).state == "critical"
    # Locked footage is not recycled; unlocked stored footage is.
    recycled = fc(20 * daily, stored=20 * daily, locked=5 * daily)
    assert abs(recycled.forecast_days - 35) < 1e-6 and recycled.state == "warning"
    assert fc(1, media_ms=1000).state == "unknown"


def test_capacity_state_changes_are_recorded(day_store: tuple[SegmentStore, FakeClock]) -> None:
    store, _clock = day_store
    config = NvrConfig(
        storage=StorageConfig(root=store.root),
        retention=RetentionConfig(days=30),
        cameras=[CameraConfig(name="cam", url="rtsp://127.0.0.1/x")],
    )
    service = RetentionService(config, store)
    first = service.capacity_once()
    service.capacity_once()
    history = store.capacity.history()
    assert [h.state for h in history] == [first.state]  # recorded once, on change only
    store.close()


def test_per_camera_window_is_longer_and_respected(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    windows = {"short": 30, "long": 45}
    store = SegmentStore(
        tmp_path,
        f"sqlite:///{tmp_path / 'index.db'}",
        clock=clock,
        retention_days=windows.__getitem__,
    )
    for cam in windows:
        add_segment(store, cam, T0)
    clock.now = T0 + 40 * DAY_MS
    config = NvrConfig(
        storage=StorageConfig(root=store.root),
        cameras=[
            CameraConfig(name="short", url="rtsp://127.0.0.1/a"),
            CameraConfig(name="long", url="rtsp://127.0.0.1/b", retention_days=45),
        ],
    )
    assert RetentionService(config, store).purge_once() == 1
    assert store.segments("short") == [] and len(store.segments("long")) == 1
    with pytest.raises(RetentionViolation, match="45-day retention window"):
        store.delete_range("long", T0, T0 + DAY_MS, actor="admin")
    store.close()


def test_interrupted_delete_is_finished_at_start_up(
    day_store: tuple[SegmentStore, FakeClock], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clock = day_store
    victims = store.segments("cam")[:3]

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError(5, "Input/output error")  # the process dies between mark and unlink

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(StorageError):
        store.delete_segments([s.id for s in victims], actor="retention")
    monkeypatch.undo()
    assert all(s.path.exists() for s in victims)
    # Rows marked for deletion are already hidden from playback and purge.
    assert store.segments("cam")[0].start_ms == victims[0].start_ms + 3 * DAY_MS
    store.close()
    reopened = open_store(store.root, clock)
    reopened.recover()
    assert not any(s.path.exists() for s in victims)
    assert reopened.verify().ok
    reopened.close()
