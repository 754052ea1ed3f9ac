"""Faults of the index (issue 11, items 7 and 8): a crash between a segment's rename and its
row, header-only `.part` files, and a damaged `index.db` (truncated, a corrupt page before
start, pages damaged while recording), refused with the way out and rebuilt with
`nvr index rebuild` from the segment files.

Crashes are real: a child process running the daemon is SIGKILLed at the fault point. The
damaged index is a real SQLite file truncated or with a page overwritten. Everything is then
checked through the store, `nvr verify` and the other commands, as an operator would; `nvr
verify` beside a running recorder gives a file being committed a moment for its row.

One of the four files of the fault suite issue 11's proof asks for (`tests/test_faults.py`
there, split by item so pytest-xdist can spread them; all listed in docs/reliability.md)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nvr.cli import main
from nvr.config import CameraConfig, NvrConfig, StorageConfig, load_config
from nvr.daemon import run_daemon, write_status
from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.ingest.supervisor import Supervisor
from nvr.storage import IndexCorruptError, Segment, SegmentStore
from nvr.storage.rebuild import rebuild_index
from nvr.storage.store import GENESIS_CHAIN, chain_value, segment_name
from tests.camsim import CameraSim
from tests.media import check_file, fast_pattern, pattern_packets
from tests.recording_rig import wait_for, wait_progress

T0 = 1_795_000_000_000

CONFIG = """
log_level = "warning"
[storage]
root = "rec"
reserve_bytes = 0
[[cameras]]
name = "cam"
url = "builtin:testpattern"
segment_seconds = 10
stall_seconds = 1.0
"""

CRASH_AT_INSERT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from nvr.config import load_config
    from nvr.daemon import run_daemon
    from nvr.storage.store import SegmentStore

    real_insert = SegmentStore._insert

    def crash_before_row(self, written, info, *, recovered, **kw):
        if not recovered:  # a recorder's commit: the file is renamed, its row not inserted
            os.kill(os.getpid(), signal.SIGKILL)
        return real_insert(self, written, info, recovered=recovered, **kw)

    SegmentStore._insert = crash_before_row
    asyncio.run(run_daemon(load_config(Path(sys.argv[1]))))
    """
)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "nvr.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def reader(root: Path) -> SegmentStore:
    return SegmentStore(root, f"sqlite:///{root / 'index.db'}", exclusive=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def wait_until(cond: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


# --- item 7: a crash between rename and insert ------------------------------------------------


@pytest.mark.slow
async def test_crash_between_rename_and_insert_is_recovered_at_start(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    root = tmp_path / "rec"
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASH_AT_INSERT, str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    # The state the crash left: a complete segment file the index does not know.
    store = reader(root)
    try:
        stranded = store.consistency().files_without_rows
        assert len(stranded) == 1
        assert store.segments("cam") == []
    finally:
        store.close()
    assert main(["verify", "-c", str(cfg_path)]) == 1  # unindexed file: not yet clean
    digest = sha256(stranded[0])
    size = stranded[0].stat().st_size

    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(load_config(cfg_path), stop=stop), name="daemon")

    def resumed() -> bool:
        s = reader(root)
        try:
            return any(
                o.cause == "not-running" and o.end_ms is not None for o in s.ledger.outages()
            )
        finally:
            s.close()

    try:
        await wait_until(resumed, 60, "recording to resume after the crash")
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 30)

    store = reader(root)
    try:
        segs = store.segments("cam")
        first = segs[0]
        assert first.path == stranded[0] and first.recovered
        assert first.sha256 == digest == sha256(first.path) and first.bytes == size
        assert first.chain == chain_value(
            GENESIS_CHAIN, digest, "cam", first.start_ms, first.end_ms
        )
        assert 1_000 <= first.duration_ms <= 12_000  # the first segment is staggered
        # The outage of the crash runs from the end of the footage recovered at start-up.
        recovered_end = max(s.end_ms for s in segs if s.recovered)
        crash = [o for o in store.ledger.outages("cam") if o.cause == "not-running"]
        assert len(crash) == 1 and crash[0].start_ms == recovered_end
        assert crash[0].end_ms is not None and crash[0].end_ms >= recovered_end
        audit = store.audit.entries(action="index-recovered")
        assert [e.target for e in audit] == ["cam"]
        assert any(e.kind == "recovered" for e in store.events.since("cam"))
        assert store.consistency().files_without_rows == []
    finally:
        store.close()
    found = check_file(first.path)
    assert found.first_is_key and found.decoded == found.frames > 0
    assert main(["verify", "-c", str(cfg_path)]) == 0


def _write_file(store: SegmentStore, start_ms: int, frames: int) -> tuple[Path, int]:
    """A finished segment file under its final name with no row: the state after the rename."""
    src = fast_pattern()
    writer = store.new_writer("cam", start_ms, src.video, None)
    for pkt in pattern_packets(src, frames):
        pkt.stream = writer.video
        writer.mux(pkt)
    final = store.segment_path("cam", start_ms)
    written = writer.finish(final)
    src.close()
    return final, written.bytes


def test_stranded_files_are_indexed_in_time_order_with_parts(tmp_path: Path) -> None:
    """Indexed segments, then a stranded file, then a `.part` of the next segment: recovery
    keeps each camera's chain in time order."""
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    src = fast_pattern()
    writer = store.new_writer("cam", T0, src.video, None)
    for pkt in pattern_packets(src, 20):
        pkt.stream = writer.video
        writer.mux(pkt)
    from nvr.storage import SegmentInfo

    store.commit(writer, SegmentInfo("cam", T0, T0 + 2000, 2000, 20, "h264", None, 640, 360))
    src.close()
    stranded, size = _write_file(store, T0 + 2000, 20)
    src = fast_pattern()
    part_writer = store.new_writer("cam", T0 + 4000, src.video, None)
    for pkt in pattern_packets(src, 25):
        pkt.stream = part_writer.video
        part_writer.mux(pkt)
    part = part_writer.temp_path
    store.close()  # the crash

    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        got = store.recover()
        assert [s.start_ms for s in got] == [T0 + 2000, T0 + 4000]
        assert got[0].path == stranded and got[0].recovered and got[0].bytes == size
        assert not part.exists() and got[1].recovered
        segs = store.segments("cam")
        assert [s.start_ms for s in segs] == [T0, T0 + 2000, T0 + 4000]
        prev = GENESIS_CHAIN
        for seg in segs:
            assert seg.chain == chain_value(prev, seg.sha256, "cam", seg.start_ms, seg.end_ms)
            prev = seg.chain
        assert store.verify().ok
        assert store.recover() == []  # nothing left to do: idempotent
    finally:
        store.close()


def test_incomplete_or_misplaced_file_without_row_is_kept_not_indexed(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        good, _ = _write_file(store, T0, 20)
        torn = store.segment_path("cam", T0 + 5000)
        torn.write_bytes(good.read_bytes()[:-100])  # cut inside its last fragment
        assert store.recover() == [store.segments("cam")[0]]
        assert torn.exists() and torn.read_bytes() == good.read_bytes()[:-100]
        assert store.consistency().files_without_rows == [torn]
        assert not store.verify().ok  # reported, never silently accepted
    finally:
        store.close()


def test_file_being_committed_is_not_adopted(tmp_path: Path) -> None:
    """The background check never indexes a file `commit` has renamed but not yet indexed."""
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        final, _ = _write_file(store, T0, 20)
        store._pending.add(final)  # as `commit` holds it between rename and insert
        assert store.index_unindexed(final) is None
        assert store.segments("cam") == []
        store._pending.discard(final)
        seg = store.index_unindexed(final)
        assert seg is not None and seg.recovered
        assert store.index_unindexed(final) is None  # already indexed: no second row
        assert len(store.segments("cam")) == 1
    finally:
        store.close()


def test_verify_beside_a_recorder_gives_a_file_being_committed_time_for_its_row(
    tmp_path: Path,
) -> None:
    """`nvr verify` runs beside the daemon: a file a recorder renamed after verify read the
    rows (or is between rename and row) is not reported, once its row comes within the
    grace; a stranded file (no row ever) still is."""
    from sqlalchemy.orm import Session

    from nvr.storage.verify import COMMIT_GRACE_SECONDS, verify_store

    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        committing, _ = _write_file(store, T0, 20)
        stranded, _ = _write_file(store, T0 + 60_000, 20)
        waits: list[float] = []

        def recorder_commits_meanwhile(seconds: float) -> None:
            waits.append(seconds)
            assert store.index_unindexed(committing) is not None  # the row arrives

        with Session(store._engine) as s:
            report = verify_store(s, tmp_path, grace_wait=recorder_commits_meanwhile)
        assert waits == [COMMIT_GRACE_SECONDS]
        assert report.problems == [f"cam: unindexed file {stranded.relative_to(tmp_path)}"]
        with Session(store._engine) as s:
            report = verify_store(s, tmp_path, grace_wait=waits.append)
        assert report.problems == [f"cam: unindexed file {stranded.relative_to(tmp_path)}"]
    finally:
        store.close()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00\x00\x08ftyp",
        b"\x00\x00\x00\x14ftypisom\x00\x00\x02\x00isom\x00\x00\x01\x00moov",  # moov cut short
    ],
    ids=["empty", "ftyp", "cut-moov"],
)
def test_header_only_part_is_removed_and_audited(tmp_path: Path, content: bytes) -> None:
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        part = store.segment_path("cam", T0).with_name(segment_name(T0) + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(content)
        assert store.recover() == []
        assert not part.exists()
        entries = store.audit.entries(action="remove-empty-part")
        assert len(entries) == 1 and entries[0].target == "cam"
        assert entries[0].detail["bytes"] == len(content)
        assert store.consistency().unsalvageable_parts == []
        assert store.audit.verify() == []
    finally:
        store.close()


def test_part_with_samples_but_no_complete_fragment_is_kept(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    try:
        src = fast_pattern()
        writer = store.new_writer("cam", T0, src.video, None)
        for pkt in pattern_packets(src, 5):  # half a fragment: still buffered in the muxer
            pkt.stream = writer.video
            writer.mux(pkt)
        part = writer.temp_path
        header = part.read_bytes()
        src.close()
        part.write_bytes(header + b"\x00\x00\x10\x00moof" + b"\x01" * 200)  # torn 1st fragment
        assert store.recover() == []
        assert part.exists()
        assert store.audit.entries(action="remove-empty-part") == []
        assert store.consistency().unsalvageable_parts == [part]
    finally:
        store.close()


# --- item 8: a damaged index --------------------------------------------------------------------

REBUILD_HINT = "nvr index rebuild"


def index_config(tmp_path: Path, root: Path) -> Path:
    """A config naming the recorded root (the CLI's view of the same store)."""
    path = tmp_path / "nvr-index.toml"
    path.write_text(
        CONFIG.replace('root = "rec"', f'root = "{root}"').replace(
            'log_level = "warning"', 'log_level = "error"'
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def recorded(camsim_clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store recorded from the GStreamer simulator (2 s segments, H.264 + AAC), closed."""
    root = tmp_path_factory.mktemp("recorded") / "rec"
    sim = CameraSim(camsim_clips, mounts=["h264aac"])
    sim.start()
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    rec = _recorder(store, sim.url("h264aac"))
    try:
        wait_for(lambda: len(store.segments("cam")) >= 5, 60, "five segments")
    finally:
        rec.stop()
        rec.thread.join(15)
        store.close()
        sim.stop()
    assert not rec.thread.is_alive()
    return root


def _recorder(store: SegmentStore, url: str) -> CameraRecorder:
    opener = RtspOpener(
        url, username=None, password=None, transport="tcp", timeout_s=3.0, camera="cam"
    )
    rec = CameraRecorder("cam", opener, store, segment_seconds=2, reserve_bytes=0, stall_seconds=3)
    rec.start()
    return rec


def copy_store(recorded: Path, tmp_path: Path) -> Path:
    root = tmp_path / "rec"
    shutil.copytree(recorded, root)
    return root


def footage(root: Path) -> dict[str, str]:
    """Every segment file (and `.part`) under the root with its SHA-256."""
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (p.name.endswith(".mp4") or p.name.endswith(".part"))
    }


def leaf_pages(db: Path, name: str) -> list[int]:
    """Page numbers of the leaf pages of table or index `name` (SQLite's dbstat table)."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (name,),
        ).fetchall()
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    assert size == PAGE
    return [r[0] for r in rows]


def damage_page(db: Path, page: int) -> None:
    with db.open("r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(b"\xa5" * PAGE)


PAGE = 4096


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `nvr` command in a child process (its own logging, exit status)."""
    return subprocess.run(
        [sys.executable, "-m", "nvr.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_clear_refusal(done: subprocess.CompletedProcess[str], db: Path) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out, out
    assert f"the index {db} is damaged" in out, out
    assert REBUILD_HINT in out and "nothing was deleted" in out, out


def rebuilt_and_checked(
    cfg: Path, root: Path, files: dict[str, str], *, audit_lost: bool = False
) -> list[Segment]:
    """Rebuild with the CLI, then: every file indexed once, `nvr verify` clean (but for
    the audit entries lost with the damaged pages, when `audit_lost`: reported, never
    hidden), each file re-read and decoded with PyAV."""
    done = run_cli("index", "rebuild", "-c", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    assert footage(root) == files  # the rebuild changed no recording
    verified = run_cli("verify", "-c", str(cfg))
    if audit_lost:
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert " 0 recording problems" in verified.stdout, verified.stdout
        assert "differs from the signed checkpoint" in verified.stdout, verified.stdout
    else:
        assert verified.returncode == 0, verified.stdout + verified.stderr
    store = reader(root)
    try:
        segs = store.segments("cam")
        assert sorted(str(s.path.relative_to(root)) for s in segs) == sorted(files)
        assert [e.action for e in store.audit.entries(action="index-rebuild")] == ["index-rebuild"]
    finally:
        store.close()
    for seg in segs:
        found = check_file(seg.path)
        assert found.first_is_key and found.decoded == found.frames > 0
        assert found.audio_codec == "aac" and found.audio_packets > 0
    return segs


@pytest.mark.slow  # `recorded`: real RTSP from the GStreamer simulator, in real time
def test_truncated_index_is_refused_with_the_way_out_then_rebuilt(
    recorded: Path, tmp_path: Path
) -> None:
    root = copy_store(recorded, tmp_path)
    cfg = index_config(tmp_path, root)
    db = root / "index.db"
    assert not (root / "index.db-wal").exists()  # the store closed cleanly: all in the file
    files = footage(root)
    assert len(files) >= 5
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)
    truncated = db.read_bytes()
    for command in ("status", "verify", "run"):
        done = run_cli(command, "-c", str(cfg))
        assert_clear_refusal(done, db)
    assert footage(root) == files  # nothing deleted, nothing renamed
    assert db.read_bytes() == truncated

    rebuilt_and_checked(cfg, root, files)
    (aside,) = root.glob("index.db.damaged-*")
    assert aside.read_bytes() == truncated  # the damaged index kept as it was


@pytest.mark.slow  # `recorded`: real RTSP from the GStreamer simulator, in real time
def test_corrupt_page_is_refused_at_start_and_rebuilt_as_it_was(
    recorded: Path, tmp_path: Path
) -> None:
    """A damaged page of an index b-tree (the rows themselves intact): `run` refuses at
    start, before anything is recovered or deleted; the rebuild proves every file and keeps
    every row's times and chain value."""
    root = copy_store(recorded, tmp_path)
    cfg = index_config(tmp_path, root)
    db = root / "index.db"
    files = footage(root)
    before = reader(root)
    try:
        old = {str(s.path.relative_to(root)): s for s in before.segments("cam")}
    finally:
        before.close()
    assert run_cli("verify", "-c", str(cfg)).returncode == 0  # reads only what is intact
    (page,) = leaf_pages(db, "ix_segments_camera_end")
    damage_page(db, page)
    assert_clear_refusal(run_cli("run", "-c", str(cfg)), db)
    with pytest.raises(IndexCorruptError, match="integrity check"):
        asyncio.run(run_daemon(load_config(cfg)))
    assert footage(root) == files

    segs = rebuilt_and_checked(cfg, root, files)
    for seg in segs:
        was = old[str(seg.path.relative_to(root))]
        assert not seg.recovered
        assert (seg.sha256, seg.start_ms, seg.end_ms, seg.chain) == (
            was.sha256,
            was.start_ms,
            was.end_ms,
            was.chain,
        )


def test_rebuild_proves_what_the_damaged_file_still_holds(tmp_path: Path) -> None:
    """A damaged page of the segments table itself: its rows are lost, the files they named
    are indexed as `recovered` at their place in the chain; the rows read back keep their
    recorded times; `verify` is clean."""
    store = SegmentStore(tmp_path, f"sqlite:///{tmp_path / 'index.db'}")
    from nvr.storage import SegmentInfo

    try:
        for i in range(30):
            src = fast_pattern()
            writer = store.new_writer("cam", T0 + i * 2000, src.video, None)
            for pkt in pattern_packets(src, 10):
                pkt.stream = writer.video
                writer.mux(pkt)
            start = T0 + i * 2000
            store.commit(
                writer, SegmentInfo("cam", start, start + 2000, 2000, 10, "h264", None, 640, 360)
            )
            src.close()
        old = {s.path: s for s in store.segments("cam")}
    finally:
        store.close()
    db = tmp_path / "index.db"
    leaves = leaf_pages(db, "segments")
    assert len(leaves) >= 2, leaves
    damage_page(db, leaves[0])  # the oldest rows
    report = rebuild_index(tmp_path, f"sqlite:///{db}")
    assert "segments" in report.lost and not report.missing and not report.not_indexed
    store = reader(tmp_path)
    try:
        segs = store.segments("cam")
        assert len(segs) == 30 and store.verify().ok
    finally:
        store.close()
    lost = [s for s in segs if s.recovered]
    proven = [s for s in segs if not s.recovered]
    assert lost and proven and lost[-1].start_ms < proven[0].start_ms
    (cam,) = report.cameras.values()
    # After the break the proven rows are linked anew (their recorded times kept).
    assert (cam.files, cam.recovered, cam.proven) == (30, len(lost), len(proven))
    assert cam.relinked == len(proven)
    for seg in proven:
        was = old[seg.path]
        assert (seg.start_ms, seg.end_ms, seg.frames) == (was.start_ms, was.end_ms, was.frames)
    for seg in segs:
        assert seg.sha256 == old[seg.path].sha256 == sha256(seg.path)


@pytest.mark.slow
def test_corruption_at_run_time_pauses_with_a_reason_then_rebuild_keeps_everything(
    camsim: CameraSim, tmp_path: Path
) -> None:
    root = tmp_path / "rec"
    cfg = index_config(tmp_path, root)
    db = root / "index.db"
    store = SegmentStore(root, f"sqlite:///{db}")
    config = NvrConfig(
        storage=StorageConfig(root=root, reserve_bytes=0),
        cameras=[
            CameraConfig(name="cam", url=camsim.url("h264aac"), segment_seconds=10, stall_seconds=3)
        ],
    )
    supervisor = Supervisor(config, store)  # the daemon's view: health and status.json
    supervisor.start()
    rec = supervisor.recorders["cam"]
    try:
        wait_for(lambda: len(store.segments("cam")) >= 1, 60, "a first segment")
        conn = sqlite3.connect(db)
        try:  # everything into the main file, which is then damaged past its first page
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        finally:
            conn.close()
        with db.open("r+b") as f:
            f.seek(PAGE)
            f.write(b"\xa5" * PAGE * (pages - 1))
        wait_for(lambda: rec.status().state == "index-damaged", 30, "the index-damaged state")
        for _ in range(3):  # paused and saying why: never a dead thread, never "starting"
            st = rec.status()
            assert rec.thread.is_alive()
            assert st.state == "index-damaged", st
            assert f"the index {db} is damaged" in st.detail and REBUILD_HINT in st.detail
            (health,) = supervisor.health()
            assert not health.stuck, health  # nothing for self-repair to replace
            wait_progress(rec, 1.0, "a round of the pause")
        write_status(root, supervisor, True)
        shown = run_cli("status", "-c", str(cfg))
        out = shown.stdout + shown.stderr
        assert shown.returncode == 1 and "Traceback" not in out, out
        assert "cam: index-damaged (the index" in out and "index: DAMAGED" in out, out
    finally:
        late = asyncio.run(supervisor.stop())
        store.close()
    assert not late and not rec.thread.is_alive()
    files = footage(root)
    assert not [f for f in files if f.endswith(".part")], files  # in-flight footage kept
    # Every page but the first was damaged: the audit log went with them, and says so.
    segs = rebuilt_and_checked(cfg, root, files, audit_lost=True)
    assert len(segs) >= 2  # the segment in flight at the damage is indexed too
