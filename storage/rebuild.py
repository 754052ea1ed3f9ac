"""`nvr index rebuild`: a new SQLite index built from the segment files, for an index that is
damaged (issue 11, item 8). Runs on the calling thread (the CLI), with the recorder stopped:
it holds the storage root's writer lock throughout.

Order: take the root lock -> move the damaged file (and its `-wal`/`-shm`) aside as
`<index>.damaged-<UTC time>` (kept, never deleted) -> create a new index at the newest schema
with the store's id (from `<root>/.nvr-store`) -> copy every row the damaged file still gives
up, table by table, skipping past damaged pages (locks, windows, audit log, ledger, accounts,
exports, chain gaps) -> index every complete segment file on disk, per camera in time order ->
one `index-rebuild` audit entry saying what was proven and what was not.

Proof: a file is *proven* when the damaged index still has its row, the row's chain value
recomputes from its own fields and the file's SHA-256 (re-hashed now) is the one in the row.
A proven file keeps its row's times and its chain link as long as the chain is unbroken from
the camera's start (directly, or across a purge's recorded gap); after a break every later
link is made anew (`relinked`). A file without a proven row is probed with PyAV, marked
`recovered` and linked at its place in time. Files that are not complete fragmented MP4s, or
not in their segment folder, are left in place and listed (the daemon's start-up recovery
salvages `.part` files). Rows of the damaged index whose file is gone are listed: missing
footage is reported, never hidden.

Nothing under the root is deleted. PostgreSQL indexes are restored from their backups, not
rebuilt here."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from nvr.storage.audit import AUDIT_HEAD_NAME
from nvr.storage.errors import StorageError
from nvr.storage.index import make_engine, upgrade
from nvr.storage.media.fragments import scan_fragments
from nvr.storage.schema import Base
from nvr.storage.store import (
    GENESIS_CHAIN,
    MARKER,
    SegmentStore,
    chain_value,
    parse_segment_name,
    probe_segment,
    segment_name,
)
from nvr.storage.timestamps import now_ms
from nvr.storage.verify import file_sha256
from nvr.storage.writer import fsync_dir

NOT_COPIED = {"alembic_version", "segments", "segment_samples"}
"""Tables the rebuild makes itself (segments) or that are remade when needed (the playback
sample indexes)."""
BATCH = 500


@dataclass
class CameraRebuild:
    """What the rebuild indexed for one camera."""

    files: int = 0
    proven: int = 0
    """Files whose row in the damaged index matched (hash and chain value)."""
    relinked: int = 0
    """Proven files linked anew into the chain, after a break in the proven chain."""
    recovered: int = 0
    """Files without a proven row: probed, marked `recovered`, linked at their place."""


@dataclass
class RebuildReport:
    """What `rebuild_index` did; `problems` lists what an operator must look at."""

    damaged: Path | None
    cameras: dict[str, CameraRebuild] = field(default_factory=dict)
    copied: dict[str, int] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    """Tables of the damaged index not (fully) read back, and why."""
    not_indexed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Paths the damaged index had rows for (not marked for deletion) whose file is gone."""

    @property
    def problems(self) -> list[str]:
        out = [f"table {t}: {why}" for t, why in sorted(self.lost.items())]
        out += [f"not indexed (kept in place): {p}" for p in self.not_indexed]
        out += [f"missing file of a row of the damaged index: {p}" for p in self.missing]
        return out


def rebuild_index(root: Path, database_url: str) -> RebuildReport:
    """Rebuild the SQLite index at `database_url` from the segment files under `root` (see
    the module docstring). StorageError if the recorder is running, the index is not a
    SQLite file, or the root holds no store marker."""
    root = root.resolve()
    engine = make_engine(database_url)
    db_name = engine.url.database if engine.dialect.name == "sqlite" else None
    engine.dispose()
    if not db_name or db_name == ":memory:":
        raise StorageError(
            "nvr index rebuild works on a SQLite index file; restore a PostgreSQL index from "
            "its backups"
        )
    db = Path(db_name).resolve()
    marker = root / MARKER
    try:
        store_id = marker.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise StorageError(
            f"{marker} cannot be read ({err.strerror}): is storage.root the folder holding "
            "the recordings?"
        ) from err
    with _root_lock(root):
        damaged = _move_aside(db)
        old = _read_damaged(damaged) if damaged is not None else _Old.unreadable("no index file")
        report = RebuildReport(damaged=damaged)
        report.lost.update(old.lost)
        new_engine = make_engine(database_url)
        try:
            upgrade(new_engine)
        finally:
            new_engine.dispose()
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            _copy_tables(conn, old, store_id, report)
            _check_audit_head(root, old, report)
            _index_files(conn, root, old, report)
        finally:
            conn.close()
        fsync_dir(db.parent)
        store = SegmentStore(root, database_url, exclusive=False)
        try:
            store.audit.append(
                "nvr",
                "index-rebuild",
                str(db),
                "ok" if not report.problems else "problems",
                {
                    "damaged": str(damaged) if damaged else None,
                    "cameras": {cam: vars(c) for cam, c in sorted(report.cameras.items())},
                    "lost_tables": report.lost,
                    "not_indexed": report.not_indexed[:100],
                    "missing": report.missing[:100],
                    "missing_count": len(report.missing),
                },
            )
        finally:
            store.close()
    return report


@contextlib.contextmanager
def _root_lock(root: Path) -> Iterator[None]:
    """The recorder's writer lock on the root (see `SegmentStore`), held for the block."""
    path = root / ".nvr-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise StorageError(
                f"{root} is in use by a running recorder (lock {path} is held): stop it "
                "before rebuilding its index"
            ) from err
        yield
    finally:
        os.close(fd)


def _move_aside(db: Path) -> Path | None:
    """Rename the index and its WAL files to `<name>.damaged-<UTC time>`; None if absent."""
    if not db.exists():
        return None
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):  # first, so the main file never pairs with a stale WAL
        side = db.with_name(db.name + suffix)
        if side.exists():
            os.rename(side, aside.with_name(aside.name + suffix))
    os.rename(db, aside)
    fsync_dir(db.parent)
    return aside


@dataclass
class _Old:
    """Rows read back from the damaged index, per table, as column -> value dicts."""

    tables: dict[str, list[dict[str, Any]]]
    lost: dict[str, str]

    @staticmethod
    def unreadable(why: str) -> _Old:
        return _Old({}, {"*": why})


def _read_damaged(path: Path) -> _Old:
    """Every row the damaged file still gives up (read from a copy: SQLite may write the
    `-shm` of the file it reads, and the damaged file is kept exactly as it was)."""
    copy = path.with_name(path.name + ".reading")
    tables: dict[str, list[dict[str, Any]]] = {}
    lost: dict[str, str] = {}
    try:
        for suffix in ("", "-wal"):
            src = path.with_name(path.name + suffix)
            if src.exists():
                _copy_file(src, copy.with_name(copy.name + suffix))
        conn = sqlite3.connect(copy, isolation_level=None)
        try:
            try:
                names = [
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                ]
            except sqlite3.DatabaseError as err:
                return _Old.unreadable(f"the schema cannot be read: {err}")
            for name in names:
                if name in Base.metadata.tables and name not in ("alembic_version",):
                    rows, why = _read_table(conn, name)
                    tables[name] = rows
                    if why:
                        lost[name] = why
        finally:
            conn.close()
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            copy.with_name(copy.name + suffix).unlink(missing_ok=True)
    return _Old(tables, lost)


def _copy_file(src: Path, dst: Path) -> None:
    with src.open("rb") as f, dst.open("wb") as g:
        while chunk := f.read(1 << 20):
            g.write(chunk)


def _read_table(conn: sqlite3.Connection, table: str) -> tuple[list[dict[str, Any]], str]:
    """The readable rows of `table` in rowid order, stepping past damaged pages; and why some
    were not read ("" when all were)."""
    try:
        cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    except sqlite3.DatabaseError as err:
        return [], f"unreadable: {err}"
    select = ", ".join(f'"{c}"' for c in cols)
    rows: list[dict[str, Any]] = []
    why = ""
    after = 0  # rowids of these tables start at 1
    while True:
        got = 0
        try:
            cur = conn.execute(
                f'SELECT rowid, {select} FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT ?',
                (after, BATCH),
            )
            for row in cur:
                got += 1
                after = row[0]
                rows.append(dict(zip(cols, row[1:], strict=True)))
        except sqlite3.DatabaseError as err:
            why = f"rows lost to damaged pages ({err})"
            nxt = _next_readable(conn, table, after)
            if nxt is None:
                break
            after = nxt
            continue
        if got < BATCH:
            break
    return rows, why


def _next_readable(conn: sqlite3.Connection, table: str, after: int) -> int | None:
    """A rowid from which reading `table` works again, past the damaged page after `after`
    (the greatest rowid found to start a readable range; None if none)."""

    def readable(x: int) -> bool:
        try:
            conn.execute(
                f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid LIMIT 1', (x,)
            ).fetchall()
        except sqlite3.DatabaseError:
            return False
        return True

    step = 1
    bad = after
    while not readable(bad + step):
        bad += step
        step *= 2
        if bad + step >= 2**63:
            return None
    good = bad + step
    while good - bad > 1:  # the smallest readable start: skip as few rows as possible
        mid = (bad + good) // 2
        if readable(mid):
            good = mid
        else:
            bad = mid
    return good


def _copy_tables(conn: sqlite3.Connection, old: _Old, store_id: str, report: RebuildReport) -> None:
    """Copy what was read of every table but the segments, parents before children; a row
    the new index refuses (its parent row was lost) is counted as lost."""
    conn.execute("BEGIN")
    conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (store_id,))
    for table in Base.metadata.sorted_tables:
        name = table.name
        if name in NOT_COPIED or name not in old.tables:
            continue
        have = {r[1] for r in conn.execute(f'PRAGMA table_info("{name}")')}
        copied = refused = 0
        for row in old.tables[name]:
            if name == "meta" and row.get("key") == "store_id":
                continue
            cols = [c for c in row if c in have]
            try:
                conn.execute(
                    f'INSERT INTO "{name}" ({", ".join(cols)}) '
                    f"VALUES ({', '.join('?' for _ in cols)})",
                    [row[c] for c in cols],
                )
                copied += 1
            except sqlite3.IntegrityError:
                refused += 1
        report.copied[name] = copied
        if refused:
            report.lost[name] = (
                report.lost.get(name, "") + f" {refused} rows refused (their parent rows lost)"
            ).strip()
    conn.execute("COMMIT")


def _check_audit_head(root: Path, old: _Old, report: RebuildReport) -> None:
    """The signed audit head outside the index names the newest entry: say if the entries
    up to it were not all read back (the log cannot be made whole from the files)."""
    try:
        head = int((root / AUDIT_HEAD_NAME).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return
    ids = {r.get("id") for r in old.tables.get("audit", [])}
    have = sum(1 for i in range(1, head + 1) if i in ids)
    if have < head:
        report.lost["audit"] = (
            f"{head - have} of the {head} entries up to the signed head (#{head}) were not "
            "read back from the damaged index; `nvr audit-verify` will report the break"
        )


def _gaps(old: _Old) -> dict[str, str]:
    """after_chain -> last_chain of every purge gap the damaged index recorded."""
    return {g["after_chain"]: g["last_chain"] for g in old.tables.get("chain_gaps", [])}


def _reaches(prev: str, want: str, gaps: dict[str, str]) -> bool:
    """Whether the chain continues from `prev` to `want`, directly or across purge gaps."""
    seen = 0
    while prev != want and prev in gaps and seen <= len(gaps):
        prev = gaps[prev]
        seen += 1
    return prev == want


def _segment_files(root: Path) -> Iterator[tuple[str, Path]]:
    for cam_dir in sorted(root.iterdir()):
        if not cam_dir.is_dir() or cam_dir.name.startswith("."):
            continue
        for dirpath, _dirs, files in os.walk(cam_dir):
            for name in files:
                if name.endswith(".mp4"):
                    yield cam_dir.name, Path(dirpath) / name


def _index_files(conn: sqlite3.Connection, root: Path, old: _Old, report: RebuildReport) -> None:
    """One row per complete segment file, per camera in time order (see module docstring)."""
    old_rows = {r["path"]: r for r in old.tables.get("segments", []) if r.get("path")}
    gaps = _gaps(old)
    work: list[tuple[str, int, str, Path]] = []
    for camera, path in _segment_files(root):
        try:
            start = parse_segment_name(path.name)
        except ValueError:
            report.not_indexed.append(f"{path.relative_to(root)}: not a segment file name")
            continue
        work.append((camera, start, path.name, path))
    work.sort()
    heads: dict[str, str] = {}
    seen: set[str] = set()
    conn.execute("BEGIN")
    for n, (camera, start, _name, path) in enumerate(work):
        rel = str(path.relative_to(root))
        row = _segment_row(root, camera, start, path, old_rows.get(rel), heads, gaps, report)
        if row is None:
            continue
        seen.add(rel)
        cols = list(row)
        conn.execute(
            f"INSERT INTO segments ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
            [row[c] for c in cols],
        )
        if n % 1000 == 999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    for rel, r in sorted(old_rows.items()):
        if rel not in seen and not r.get("garbage") and not (root / rel).exists():
            report.missing.append(rel)


def _segment_row(
    root: Path,
    camera: str,
    start: int,
    path: Path,
    old: dict[str, Any] | None,
    heads: dict[str, str],
    gaps: dict[str, str],
    report: RebuildReport,
) -> dict[str, Any] | None:
    """The new row of one file, or None (listed in `report.not_indexed`) if it is no
    complete segment."""
    rel = str(path.relative_to(root))
    store_path = _segment_path(root, camera, start)
    if store_path != path:
        report.not_indexed.append(f"{rel}: not in the folder of a segment starting then")
        return None
    try:
        scan = scan_fragments(path)
        if not scan.complete:
            report.not_indexed.append(
                f"{rel}: not a complete fragmented MP4 ({scan.fragments} fragments, "
                f"{scan.good_bytes} of {scan.size} bytes in complete boxes)"
            )
            return None
        sha = file_sha256(path)
        proven = (
            old is not None
            and old.get("sha256") == sha
            and old.get("bytes") == scan.size
            and chain_value(old["prev_chain"], sha, camera, old["start_ms"], old["end_ms"])
            == old.get("chain")
        )
        info = None if proven else probe_segment(path, camera, start)
    except (OSError, av.FFmpegError, StorageError) as err:
        report.not_indexed.append(f"{rel}: unreadable ({err})")
        return None
    stats = report.cameras.setdefault(camera, CameraRebuild())
    stats.files += 1
    prev = heads.get(camera, GENESIS_CHAIN)
    if proven and old is not None:
        stats.proven += 1
        row = {k: old[k] for k in _KEPT if k in old}
        if _reaches(prev, old["prev_chain"], gaps):
            row["prev_chain"], row["chain"] = old["prev_chain"], old["chain"]
        else:
            stats.relinked += 1
            row["prev_chain"] = prev
            row["chain"] = chain_value(prev, sha, camera, old["start_ms"], old["end_ms"])
    else:
        assert info is not None
        stats.recovered += 1
        row = {
            "start_ms": info.start_ms,
            "end_ms": info.end_ms,
            "duration_ms": info.duration_ms,
            "video_codec": info.video_codec,
            "audio_codec": info.audio_codec,
            "width": info.width,
            "height": info.height,
            "frames": info.frames,
            "recovered": 1,
            "discontinuity": 0,
            "created_ms": now_ms(),
            "prev_chain": prev,
            "chain": chain_value(prev, sha, camera, info.start_ms, info.end_ms),
        }
    row.update(camera=camera, path=rel, bytes=scan.size, sha256=sha, garbage=0)
    heads[camera] = row["chain"]
    return row


_KEPT = (
    "start_ms",
    "end_ms",
    "duration_ms",
    "video_codec",
    "audio_codec",
    "width",
    "height",
    "frames",
    "recovered",
    "discontinuity",
    "created_ms",
    "elapsed_ms",  # the evidence time (storage/clock.py); a re-scanned file has none
)
"""Columns of a proven row taken from the damaged index as they were."""


def _segment_path(root: Path, camera: str, start_ms: int) -> Path:
    dt = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    hour = root / camera / f"{dt:%Y}" / f"{dt:%m}" / f"{dt:%d}" / f"{dt:%H}"
    return hour / segment_name(start_ms)
