"""SegmentStore: create order, salvage after a crash, identity, and never deleting on doubt."""

from __future__ import annotations

import gc
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nvr.storage import (
    ForeignIndexError,
    SegmentInfo,
    SegmentRefs,
    SegmentStore,
    StorageError,
    chain_value,
)
from nvr.storage.store import GENESIS_CHAIN, parse_segment_name, segment_name
from tests.media import check_file, fast_pattern, pattern_packets

T0 = 1_795_000_000_000


def open_store(root: Path, db: str = "index.db") -> SegmentStore:
    return SegmentStore(root, f"sqlite:///{root / db}")


def write_segment(store: SegmentStore, start_ms: int, frames: int = 20) -> None:
    src = fast_pattern()
    writer = store.new_writer("cam", start_ms, src.video, None)
    tb = src.video.time_base
    assert tb is not None
    for pkt in pattern_packets(src, frames):
        pkt.stream = writer.video
        writer.mux(pkt)
    info = SegmentInfo(
        "cam", start_ms, start_ms + frames * 100, frames * 100, frames, "h264", None, 640, 360
    )
    store.commit(writer, info)
    src.close()


def test_names_round_trip() -> None:
    assert parse_segment_name(segment_name(T0 + 123)) == T0 + 123
    assert segment_name(T0 + 5).endswith(".005Z.mp4")


def test_commit_writes_hash_and_chain(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    write_segment(store, T0)
    write_segment(store, T0 + 2000)
    segs = store.segments("cam")
    assert len(segs) == 2
    prev = GENESIS_CHAIN
    for seg in segs:
        assert hashlib.sha256(seg.path.read_bytes()).hexdigest() == seg.sha256
        assert seg.bytes == seg.path.stat().st_size
        assert seg.chain == chain_value(prev, seg.sha256, "cam", seg.start_ms, seg.end_ms)
        prev = seg.chain
        assert not list(seg.path.parent.glob("*.part"))
        assert check_file(seg.path).first_is_key
    store.close()
    # chain heads survive a restart
    store = open_store(tmp_path)
    write_segment(store, T0 + 4000)
    last = store.segments("cam")[-1]
    assert last.chain == chain_value(prev, last.sha256, "cam", last.start_ms, last.end_ms)
    store.close()


def test_interrupted_write_is_salvaged_to_last_complete_fragment(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    src = fast_pattern()
    writer = store.new_writer("cam", T0, src.video, None)
    for pkt in pattern_packets(src, 35):  # 3.5 s: three complete ~1 s fragments
        pkt.stream = writer.video
        writer.mux(pkt)
    part = writer.temp_path
    size = part.stat().st_size
    assert size > 0
    with part.open("ab") as f:  # a torn fragment, as a crash mid-write leaves it
        f.write(b"\x00\x00\x10\x00moof" + b"\x01" * 100)
    store.close()  # the "crash": writer never finished

    store = open_store(tmp_path)
    salvaged = store.recover()
    assert len(salvaged) == 1
    seg = salvaged[0]
    assert seg.recovered and seg.start_ms == T0
    assert not part.exists() and seg.path.exists()
    found = check_file(seg.path)
    assert found.first_is_key and found.dts_monotonic
    assert 20 <= found.frames <= 35 and found.decoded == found.frames
    assert hashlib.sha256(seg.path.read_bytes()).hexdigest() == seg.sha256
    assert any(e.kind == "salvaged" for e in store.events.since("cam"))
    store.close()


def interrupted_part(store: SegmentStore, start_ms: int, frames: int = 35) -> Path:
    """A `.part` file named `start_ms` with `frames` frames (~1 s fragments), never finished:
    what a killed recorder leaves."""
    src = fast_pattern()
    writer = store.new_writer("cam", start_ms, src.video, None)
    for pkt in pattern_packets(src, frames):
        pkt.stream = writer.video
        writer.mux(pkt)
    part = writer.temp_path
    src.close()
    return part


def test_a_part_named_before_the_footage_it_follows_is_placed_after_it(tmp_path: Path) -> None:
    """A `.part` file named by a wall clock that had stepped back (5 days) behind footage
    already indexed: the start-up salvage indexes it at the end of that footage, under the
    name of that start, keeps the name it had as evidence, and the index stays in
    recording order (issue 11, item 1)."""
    store = open_store(tmp_path)
    write_segment(store, T0)
    write_segment(store, T0 + 2000)
    named = T0 - 5 * 86_400_000
    part = interrupted_part(store, named)
    store.close()  # the kill

    store = open_store(tmp_path)
    (seg,) = store.recover()
    _, b, c = store.segments("cam")
    assert c == seg and seg.recovered
    assert seg.start_ms == b.end_ms == T0 + 4000 and seg.end_ms == seg.start_ms + seg.duration_ms
    assert seg.path == store.segment_path("cam", seg.start_ms) and seg.path.exists()
    assert not part.exists() and not part.with_name(part.name.removesuffix(".part")).exists()
    found = check_file(seg.path)
    assert found.first_is_key and found.dts_monotonic and found.decoded == found.frames
    assert hashlib.sha256(seg.path.read_bytes()).hexdigest() == seg.sha256
    (placed,) = store.audit.entries(action="salvage-placed")
    assert placed.detail["named_ms"] == named and placed.detail["start_ms"] == seg.start_ms
    assert placed.detail["from"].endswith(part.name)
    (event,) = [e for e in store.events.since("cam") if e.kind == "reanchor"]
    assert segment_name(named) + ".part" in event.detail
    assert store.verify().ok
    store.close()


def test_a_replaced_recorders_part_keeps_its_time(tmp_path: Path) -> None:
    """A `.part` file a replaced (hung) recorder left, never salvaged before the kill: it
    was recorded before the replacement's footage, inside the `recorder-replaced` outage,
    and keeps that time."""
    store = open_store(tmp_path)
    write_segment(store, T0)
    outage = store.ledger.open("cam", T0 + 2000, "recorder-replaced", "no progress for 30 s")
    part = interrupted_part(store, T0 + 2000)
    store.ledger.close(outage.id, T0 + 40_000)
    write_segment(store, T0 + 40_000)  # the replacement records
    store.close()

    store = open_store(tmp_path)
    (seg,) = store.recover()
    assert seg.start_ms == T0 + 2000 and seg.path == part.with_name(segment_name(T0 + 2000))
    assert store.audit.entries(action="salvage-placed") == []
    store.close()


def test_files_and_rows_mismatch_is_reported_never_acted_on(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    write_segment(store, T0)
    write_segment(store, T0 + 2000)
    a, b = store.segments("cam")
    stray = store.segment_path("cam", T0 + 9000)
    stray.write_bytes(b"not indexed")
    b.path.unlink()
    report = store.consistency()
    assert report.files_without_rows == [stray]
    assert report.rows_without_files == [b.path]
    assert stray.exists() and a.path.exists()
    store.close()


def test_empty_index_beside_footage_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    write_segment(store, T0)
    store.close()
    with pytest.raises(ForeignIndexError, match="new or empty"):
        open_store(tmp_path, "other.db")
    files = list(tmp_path.rglob("*.mp4"))
    assert len(files) == 1  # nothing deleted


def test_foreign_index_is_refused(tmp_path: Path) -> None:
    a = open_store(tmp_path / "a")
    a.close()
    b = open_store(tmp_path / "b")
    write_segment(b, T0)
    b.close()
    with pytest.raises(ForeignIndexError, match="belongs to store"):
        SegmentStore(tmp_path / "a", f"sqlite:///{tmp_path / 'b' / 'index.db'}")


def test_second_writer_process_lock(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(StorageError, match="in use by another recorder"):
        open_store(tmp_path)
    reader = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}", exclusive=False)
    reader.close()
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    write_segment(store, T0)
    mode = sqlite3.connect(tmp_path / "index.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()


def test_outage_ledger(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    o = store.ledger.open("cam", T0, "stalled", "no data")
    assert [x.id for x in store.ledger.open_outages("cam")] == [o.id]
    store.ledger.update(o.id, "unreachable", "refused")
    store.ledger.close(o.id, T0 + 5000)
    (done,) = store.ledger.outages("cam")
    assert (done.cause, done.duration_ms) == ("unreachable", 5000)
    assert store.ledger.open_outages("cam") == []
    store.close()


def test_audit_log_is_append_only_and_verifiable(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(5):
        store.audit.append("alice", "playback", f"cam{i}", detail={"bytes": i})
    store.audit.append("bob", "delete", "cam0", outcome="refused", detail={"why": "inside window"})
    assert store.audit.verify() == []
    entries = store.audit.entries(actor="bob")
    assert [(e.action, e.outcome, e.detail) for e in entries] == [
        ("delete", "refused", {"why": "inside window"})
    ]
    db = sqlite3.connect(tmp_path / "index.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'mallory' WHERE id = 2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit WHERE id = 2")
    # An attacker who drops the triggers is still caught by the chain.
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("UPDATE audit SET detail = '{\"bytes\":99}' WHERE id = 2")
    db.commit()
    assert any("entry 2" in p and "edited" in p for p in store.audit.verify())
    db.execute("UPDATE audit SET detail = '{\"bytes\":1}' WHERE id = 2")
    db.execute("DELETE FROM audit WHERE id = 3")
    db.commit()
    assert any("missing" in p for p in store.audit.verify())
    db.execute("DELETE FROM audit WHERE id >= 3")  # truncate the tail
    db.commit()
    assert any("were recorded but are gone" in p for p in store.audit.verify())
    db.close()
    store.close()


def test_daemon_store_migrates_in_a_child_and_never_imports_alembic(tmp_path: Path) -> None:
    """The daemon opens its store with `migrate_in_child`: a fresh index reaches the head
    revision while the daemon's own process never loads Alembic (12 MiB it would keep)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from storage import SegmentStore\n"
        "from storage.index import current_revision\n"
        "root = Path(sys.argv[1])\n"
        "url = f'sqlite:///{root}/index.db'\n"
        "store = SegmentStore(root / 'store', url, migrate_in_child=True)\n"
        "print(current_revision(store._engine), 'alembic' in sys.modules)\n"
        "store.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    from nvr.storage.index import HEAD_REVISION

    assert out.stdout.split() == [HEAD_REVISION, "False"], out.stderr


def test_failed_child_migration_is_a_storage_error_naming_the_cause(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999')")
    with pytest.raises(StorageError, match=r"schema revision .*9999"):
        SegmentStore(tmp_path / "store", f"sqlite:///{db}", migrate_in_child=True)


def test_head_revision_constant_matches_the_migrations(tmp_path: Path) -> None:
    """`storage.index.HEAD_REVISION` lets an up-to-date index open without Alembic; it must
    name Alembic's head, and a fresh store must end up there."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from nvr.storage.index import HEAD_REVISION, MIGRATIONS, current_revision, make_engine

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION
    store = SegmentStore(tmp_path / "store", f"sqlite:///{tmp_path / 'index.db'}")
    store.close()
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


def test_segment_refs_are_the_segments_as_untracked_columns(tmp_path: Path) -> None:
    """Playback holds a range's segments as `SegmentRefs` (issue 13): the same segments as
    `segments` gives, and columns the garbage collector stops walking, however many."""
    store = open_store(tmp_path)
    try:
        for k in range(4):
            write_segment(store, T0 + k * 10_000, frames=10)
        everything = store.segments("cam")
        for lo, hi in ((T0, T0 + 40_000), (T0 + 500, T0 + 20_500), (T0 + 999, T0 + 10_001)):
            want = store.segments("cam", lo, hi)
            refs = store.segment_refs("cam", lo, hi)
            assert len(refs) == len(want) > 0
            assert [tuple(r) for r in refs] == [
                (s.id, s.start_ms, s.end_ms, str(s.path), s.sha256) for s in want
            ]
            assert refs == SegmentRefs.of(want)
            assert refs[1:] == SegmentRefs.of(want[1:])
        assert len(store.segment_refs("cam", T0 + 40_000, T0 + 50_000)) == 0
        assert len(store.segment_refs("other", T0, T0 + 40_000)) == 0
        refs = store.segment_refs("cam", T0, T0 + 40_000)
        gc.collect()
        columns = (refs.ids, refs.start_ms, refs.end_ms, refs.paths, refs.sha256)
        assert not any(gc.is_tracked(c) for c in columns)
        # `Segment`s (objects with a `Path`) stay tracked, each of them: why columns.
        assert all(gc.is_tracked(s) for s in everything)
    finally:
        store.close()
