"""Faults of the index (issue 11, items 7 and 8): a crash between a segment's rename and its
row, header-only `.part` files, and a damaged `index.db`.

Crashes are real: a child process running the daemon is SIGKILLed at the fault point. The
damaged index is a real SQLite file truncated or with a page overwritten. Everything is then
checked through the store, `nvr verify` and the other commands, as an operator would."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from config import load_config
from nvr.cli import main
from nvr.daemon import run_daemon
from storage import SegmentStore
from storage.store import GENESIS_CHAIN, chain_value, segment_name
from tests.media import check_file, fast_pattern, pattern_packets

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
    from config import load_config
    from nvr.daemon import run_daemon
    from storage.store import SegmentStore

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
            return any(o.cause == "not-running" and o.end_ms is not None for o in s.outages())
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
        crash = [o for o in store.outages("cam") if o.cause == "not-running"]
        assert len(crash) == 1 and crash[0].start_ms == recovered_end
        assert crash[0].end_ms is not None and crash[0].end_ms >= recovered_end
        audit = store.audit_entries(action="index-recovered")
        assert [e.target for e in audit] == ["cam"]
        assert any(e.kind == "recovered" for e in store.events("cam"))
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
    from storage import SegmentInfo

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
        entries = store.audit_entries(action="remove-empty-part")
        assert len(entries) == 1 and entries[0].target == "cam"
        assert entries[0].detail["bytes"] == len(content)
        assert store.consistency().unsalvageable_parts == []
        assert store.verify_audit() == []
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
        assert store.audit_entries(action="remove-empty-part") == []
        assert store.consistency().unsalvageable_parts == [part]
    finally:
        store.close()
