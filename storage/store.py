"""`SegmentStore`: the only door to recorded segment files and their index.

Owns the files under `<root>/<camera>/YYYY/MM/DD/HH/` and the index tables of footage
(segments, the hash chain, windows, runs and clock holds). The invariants span both, so both
live here.

Create order (each segment): write `<name>.mp4.part` while hashing -> fsync file -> rename to
`<name>.mp4` -> fsync directory -> insert the row (with the per-camera hash chain value).
A crash before the row leaves either a `.part` file (salvaged at start-up up to its last
complete fragment and indexed as recovered) or a complete file without a row (re-scanned,
re-hashed and indexed as recovered at start-up). A `.part` file holding only the MP4 header,
no sample, is removed at start-up (audited): it holds no footage. An index write that fails
(its filesystem full, an I/O error) leaves the durable file *held*: kept in order per camera
and indexed, before anything newer of that camera, by the next `commit`/`salvage` or
`index_held` that can write (`IndexWriteError` until then).

Index reserve: beside a SQLite index file the daemon keeps `<index>.reserve`
(`INDEX_RESERVE_BYTES` of zeros). When an index write finds its filesystem full, the reserve is
deleted so the next writes (the outage ledger, the held segments) find room; `free_bytes` counts
it as used until it is made again, which happens as soon as there is room, before recorders
resume (on a filesystem of the index's own, recorders wait for `index_has_room`).

Delete order (used by retention): check the window and locks and mark the rows as garbage in
ONE write transaction that holds the database's write lock (a lock committed by any process
either precedes the check or waits for the mark) -> unlink -> fsync directory -> drop the row;
start-up finishes half-done deletes. Nothing here deletes a file that has no row, except those
header-only `.part` files.

Clock evidence (`storage.clock`, docs/retention-clock.md): the exclusive store is the
recorder's *run*: it records its boot, wall clock and uptime in `runs` at open and at each
`clock_heartbeat`, stamps each segment with the evidence time (`elapsed_ms`), and records a
step of the wall clock as a hold (`clock_holds`). The delete door refuses everything while the
clock is suspicious (a hold, or this process's clock stepped against the recorder's last
heartbeat) unless an operator confirmed it, and every segment that is younger than its window
by the evidence time, or ends after the newest footage's time minus the window.

Windows: each camera's window is stored in the index (`camera_windows`) when its footage is
indexed and only ever grows, so footage keeps the longest window it was promised whatever
config a later process (or the CLI) reads.

Identity: `<root>/.nvr-store` holds the store id, and so does the index's `meta` table. An index
that is empty or belongs to another store, beside existing recordings, is refused at open
(`ForeignIndexError`): a wrong or lost index must never lead to deleting footage.

Everything else in the index (accounts, exports, locks, audit log, outage ledger, stream
events, capacity history, the playback sample cache) is kept by repositories over the shared
`Index` (`storage.repository`), opened here and reached as this store's attributes.

Threads: methods are blocking and thread-safe. Recorder threads call `new_writer`/`commit`;
the event loop calls queries through `asyncio.to_thread`. Index writes are serialised by one
lock (`Index.writing`), so a single process is the only writer of its SQLite file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, overload

import av
from argon2 import PasswordHasher
from sqlalchemy import (
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from nvr.storage import clock as evidence
from nvr.storage.accounts import AccountStore
from nvr.storage.audit import AuditEntry
from nvr.storage.capacity import CapacityHistory
from nvr.storage.errors import (
    ClockSuspicious,
    ForeignIndexError,
    IndexCorruptError,
    IndexWriteError,
    RetentionViolation,
    StorageError,
    StorageIOError,
)
from nvr.storage.exports import ExportRegister
from nvr.storage.guard import (
    MAX_LOCK_YEARS,
    Lock,
    protection,
)
from nvr.storage.index import check_integrity, make_engine, migrate
from nvr.storage.ledger import OutageLedger, StreamEvents
from nvr.storage.locks import LockRegister, active_lock, lock_of
from nvr.storage.media.fragments import scan_fragments
from nvr.storage.pictures import PictureEvents
from nvr.storage.repository import Index
from nvr.storage.samples import SampleCache
from nvr.storage.schema import (
    CameraWindowRow,
    ChainGapRow,
    ClockHoldRow,
    LockRow,
    Meta,
    RunRow,
    SegmentRow,
    SegmentSamplesRow,
)
from nvr.storage.timestamps import DAY_MS, iso, now_ms
from nvr.storage.verify import VerifyReport, file_sha256, verify_store
from nvr.storage.writer import SegmentWriter, WrittenFile, fsync_dir

log = logging.getLogger("nvr.storage")

GENESIS_CHAIN = "0" * 64
MIN_WINDOW_DAYS = 30
MARKER = ".nvr-store"
NAME_FORMAT = "%Y%m%dT%H%M%S"
INDEX_RESERVE_BYTES = 4 * 1024 * 1024
"""Room kept beside a SQLite index for the writes that must still succeed on a full disk
(outage ledger, held segments): thousands of rows, and a WAL that grows before checkpoints."""


def chain_value(prev: str, sha256: str, camera: str, start_ms: int, end_ms: int) -> str:
    """The per-camera hash chain: sha256(prev || sha256 || camera || start || end)."""
    text = f"{prev}|{sha256}|{camera}|{start_ms}|{end_ms}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SNAPSHOT_SUFFIX = ".jpg"
SNAPSHOT_KIND = re.compile(r"^[a-z-]{1,32}$")


def segment_name(start_ms: int) -> str:
    """`20261122T081500.123Z.mp4` for a UTC start time in ms."""
    dt = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    return f"{dt.strftime(NAME_FORMAT)}.{start_ms % 1000:03d}Z.mp4"


def parse_segment_name(name: str) -> int:
    """Inverse of `segment_name` (the `.part` suffix is ignored); ValueError if foreign."""
    stem = name.removesuffix(".part").removesuffix(".mp4")
    if not stem.endswith("Z") or "." not in stem:
        raise ValueError(f"not a segment name: {name}")
    whole, millis = stem[:-1].rsplit(".", 1)
    dt = datetime.strptime(whole, NAME_FORMAT).replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1000 + int(millis)


class SegmentRef(NamedTuple):
    """A segment as playback and exports name it: its row, its time, its file and the file's
    hash. Made on demand from a `SegmentRefs`, which is what is kept."""

    id: int
    start_ms: int
    end_ms: int
    path: str
    """The file's absolute path."""
    sha256: str


@dataclass(frozen=True, slots=True)
class SegmentRefs(Sequence[SegmentRef]):
    """Segments of one camera, oldest first, as columns: a sequence of `SegmentRef`.

    Why columns: a 24 h range names ~1,440 segments, and a playback request holds them while
    it waits for its plan. As `Segment`s (each with a `Path`) twenty such requests made every
    full garbage collection walk ~100,000 objects with the GIL held, which stopped the event
    loop for 100-300 ms (issue 13). Plain tuples of ints and strings are untracked by the
    collector the first time it sees them (named tuples are not), so this is one object to
    walk however long the range."""

    ids: tuple[int, ...]
    start_ms: tuple[int, ...]
    end_ms: tuple[int, ...]
    paths: tuple[str, ...]
    sha256: tuple[str, ...]

    @staticmethod
    def of(segments: Sequence[Segment]) -> SegmentRefs:
        return SegmentRefs(
            tuple(s.id for s in segments),
            tuple(s.start_ms for s in segments),
            tuple(s.end_ms for s in segments),
            tuple(str(s.path) for s in segments),
            tuple(s.sha256 for s in segments),
        )

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, i: int) -> SegmentRef: ...

    @overload
    def __getitem__(self, i: slice) -> SegmentRefs: ...

    def __getitem__(self, i: int | slice) -> SegmentRef | SegmentRefs:
        if isinstance(i, slice):
            return SegmentRefs(
                self.ids[i], self.start_ms[i], self.end_ms[i], self.paths[i], self.sha256[i]
            )
        return SegmentRef(
            self.ids[i], self.start_ms[i], self.end_ms[i], self.paths[i], self.sha256[i]
        )


@dataclass(frozen=True)
class SegmentInfo:
    """What a recorder knows about a segment it has just finished writing."""

    camera: str
    start_ms: int
    end_ms: int
    duration_ms: int
    frames: int
    video_codec: str | None
    """None (and no width, height or frames): an audio-only camera's segment."""
    audio_codec: str | None
    width: int | None
    height: int | None
    discontinuity: bool = False


@dataclass(frozen=True)
class Segment:
    """An indexed segment."""

    id: int
    camera: str
    start_ms: int
    end_ms: int
    duration_ms: int
    bytes: int
    path: Path
    video_codec: str | None
    """None (and no width or height, 0 frames): an audio-only camera's segment."""
    audio_codec: str | None
    width: int | None
    height: int | None
    frames: int
    sha256: str
    chain: str
    recovered: bool
    discontinuity: bool

    @staticmethod
    def from_row(row: SegmentRow, root: Path) -> Segment:
        return Segment(
            id=row.id,
            camera=row.camera,
            start_ms=row.start_ms,
            end_ms=row.end_ms,
            duration_ms=row.duration_ms,
            bytes=row.bytes,
            path=root / row.path,
            video_codec=row.video_codec,
            audio_codec=row.audio_codec,
            width=row.width,
            height=row.height,
            frames=row.frames,
            sha256=row.sha256,
            chain=row.chain,
            recovered=row.recovered,
            discontinuity=row.discontinuity,
        )


@dataclass(frozen=True)
class ConsistencyReport:
    """Differences between the files on disk and the index. Reported, never acted on."""

    files_without_rows: list[Path]
    rows_without_files: list[Path]
    unsalvageable_parts: list[Path]


@dataclass(frozen=True)
class CameraStats:
    segments: int
    bytes: int
    media_ms: int


@dataclass(frozen=True)
class CameraStorage:
    """What one camera's footage takes on disk now (rows not marked for deletion)."""

    camera: str
    segments: int
    stored_bytes: int
    locked_bytes: int
    """Bytes of segments overlapping an active lock (each counted once)."""
    oldest_ms: int | None
    """Start of the oldest footage kept."""


class SegmentStore:
    """The only door to recordings and their index. See the module docstring for the orders."""

    def __init__(
        self,
        root: Path,
        database_url: str,
        *,
        exclusive: bool = True,
        retention_days: Callable[[str], int] | None = None,
        clock: Callable[[], int] = now_ms,
        migrate_in_child: bool = False,
        pause: Callable[[str], None] | None = None,
        max_lock_years: int = MAX_LOCK_YEARS,
        signing_key: Path | None = None,
        checkpoint_entries: int = 1000,
        checkpoint_ms: int = 3_600_000,
        index_reserve_bytes: int = INDEX_RESERVE_BYTES,
        uptime: Callable[[], int] | None = None,
        synchronised: Callable[[], bool] = evidence.read_synchronised,
        boot_id: str | None = None,
        clock_stable_s: int = 3600,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        """Open (creating if new) the store. `exclusive` takes the writer lock on the root:
        the daemon does; other tools (status, verify, lock) do not. `retention_days` gives
        each camera's configured window (never below the 30-day floor; a longer window once
        stored for the camera's footage wins, see `window_days`); `clock` is UTC ms.
        `migrate_in_child` runs a needed schema upgrade in a child process (see
        `storage.index.migrate`), for long-running processes. `pause` is a test seam, called
        by name at the points of a guarded delete where another process could act
        ("unguarded": before the delete's write transaction; "checked": inside it, after the
        window and locks were checked and before anything is marked).
        `max_lock_years` bounds a lock's expiry (legal holds excepted). `signing_key` (default
        `<root>/.nvr-export-key`) signs the audit head and a checkpoint every
        `checkpoint_entries` entries or `checkpoint_ms` (see `storage.audit`).
        `index_reserve_bytes`: see the module docstring (kept only by the exclusive writer,
        beside a SQLite file).
        `uptime` (ms since boot), `synchronised` (the kernel's sync state) and `boot_id` are
        the clock evidence (`storage.clock`); an injected `clock` without `uptime` is taken to
        run in this boot, as far from uptime as the real clock was at open. A hold after a
        step ends by itself once the clock has been synchronised and stable for
        `clock_stable_s`. `password_hasher` is a test seam (see `AccountStore`): nothing in
        the daemon or the CLI passes one."""
        self.root = root.resolve()
        self._max_lock_years = max_lock_years
        self._password_hasher = password_hasher
        self._key_path = signing_key if signing_key is not None else self.root / ".nvr-export-key"
        self._checkpoint_entries = checkpoint_entries
        self._checkpoint_ms = checkpoint_ms
        self._window = retention_days or (lambda _camera: MIN_WINDOW_DAYS)
        self._clock = clock
        if uptime is None and clock is not now_ms:
            # A simulated clock runs in this boot: as far from uptime as the real clock is
            # now (so it steps only where the test moves it against that).
            boot_offset = now_ms() - evidence.read_uptime_ms()
            uptime = lambda: clock() - boot_offset  # noqa: E731
        self._uptime = uptime or evidence.read_uptime_ms
        self._synchronised = synchronised
        self._boot_id = boot_id or evidence.read_boot_id()
        self._clock_stable_ms = clock_stable_s * 1000
        self._run: evidence.RunMark | None = None
        """This process's run (exclusive stores): the last heartbeat, in memory."""
        self._run_written_uptime = 0
        self._stable_since: int | None = None
        """Uptime since which the clock has been synchronised without a step."""
        self._pause = pause or (lambda _point: None)
        self._promised: dict[str, int] = {}
        self._purge_cursors: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}
        """Per camera: (end time below which nothing is left to purge, the lock spans below
        it when that was found). See `purge_candidates`."""
        """Cache of `camera_windows` (windows only grow, so a stale value is only shorter;
        the delete door reads the table itself, inside its transaction)."""
        self._lock = threading.Lock()
        self._lock_fd = -1
        self._pending: set[Path] = set()
        """Final paths renamed by `commit` and not yet indexed: never adopted as stranded."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageIOError(f"cannot create storage root {self.root}: {err.strerror}") from err
        if exclusive:
            self._take_root_lock()
        try:
            self._open(database_url, exclusive, index_reserve_bytes, migrate_in_child)
        except BaseException:
            self.close()  # a refused index must not keep the root locked
            raise

    def _open(
        self, database_url: str, exclusive: bool, index_reserve_bytes: int, migrate_in_child: bool
    ) -> None:
        self._engine = make_engine(database_url)
        if exclusive:
            # The recorder trusts nothing it has not checked: a damaged file is refused here,
            # before anything is recovered, deleted or written (IndexCorruptError says how
            # to rebuild it).
            check_integrity(self._engine)
        self.index = Index(
            self._engine,
            root=self.root,
            clock=self._clock,
            reserve_bytes=index_reserve_bytes if exclusive else 0,
            signing_key=self._key_path,
            checkpoint_entries=self._checkpoint_entries,
            checkpoint_ms=self._checkpoint_ms,
        )
        """The index as the repositories share it (write transaction, reserve, audit)."""
        self.audit = self.index.audit
        """The audit log (R5)."""
        self.accounts = AccountStore(self.index, self._password_hasher)
        """Users, roles, camera permissions and bearer tokens of the HTTP API."""
        self.exports = ExportRegister(self.index)
        """The evidence export register (two-person rule)."""
        self.locks = LockRegister(self.index, max_years=self._max_lock_years)
        """Evidence locks and legal holds (R3); the delete door honours them."""
        self.exports.on_approved = self.locks.lock_export
        self.capacity = CapacityHistory(self.index)
        """The capacity state over time (R4)."""
        self.samples = SampleCache(self.index)
        """Playback sample indexes of segments (a cache)."""
        self.ledger = OutageLedger(self.index)
        """The outage ledger (R2): why footage is missing."""
        self.events = StreamEvents(self.index)
        """Notes about each camera's stream."""
        self.pictures = PictureEvents(self.index)
        """Picture-health findings (issue 18); their snapshots are files here (see
        `save_snapshot`)."""
        self._held: dict[str, list[tuple[WrittenFile, SegmentInfo, bool]]] = {}
        self._held_lock = threading.RLock()
        # Two processes (the daemon and a CLI) may open a new index at once: migrate under an
        # exclusive lock so their schema changes never interleave.
        with _file_lock(self.root / ".nvr-migrate.lock"):
            migrate(self._engine, in_child=migrate_in_child)
        self.store_id = self._check_identity(create=exclusive)
        self._run_pending = exclusive
        if exclusive:
            self._try_begin_run()
        self._chain_heads: dict[str, str] = {}
        with Session(self._engine) as s:
            last_ids = (
                select(SegmentRow.camera, func.max(SegmentRow.id).label("id"))
                .group_by(SegmentRow.camera)
                .subquery()
            )
            for camera, chain in s.execute(
                select(SegmentRow.camera, SegmentRow.chain).join(
                    last_ids, SegmentRow.id == last_ids.c.id
                )
            ):
                self._chain_heads[camera] = chain
        with Session(self._engine) as s:
            self._promised = _stored_windows(s)
        if exclusive:
            # The recorder promises each indexed camera its configured window (an index made
            # before windows were stored learns them here, at the first start after upgrade).
            for camera in self.cameras():
                self.promise_window(camera)
        self.index.restore_reserve()

    # --- identity and locking -------------------------------------------------------------

    def _take_root_lock(self) -> None:
        path = self.root / ".nvr-lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(fd)
            raise StorageError(
                f"{self.root} is in use by another recorder process (lock {path} is held)"
            ) from err
        self._lock_fd = fd

    def _check_identity(self, *, create: bool) -> str:
        marker = self.root / MARKER
        disk_id = marker.read_text(encoding="utf-8").strip() if marker.exists() else None
        with Session(self._engine) as s:
            row = s.get(Meta, "store_id")
            index_id = row.value if row is not None else None
            indexed = s.scalar(select(func.count()).select_from(SegmentRow)) or 0
        if disk_id is not None and index_id is not None and disk_id != index_id:
            raise ForeignIndexError(
                f"the index belongs to store {index_id} but {self.root} holds store {disk_id}; "
                "refusing to open a foreign index beside these recordings"
            )
        if disk_id is not None and index_id is None:
            raise ForeignIndexError(
                f"the index is new or empty but {self.root} already holds recordings of store "
                f"{disk_id}; restore that store's index (or point database_url at it), or "
                "if it is lost or damaged run `nvr index rebuild -c <config>`, instead of "
                "starting a new history beside existing footage"
            )
        if disk_id is None and index_id is not None and indexed > 0:
            raise ForeignIndexError(
                f"the index holds {indexed} segments of store {index_id} but {self.root} has no "
                f"{MARKER} marker; is storage.root the right folder?"
            )
        store_id = index_id or disk_id or str(uuid.uuid4())
        if create:
            if index_id is None:
                with self.index.writing() as s:
                    s.add(Meta(key="store_id", value=store_id))
            if disk_id is None:
                tmp = marker.with_name(MARKER + ".tmp")
                tmp.write_text(store_id + "\n", encoding="utf-8")
                with tmp.open("rb") as f:
                    os.fsync(f.fileno())
                os.rename(tmp, marker)
                fsync_dir(self.root)
        return store_id

    def close(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.dispose()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- writing segments -------------------------------------------------------------------

    def segment_path(self, camera: str, start_ms: int) -> Path:
        """`<root>/<camera>/YYYY/MM/DD/HH/<start>.mp4`, from the camera and its UTC start."""
        dt = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
        return (
            self.root
            / camera
            / f"{dt:%Y}"
            / f"{dt:%m}"
            / f"{dt:%d}"
            / f"{dt:%H}"
            / segment_name(start_ms)
        )

    def save_snapshot(self, camera: str, at_ms: int, kind: str, jpeg: bytes) -> str:
        """Keep a picture finding's keyframe as `<hour folder>/<time>.<kind>.jpg` beside the
        footage it shows (written to a temporary name, fsynced, renamed, directory fsynced);
        it is deleted with that footage (`delete_segments`). Returns its path relative to the
        root."""
        if not SNAPSHOT_KIND.match(kind):
            raise ValueError(f"not a picture finding kind: {kind!r}")
        seg = self.segment_path(camera, at_ms)
        path = seg.with_name(seg.name.removesuffix(".mp4") + f".{kind}{SNAPSHOT_SUFFIX}")
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(jpeg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise StorageIOError(f"cannot write the snapshot {path}: {err.strerror}") from err
        return str(path.relative_to(self.root))

    def snapshot_file(self, rel: str) -> Path | None:
        """The snapshot file of a finding (None if it is gone or not a snapshot path)."""
        path = (self.root / rel).resolve()
        if not path.name.endswith(SNAPSHOT_SUFFIX) or self.root.resolve() not in path.parents:
            return None
        return path if path.is_file() else None

    def _drop_snapshots(self, segs: list[Segment]) -> None:
        """Delete the snapshots that show deleted footage: those taken within a deleted
        segment, and any left in an hour folder that no longer holds footage."""
        gone: list[str] = []
        dirs: dict[Path, list[tuple[int, int]]] = {}
        for seg in segs:
            for d in {seg.path.parent, self.segment_path(seg.camera, seg.end_ms - 1).parent}:
                dirs.setdefault(d, []).append((seg.start_ms, seg.end_ms))
        for d, spans in dirs.items():
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            empty = not any(n.endswith((".mp4", ".part")) for n in names)
            for name in names:
                if not name.endswith(SNAPSHOT_SUFFIX):
                    continue
                try:
                    at = parse_segment_name(name.split("Z.", 1)[0] + "Z.mp4")
                except ValueError:
                    continue
                if empty or any(lo <= at < hi for lo, hi in spans):
                    try:
                        (d / name).unlink()
                    except OSError as err:
                        log.warning("cannot delete the snapshot %s: %s", d / name, err.strerror)
                        continue
                    gone.append(str((d / name).relative_to(self.root)))
        self.pictures.forget_snapshots(gone)

    def new_writer(
        self,
        camera: str,
        start_ms: int,
        video: av.video.stream.VideoStream | None,
        audio: av.audio.stream.AudioStream | None,
    ) -> SegmentWriter:
        """Begin a segment file `<provisional start>.mp4.part`; the final name is given at
        `commit`, when the start time is known."""
        return SegmentWriter(self._free_part_path(camera, start_ms), video, audio)

    def _free_part_path(self, camera: str, start_ms: int) -> Path:
        """`<start>.mp4.part` for the first start from `start_ms` on that names no file yet,
        finished or not."""
        path = self.segment_path(camera, start_ms)
        while path.exists() or path.with_name(path.name + ".part").exists():
            start_ms += 1
            path = self.segment_path(camera, start_ms)
        return path.with_name(path.name + ".part")

    def rename_part(self, writer: SegmentWriter, camera: str, start_ms: int) -> None:
        """Give a segment still being written the name of a better start estimate (the
        writer keeps its descriptor), durably, so a salvage after a crash indexes that
        start. StorageIOError if the rename fails; the old name then stays valid."""
        new = self._free_part_path(camera, start_ms)
        old = writer.temp_path
        try:
            new.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old, new)
            fsync_dir(new.parent)
            if new.parent != old.parent:
                fsync_dir(old.parent)
        except OSError as err:
            raise StorageIOError(f"cannot rename {old.name} to {new.name}: {err}") from err
        writer.temp_path = new

    def _free_path(self, camera: str, start_ms: int) -> Path:
        path = self.segment_path(camera, start_ms)
        while path.exists():
            start_ms += 1  # two segments never share a name; 1 ms is below any frame interval
            path = self.segment_path(camera, start_ms)
        return path

    def commit(self, writer: SegmentWriter, info: SegmentInfo) -> Segment:
        """Make the writer's file durable under its final name (from `info.start_ms`), then
        index it. On failure the `.part` file stays for salvage."""
        final = self._free_path(info.camera, info.start_ms)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._pending.add(final)  # before the rename: see `index_unindexed`
        written = writer.finish(final)
        seg = self._insert(written, info, recovered=False)
        self._pending.discard(final)
        return seg

    def _insert(
        self,
        written: WrittenFile,
        info: SegmentInfo,
        *,
        recovered: bool,
        only_if_unindexed: bool = False,
    ) -> Segment:
        """Index a durable file after every file of its camera still held; if the index
        cannot be written, the file is held too (IndexWriteError). `only_if_unindexed`
        (adopting a file found without a row) raises `_AlreadyIndexed` if the path has a row
        or `commit` is still indexing it, and is never held."""
        with self._held_lock:
            if only_if_unindexed:
                self.index_held(info.camera)  # older files first
                return self._insert_row(written, info, recovered=recovered, only_if_unindexed=True)
            self._pending.add(written.path)
            self._held.setdefault(info.camera, []).append((written, info, recovered))
            done = self.index_held(info.camera)
        return done[-1]

    def index_held(self, camera: str) -> list[Segment]:
        """Index, in order, the files of `camera` whose rows could not be written before;
        returns the new segments. IndexWriteError (files still held) if the index still
        cannot be written."""
        done: list[Segment] = []
        with self._held_lock:
            queue = self._held.get(camera, [])
            while queue:
                written, info, recovered = queue[0]
                done.append(self._insert_row(written, info, recovered=recovered))
                queue.pop(0)
                self._pending.discard(written.path)
        return done

    def held(self, camera: str) -> list[SegmentInfo]:
        """Segments of `camera` on disk whose rows are waiting for the index, oldest first."""
        with self._held_lock:
            return [info for _w, info, _r in self._held.get(camera, [])]

    def _insert_row(
        self,
        written: WrittenFile,
        info: SegmentInfo,
        *,
        recovered: bool,
        only_if_unindexed: bool = False,
    ) -> Segment:
        """Add the row and advance the camera's chain. `only_if_unindexed`: see `_insert`
        (checked under the write lock)."""
        rel = str(written.path.relative_to(self.root))
        with self.index.writing() as s:
            if only_if_unindexed and (
                written.path in self._pending
                or s.scalar(select(SegmentRow.id).where(SegmentRow.path == rel)) is not None
            ):
                raise _AlreadyIndexed(rel)
            prev = self._chain_heads.get(info.camera, GENESIS_CHAIN)
            chain = chain_value(prev, written.sha256, info.camera, info.start_ms, info.end_ms)
            row = SegmentRow(
                camera=info.camera,
                start_ms=info.start_ms,
                end_ms=info.end_ms,
                duration_ms=info.duration_ms,
                bytes=written.bytes,
                path=rel,
                video_codec=info.video_codec,
                audio_codec=info.audio_codec,
                width=info.width,
                height=info.height,
                frames=info.frames,
                sha256=written.sha256,
                prev_chain=prev,
                chain=chain,
                recovered=recovered,
                discontinuity=info.discontinuity,
                garbage=False,
                created_ms=now_ms(),
                elapsed_ms=self.elapsed_now() if self._run is not None else None,
            )
            s.add(row)
            s.flush()
            promised = self._promise(s, info.camera)
            seg = Segment.from_row(row, self.root)
        # Only once committed: a commit that fails (a full index) must not move the chain.
        self._chain_heads[info.camera] = chain
        self._promised[info.camera] = promised
        cursor = self._purge_cursors.get(info.camera)
        if cursor is not None and info.end_ms <= cursor[0]:
            del self._purge_cursors[info.camera]  # old footage indexed late (a recovery)
        return seg

    def _promise(self, s: Session, camera: str) -> int:
        """Store `camera`'s configured window with its footage if longer than the one stored
        (in the caller's write transaction); returns the window now stored."""
        want = max(MIN_WINDOW_DAYS, self._window(camera))
        if self._promised.get(camera, 0) >= want:
            return self._promised[camera]
        row = s.get(CameraWindowRow, camera)
        if row is None:
            s.add(CameraWindowRow(camera=camera, days=want, updated_ms=self._clock()))
            return want
        if row.days < want:
            log.info("camera %s: retention window grows from %d to %d days", camera, row.days, want)
            row.days = want
            row.updated_ms = self._clock()
        elif row.days > want:
            log.warning(
                "camera %s: the configured %d-day window is shorter than the %d days already "
                "promised to its footage; keeping %d days (a window never shrinks)",
                camera,
                want,
                row.days,
                row.days,
            )
        return row.days

    def promise_window(self, camera: str) -> int:
        """Store `camera`'s configured window with its footage unless a longer one is stored;
        returns the camera's window in days."""
        with self.index.writing() as s:
            days = self._promise(s, camera)
        self._promised[camera] = days
        return days

    def free_bytes(self) -> int:
        """Free space on the recordings filesystem, for unprivileged writers. While the
        index's reserve (on the same filesystem) is used up, it is made again here as soon
        as there is room, and counted as taken until then, so recorders resume only after
        the index has its room back."""
        free = shutil.disk_usage(self.root).free
        path = self.index.reserve_file
        if path is not None and not self.index.restore_reserve():
            try:
                same = os.stat(path.parent).st_dev == os.stat(self.root).st_dev
            except OSError:
                same = True
            if same:
                free = max(0, free - self.index.reserve_bytes)
        return free

    def index_has_room(self) -> bool:
        """Whether the index's reserve is in place (made again here if there is room): on a
        filesystem of the index's own, `free_bytes` of the recordings says nothing about it,
        so recorders also wait for this before they resume. True without a reserve."""
        return self.index.restore_reserve()

    # --- start-up recovery ------------------------------------------------------------------

    def recover(self) -> list[Segment]:
        """Finish half-done deletes, then, in each camera's time order, salvage every `.part`
        file and index every complete `.mp4` that a crash between rename and insert left
        without a row; returns the segments indexed.

        Runs once at daemon start-up, before recorders start (so the recorders' ledger
        continues from the recovered footage). A `.part` file is the segment that was in
        flight, so it follows its camera's indexed footage (see `salvage`'s `place`). Only
        each camera's hour folders from its newest indexed segment on are searched for
        files without rows, where a crash leaves them; the background consistency check
        (`consistency`, `index_unindexed`) finds any older ones."""
        self._finish_deletes()
        work = [(p, False) for p in self._walk(".part")]
        work += [(p, True) for p in self._recent_unindexed()]
        work.sort(key=lambda item: (*self._order(item[0]), item[0].name))
        indexed: list[Segment] = []
        for path, complete in work:
            seg = self.index_unindexed(path) if complete else self.salvage(path, place=True)
            if seg is not None:
                indexed.append(seg)
        return indexed

    def _order(self, path: Path) -> tuple[str, int]:
        """(camera, start) of a segment file, for indexing in each camera's time order."""
        try:
            start = parse_segment_name(path.name)
        except ValueError:
            start = 0
        return path.relative_to(self.root).parts[0], start

    def _recent_unindexed(self) -> list[Path]:
        """`.mp4` files without a row in each camera's hour folders from the one of its newest
        indexed segment on (pruned walk: a few folders, however large the store)."""
        found: list[Path] = []
        for cam_dir in sorted(self.root.iterdir()):
            if not cam_dir.is_dir() or cam_dir.name.startswith("."):
                continue
            last = self.last_segment(cam_dir.name)
            floor: tuple[str, ...] = ()
            if last is not None:
                floor = (
                    self.segment_path(cam_dir.name, last.start_ms).parent.relative_to(cam_dir).parts
                )
            for dirpath, dirs, files in os.walk(cam_dir):
                rel = Path(dirpath).relative_to(cam_dir).parts
                dirs[:] = [d for d in dirs if (*rel, d) >= floor[: len(rel) + 1]]
                found += [Path(dirpath) / n for n in files if n.endswith(".mp4")]
        rels = [str(p.relative_to(self.root)) for p in found]
        known: set[str] = set()
        with Session(self._engine) as s:
            for i in range(0, len(rels), 500):
                chunk = rels[i : i + 500]
                known |= set(s.scalars(select(SegmentRow.path).where(SegmentRow.path.in_(chunk))))
        return [p for p, rel in zip(found, rels, strict=True) if rel not in known]

    def index_unindexed(self, path: Path) -> Segment | None:
        """Index a complete `<root>/<camera>/YYYY/MM/DD/HH/<start>.mp4` that has no row (a
        crash between rename and insert): re-scanned, re-hashed, probed, marked `recovered`,
        audited. A file that is incomplete, unreadable or not where a segment of its name
        belongs is left in place and reported (None); so is one `commit` is still indexing."""
        rel = path.relative_to(self.root)
        camera = rel.parts[0]
        try:
            start_ms = parse_segment_name(path.name)
            if self.segment_path(camera, start_ms) != path:
                raise ValueError("not in the folder of a segment starting then")
            scan = scan_fragments(path)
            if not scan.complete:
                raise ValueError(
                    f"not a complete fragmented MP4 ({scan.fragments} fragments, "
                    f"{scan.good_bytes} of {scan.size} bytes in complete boxes)"
                )
            info = probe_segment(path, camera, start_ms)
            sha = file_sha256(path)
        except (ValueError, OSError, av.FFmpegError, StorageIOError) as err:
            log.error("file without index row not indexed (kept): %s: %s", path, err)
            return None
        written = WrittenFile(path, scan.size, sha)
        try:
            seg = self._insert(written, info, recovered=True, only_if_unindexed=True)
        except _AlreadyIndexed:
            return None  # `commit` is indexing it, or just did
        self.events.add(camera, now_ms(), "recovered", f"{path.name}: indexed a file without row")
        self.audit.append(
            "nvr",
            "index-recovered",
            camera,
            "ok",
            {"path": str(rel), "bytes": scan.size, "sha256": sha, "start_ms": start_ms},
        )
        log.warning(
            "camera %s: indexed %s (%.1f s), left without an index row by a crash",
            camera,
            path.name,
            info.duration_ms / 1000,
        )
        return seg

    def _finish_deletes(self) -> None:
        """Finish the deletes a crash interrupted between mark and drop, but only those the
        door would still allow: the garbage flag alone is no permission (an edited index
        must not delete fresh footage). In one guarded transaction each run of marked rows
        is re-checked against the windows and locks, and must have the chain gap its delete
        recorded; a run that fails is un-marked (its gap record undone) and reported. Both
        outcomes are audited (`delete-resume`). Then the rest are unlinked and dropped."""
        finish: list[Segment] = []
        kept: list[tuple[str, int, str, str, str]] = []
        entries: list[AuditEntry] = []
        with self.index.writing(guard=True) as s:
            now = self._clock()
            rows = list(
                s.scalars(
                    select(SegmentRow).where(SegmentRow.garbage.is_(True)).order_by(SegmentRow.id)
                )
            )
            if not rows:
                return
            verdict = self.clock_verdict(s=s)
            if verdict.held:
                why_clock = f"the server clock is suspicious: {verdict.reason}"
                refused = {r.id: why_clock for r in rows}
            else:
                refused = {r.id: why for r, why in self._protected(s, rows, now)}
            for run in _runs(rows):
                gap = _gap_of(s, run)
                why = next((refused[r.id] for r in run if r.id in refused), None)
                if why is None and gap is None:
                    why = "marked for deletion with no chain gap recorded by a purge or delete"
                if why is None:
                    finish += [Segment.from_row(r, self.root) for r in run]
                    continue
                s.execute(
                    update(SegmentRow)
                    .where(SegmentRow.id.in_([r.id for r in run]))
                    .values(garbage=False)
                )
                if gap is not None:
                    _undo_gap(s, gap, run)
                kept.append((run[0].camera, len(run), run[0].path, run[-1].path, why))
                entries.append(
                    self.audit.append_in(
                        s,
                        now,
                        "nvr",
                        "delete-resume",
                        run[0].camera,
                        "refused",
                        {
                            "segments": len(run),
                            "from": run[0].path,
                            "to": run[-1].path,
                            "why": why,
                        },
                    )
                )
            if finish:
                entries.append(
                    self.audit.append_in(
                        s,
                        now,
                        "nvr",
                        "delete-resume",
                        ",".join(sorted({seg.camera for seg in finish})),
                        "ok",
                        {
                            "segments": len(finish),
                            "bytes": sum(seg.bytes for seg in finish),
                            "from_ms": min(seg.start_ms for seg in finish),
                            "to_ms": max(seg.end_ms for seg in finish),
                        },
                    )
                )
        if entries:
            self.audit.committed(entries[-1])
        for camera, count, first, last, why in kept:
            log.error(
                "camera %s: %d segments marked for deletion (%s .. %s) were NOT deleted and are "
                "kept: %s",
                camera,
                count,
                first,
                last,
                why,
            )
        done: list[int] = []
        for seg in finish:
            try:
                seg.path.unlink(missing_ok=True)
                fsync_dir(seg.path.parent)
            except OSError as err:
                log.error("cannot finish deleting %s: %s", seg.path, err.strerror)
                continue
            done.append(seg.id)
            log.info("finished an interrupted delete of %s", seg.path)
        if done:
            with self.index.writing() as s:
                s.execute(delete(SegmentRow).where(SegmentRow.id.in_(done)))

    def salvage(self, part: Path, *, place: bool = False) -> Segment | None:
        """Keep the complete fragments of an interrupted `.part` file and index them.

        `place` (start-up recovery): the file was the segment in flight, so it follows its
        camera's indexed footage. A name before that footage's end is a wall-clock time
        from before a step back (a recorder names a file after its first keyframe's
        arrival until its start settles; since the recorder places starts itself, only
        files of older versions): the segment is placed at that end instead, renamed to
        it, and the name it had is kept as the evidence (a `reanchor` event and a
        `salvage-placed` audit entry), so the index stays in recording order and nothing
        overlaps. Except a file a replaced recorder left (its name inside the camera's
        `recorder-replaced` outage): it is older than the footage after that outage, and
        keeps its time."""
        rel = part.relative_to(self.root)
        camera = rel.parts[0]
        try:
            start_ms = named_ms = parse_segment_name(part.name)
            scan = scan_fragments(part)
        except (ValueError, OSError) as err:
            log.error("cannot salvage %s: %s", part, err)
            return None
        if not scan.media_seen:
            self._remove_empty_part(part, camera, scan.size)
            return None
        if not scan.has_moov or scan.fragments == 0:
            log.warning("%s holds no complete fragment; left in place (%d bytes)", part, scan.size)
            return None
        follows = self._placed_after(camera, start_ms) if place else None
        if follows is not None:
            start_ms = follows
        try:
            if scan.good_bytes < scan.size:
                os.truncate(part, scan.good_bytes)
            info = probe_segment(part, camera, start_ms)
            sha = hashlib.sha256()
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sha.update(chunk)
                os.fsync(f.fileno())
            if follows is None:
                final = part.with_name(part.name.removesuffix(".part"))
            else:
                final = self._free_path(camera, start_ms)
                final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(part, final)
            fsync_dir(final.parent)
            if final.parent != part.parent:
                fsync_dir(part.parent)
        except (OSError, av.FFmpegError) as err:
            log.error("cannot salvage %s: %s", part, err)
            return None
        if follows is not None:
            start_ms = parse_segment_name(final.name)  # one name per start: maybe 1 ms on
            info = dataclasses.replace(
                info, start_ms=start_ms, end_ms=start_ms + info.duration_ms
            )
        seg = self._insert(
            WrittenFile(final, scan.good_bytes, sha.hexdigest()), info, recovered=True
        )
        self.events.add(camera, now_ms(), "salvaged", f"{final.name}: {scan.fragments} fragments")
        if follows is not None:
            self._note_placed(camera, part, final, named_ms, seg)
        log.warning(
            "camera %s: salvaged %s (%d fragments, %.1f s) after an interrupted write",
            camera,
            final.name,
            scan.fragments,
            info.duration_ms / 1000,
        )
        return seg

    def _placed_after(self, camera: str, named_ms: int) -> int | None:
        """Where a `.part` file named `named_ms` goes at start-up (see `salvage`'s `place`):
        the end of `camera`'s indexed footage when the name is before it, else None (its
        name stands)."""
        with Session(self._engine) as s:
            last_end = s.scalar(
                select(func.max(SegmentRow.end_ms)).where(
                    SegmentRow.camera == camera, ~SegmentRow.garbage
                )
            )
        if last_end is None or named_ms >= last_end:
            return None
        for outage in self.ledger.outages(camera, since_ms=named_ms):
            if outage.cause == _REPLACED and outage.start_ms <= named_ms:
                return None  # a replaced recorder's segment: older than what followed
        return int(last_end)

    def _note_placed(
        self, camera: str, part: Path, final: Path, named_ms: int, seg: Segment
    ) -> None:
        """Keep the evidence of a salvaged segment placed after the footage it follows."""
        detail = (
            f"salvaged {part.name} (named by the wall clock at {iso(named_ms)}, before the "
            f"footage it follows) placed at {iso(seg.start_ms)} as {final.name}"
        )
        self.events.add(camera, now_ms(), "reanchor", detail, (seg.start_ms - named_ms) / 1000)
        self.audit.append(
            "nvr",
            "salvage-placed",
            camera,
            "ok",
            {
                "from": str(part.relative_to(self.root)),
                "to": str(final.relative_to(self.root)),
                "named_ms": named_ms,
                "start_ms": seg.start_ms,
                "sha256": seg.sha256,
            },
        )
        log.warning("camera %s: %s", camera, detail)

    def _remove_empty_part(self, part: Path, camera: str, size: int) -> None:
        """Remove a `.part` file that holds the MP4 header at most (no sample: no footage),
        and audit it."""
        try:
            part.unlink()
            fsync_dir(part.parent)
        except OSError as err:
            log.error("cannot remove header-only %s: %s", part, err.strerror)
            return
        self.audit.append(
            "nvr",
            "remove-empty-part",
            camera,
            "ok",
            {"path": str(part.relative_to(self.root)), "bytes": size},
        )
        log.info("removed %s: MP4 header only, no footage (%d bytes)", part, size)

    def _walk(self, suffix: str) -> Iterator[Path]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(suffix):
                    yield Path(dirpath) / name

    def consistency(self) -> ConsistencyReport:
        """Compare files on disk with the index. Slow on big stores: run it on a thread."""
        with Session(self._engine) as s:
            indexed = {p for (p,) in s.execute(select(SegmentRow.path).where(~SegmentRow.garbage))}
        on_disk = {str(p.relative_to(self.root)) for p in self._walk(".mp4")}
        parts = sorted(self._walk(".part"))
        return ConsistencyReport(
            files_without_rows=sorted(self.root / p for p in on_disk - indexed),
            rows_without_files=sorted(self.root / p for p in indexed - on_disk),
            unsalvageable_parts=parts,
        )

    # --- queries ----------------------------------------------------------------------------

    def segments(
        self, camera: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Segment]:
        """Indexed segments of `camera` overlapping [start_ms, end_ms), oldest first."""
        t = SegmentRow.__table__.c
        q = select(*_SEGMENT_COLUMNS).where(t.camera == camera, ~t.garbage)
        if start_ms is not None:
            q = q.where(t.end_ms > start_ms)
        if end_ms is not None:
            q = q.where(t.start_ms < end_ms)
        with self._engine.connect() as conn:
            rows = conn.execute(q.order_by(t.id)).all()
        root = self.root
        return [_segment(r, root) for r in rows]

    def segment_refs(self, camera: str, start_ms: int, end_ms: int) -> SegmentRefs:
        """`segments` for playback: the same segments, as columns (one object for the
        garbage collector to walk, however long the range)."""
        t = SegmentRow.__table__.c
        q = select(t.id, t.start_ms, t.end_ms, t.path, t.sha256).where(
            t.camera == camera, ~t.garbage, t.end_ms > start_ms, t.start_ms < end_ms
        )
        with self._engine.connect() as conn:
            rows = conn.execute(q.order_by(t.id)).all()
        if not rows:
            return SegmentRefs((), (), (), (), ())
        ids, starts, ends, paths, hashes = zip(*rows, strict=True)
        root = str(self.root)
        return SegmentRefs(ids, starts, ends, tuple([os.path.join(root, p) for p in paths]), hashes)

    def last_segment(self, camera: str) -> Segment | None:
        with Session(self._engine) as s:
            row = s.scalars(
                select(SegmentRow)
                .where(SegmentRow.camera == camera, ~SegmentRow.garbage)
                .order_by(SegmentRow.end_ms.desc())
                .limit(1)
            ).first()
            return None if row is None else Segment.from_row(row, self.root)

    def cameras(self) -> list[str]:
        """Every camera that has segments or outages in the index."""
        with self._engine.connect() as conn:
            # An index skip-scan: one lookup per camera instead of reading every row.
            names = set(conn.execute(text(_DISTINCT_SEGMENT_CAMERAS)).scalars())
            names.discard(None)
        names |= self.ledger.cameras()
        return sorted(names)

    def stats(self, camera: str, since_ms: int) -> CameraStats:
        """Segments, bytes and media time of `camera` that ended after `since_ms`."""
        with Session(self._engine) as s:
            count, size, media = s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(SegmentRow.bytes), 0),
                    func.coalesce(func.sum(SegmentRow.duration_ms), 0),
                ).where(
                    SegmentRow.camera == camera, SegmentRow.end_ms > since_ms, ~SegmentRow.garbage
                )
            ).one()
        return CameraStats(int(count), int(size), int(media))

    def segments_without_sample_index(self, limit: int = 100) -> list[Segment]:
        """The newest indexed segments that have no playback sample index yet (audio-only
        segments never get one: playback serves video)."""
        with Session(self._engine) as s:
            rows = s.scalars(
                select(SegmentRow)
                .outerjoin(SegmentSamplesRow, SegmentSamplesRow.segment_id == SegmentRow.id)
                .where(
                    SegmentSamplesRow.segment_id.is_(None),
                    ~SegmentRow.garbage,
                    SegmentRow.video_codec.is_not(None),
                )
                .order_by(SegmentRow.id.desc())
                .limit(limit)
            )
            return [Segment.from_row(r, self.root) for r in rows]

    def first_segment(self, camera: str) -> Segment | None:
        """The oldest indexed segment of `camera`."""
        with Session(self._engine) as s:
            row = s.scalars(
                select(SegmentRow)
                .where(SegmentRow.camera == camera, ~SegmentRow.garbage)
                .order_by(SegmentRow.start_ms)
                .limit(1)
            ).first()
            return None if row is None else Segment.from_row(row, self.root)

    def recorded_ms(self, camera: str, since_ms: int, until_ms: int) -> int:
        """Milliseconds of [since_ms, until_ms) covered by indexed segments of `camera`."""
        lo = case((SegmentRow.start_ms < since_ms, since_ms), else_=SegmentRow.start_ms)
        hi = case((SegmentRow.end_ms > until_ms, until_ms), else_=SegmentRow.end_ms)
        with Session(self._engine) as s:
            total = s.scalar(
                select(func.coalesce(func.sum(hi - lo), 0)).where(
                    SegmentRow.camera == camera,
                    SegmentRow.end_ms > since_ms,
                    SegmentRow.start_ms < until_ms,
                    ~SegmentRow.garbage,
                )
            )
        return int(total or 0)

    # --- retention: locks, guarded deletes, capacity ---------------------------------------

    def now(self) -> int:
        """The store's clock (UTC ms): the time every retention decision is made at."""
        return self._clock()

    # --- clock evidence: runs, heartbeats, holds (storage.clock) ----------------------------

    def _reading(self) -> evidence.Reading:
        return evidence.Reading(self._clock(), self._uptime(), self._boot_id, self._synced())

    def _synced(self) -> bool:
        try:
            return self._synchronised()
        except OSError:
            return False

    @staticmethod
    def _last_run(s: Session) -> evidence.RunMark | None:
        row = s.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(1)).first()
        return None if row is None else _run_mark(row)

    def _try_begin_run(self) -> None:
        """Begin the run, or leave it for the next heartbeat when the index cannot take the
        row now (a full filesystem must not keep the recorder from starting: footage indexed
        meanwhile has no evidence stamp and is aged by the other rules)."""
        try:
            self._begin_run()
        except IndexCorruptError:
            raise
        except IndexWriteError as err:
            log.error("cannot record the recorder's run yet (retried each heartbeat): %s", err)
            return
        self._run_pending = False

    def _begin_run(self) -> None:
        """Record this process as the recorder's new run, continuing the evidence time from
        the last one; a step of the wall clock since that run's last heartbeat is a hold."""
        now = self._reading()
        entry: AuditEntry | None = None
        with self.index.writing() as s:
            prev = self._last_run(s)
            row = RunRow(
                boot_id=now.boot_id,
                pid=evidence.this_pid(),
                started_wall_ms=now.wall_ms,
                started_uptime_ms=now.uptime_ms,
                last_wall_ms=now.wall_ms,
                last_uptime_ms=now.uptime_ms,
                elapsed_start_ms=evidence.elapsed_after(prev, now),
                synchronised=now.synchronised,
            )
            s.add(row)
            s.flush()
            step = evidence.step_since(prev, now) if prev is not None else None
            if prev is not None and step is not None:
                entry = self._add_hold(
                    s,
                    now,
                    step,
                    f"the server clock stepped {evidence.describe_step(step)} between the "
                    f"recorder's run of {iso(prev.started_wall_ms)} (last seen "
                    f"{iso(prev.last_wall_ms)}) and this one",
                )
            self._run = _run_mark(row)
        self._run_written_uptime = now.uptime_ms
        self._stable_since = now.uptime_ms if now.synchronised and step is None else None
        if entry is not None:
            self.audit.committed(entry)

    def _add_hold(self, s: Session, now: evidence.Reading, step: int, detail: str) -> AuditEntry:
        s.add(
            ClockHoldRow(
                at_ms=now.wall_ms,
                boot_id=now.boot_id,
                uptime_ms=now.uptime_ms,
                step_ms=step,
                detail=detail,
            )
        )
        log.error("%s: purging is held back until the clock is confirmed", detail)
        return self.audit.append_in(
            s,
            now.wall_ms,
            "system",
            "clock-step",
            "server",
            "warning",
            {"step_ms": step, "detail": detail, "uptime_ms": now.uptime_ms},
        )

    def clock_heartbeat(self) -> evidence.ClockVerdict:
        """The recorder's heartbeat (the daemon calls it every few seconds, on a worker
        thread): look for a step of the wall clock against uptime since the last one (a
        hold), end a hold once the clock has been synchronised and stable for the configured
        time, and write the run's last-seen times (at most every `HEARTBEAT_WRITE_MS`, at once
        on a change). Returns the clock verdict."""
        if self._run_pending:
            self._try_begin_run()
        run = self._run
        if run is None:
            return self.clock_verdict()
        now = self._reading()
        step = evidence.step_since(run, now)
        if step is not None or not now.synchronised:
            self._stable_since = None
        elif self._stable_since is None:
            self._stable_since = now.uptime_ms
        stable = (
            self._stable_since is not None
            and now.uptime_ms - self._stable_since >= self._clock_stable_ms
        )
        due = (
            step is not None
            or now.synchronised != run.synchronised
            or now.uptime_ms - self._run_written_uptime >= evidence.HEARTBEAT_WRITE_MS
            or stable
        )
        entries: list[AuditEntry] = []
        if due:
            with self.index.writing() as s:
                s.execute(
                    update(RunRow)
                    .where(RunRow.id == run.id)
                    .values(
                        last_wall_ms=now.wall_ms,
                        last_uptime_ms=now.uptime_ms,
                        synchronised=now.synchronised,
                    )
                )
                if step is not None:
                    entries.append(
                        self._add_hold(
                            s,
                            now,
                            step,
                            f"the server clock stepped {evidence.describe_step(step)} at "
                            f"{iso(now.wall_ms)} while the recorder ran (against its uptime)",
                        )
                    )
                elif stable:
                    entries += self._clear_holds(
                        s,
                        now.wall_ms,
                        "system",
                        f"synchronised and stable for {self._clock_stable_ms // 1000} s",
                    )
            self._run_written_uptime = now.uptime_ms
        self._run = dataclasses.replace(
            run,
            last_wall_ms=now.wall_ms,
            last_uptime_ms=now.uptime_ms,
            synchronised=now.synchronised,
        )
        if entries:
            self.audit.committed(entries[-1])
        return self.clock_verdict(now)

    def _clear_holds(self, s: Session, at_ms: int, actor: str, reason: str) -> list[AuditEntry]:
        rows = list(s.scalars(select(ClockHoldRow).where(ClockHoldRow.cleared_ms.is_(None))))
        if not rows:
            return []
        for row in rows:
            row.cleared_ms = at_ms
            row.cleared_by = actor
            row.cleared_reason = reason
        log.warning("clock holds %s ended by %s: %s", [r.id for r in rows], actor, reason)
        return [
            self.audit.append_in(
                s,
                at_ms,
                actor,
                "clock-confirm",
                "server",
                "ok",
                {
                    "holds": [r.id for r in rows],
                    "steps_ms": [r.step_ms for r in rows],
                    "reason": reason,
                },
            )
        ]

    def confirm_clock(self, *, actor: str, reason: str) -> evidence.ClockVerdict:
        """An operator checked the server clock: end every hold and audit who and why (also
        when there was none: the confirmation lets this process purge despite its own clock
        disagreeing with the recorder's). Returns the verdict as it was before."""
        if not reason.strip():
            raise ValueError("a reason is required to confirm the clock")
        verdict = self.clock_verdict()
        now = self._clock()
        with self.index.writing() as s:
            entries = self._clear_holds(s, now, actor, reason)
            if not entries:
                entries = [
                    self.audit.append_in(
                        s,
                        now,
                        actor,
                        "clock-confirm",
                        "server",
                        "ok",
                        {"holds": [], "reason": reason, "was": verdict.reason or "trusted"},
                    )
                ]
        self.audit.committed(entries[-1])
        return verdict

    def elapsed_now(self, s: Session | None = None) -> int:
        """Evidence time now (`storage.clock`). The recorder's own run counts its uptime;
        another process continues from the recorder's last heartbeat in this boot, and
        proves nothing across a reboot."""
        run = self._run
        if run is not None:
            return run.elapsed_start_ms + (self._uptime() - run.started_uptime_ms)
        if s is None:
            with Session(self._engine) as own:
                mark = self._last_run(own)
        else:
            mark = self._last_run(s)
        if mark is None:
            return 0
        uptime = self._uptime()
        if mark.boot_id == self._boot_id and uptime >= mark.last_uptime_ms:
            return mark.elapsed_last_ms + (uptime - mark.last_uptime_ms)
        return mark.elapsed_last_ms

    def time_since_footage(self, camera: str) -> int | None:
        """Real time (ms, by the evidence time) since `camera`'s last footage ended, or None
        when the evidence cannot tell (no segment stamped with it). The wall clock cannot
        say after it stepped back: the footage's times then run ahead of it.

        The newest segment the recorder indexed itself was stamped when it ended. What was
        indexed after it at a restart (salvaged, stamped then) followed on from it in real
        time: its media durations, plus the outages the ledger has between them (not a
        forward `clock-step`, which jumps the times over no real time). Across a reboot
        nothing is known (None): the evidence proves only what a synchronised clock does."""
        with Session(self._engine) as s:
            live = (SegmentRow.camera == camera, ~SegmentRow.garbage)
            ref = s.execute(
                select(SegmentRow.id, SegmentRow.end_ms, SegmentRow.elapsed_ms)
                .where(*live, ~SegmentRow.recovered, SegmentRow.elapsed_ms.is_not(None))
                .order_by(SegmentRow.id.desc())
                .limit(1)
            ).first()
            if ref is None:
                return None
            later = s.execute(
                select(SegmentRow.start_ms, SegmentRow.end_ms, SegmentRow.duration_ms)
                .where(*live, SegmentRow.id > ref.id)
                .order_by(SegmentRow.id)
            ).all()
            now = self.elapsed_now(s)
            # Since the run that stamped it: one boot, or the evidence proves too little.
            boots = {self._boot_id}
            for boot, began in s.execute(
                select(RunRow.boot_id, RunRow.elapsed_start_ms).order_by(RunRow.id.desc())
            ):
                boots.add(boot)
                if began <= ref.elapsed_ms:
                    break
            if len(boots) > 1:
                return None
        ended = int(ref.elapsed_ms)
        prev_end = int(ref.end_ms)
        outages = [
            o
            for o in (self.ledger.outages(camera, since_ms=prev_end) if later else [])
            if o.cause != "clock-step" and o.end_ms is not None
        ]
        for start, end, duration in later:
            ended += sum(
                o.end_ms - o.start_ms
                for o in outages
                if o.end_ms is not None and prev_end <= o.start_ms < start
            )
            ended += int(duration)
            prev_end = max(prev_end, int(end))
        return max(0, now - ended)

    def clock_verdict(
        self, now: evidence.Reading | None = None, s: Session | None = None
    ) -> evidence.ClockVerdict:
        """Whether purging may run at this process's clock (see `storage.clock`)."""
        if s is None:
            with Session(self._engine) as own:
                return self.clock_verdict(now, own)
        now = now or self._reading()
        elapsed = self.elapsed_now(s)
        advice = evidence.confirm_advice(self._clock_stable_ms // 1000)
        hold = s.scalars(
            select(ClockHoldRow)
            .where(ClockHoldRow.cleared_ms.is_(None))
            .order_by(ClockHoldRow.id.desc())
            .limit(1)
        ).first()
        if hold is not None:
            return evidence.ClockVerdict(
                True,
                hold.detail,
                advice,
                now.synchronised,
                elapsed,
                evidence.ClockHold(hold.id, hold.at_ms, hold.step_ms, hold.detail),
            )
        mark = self._run or self._last_run(s)
        if mark is not None:
            step = evidence.step_since(mark, now)
            if step is not None:
                whose = "the recorder's" if self._run is not None else "this process's"
                return evidence.ClockVerdict(
                    True,
                    f"{whose} clock is {evidence.describe_step(step)} from where the "
                    f"recorder's uptime puts it (last heartbeat {iso(mark.last_wall_ms)})",
                    advice,
                    now.synchronised,
                    elapsed,
                )
        return evidence.ClockVerdict(False, "", "", now.synchronised, elapsed)

    def runs(self, limit: int = 10) -> list[evidence.RunMark]:
        """The recorder's last runs, newest first."""
        with Session(self._engine) as s:
            rows = s.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(limit))
            return [_run_mark(r) for r in rows]

    def _newest_ms(self, s: Session) -> int | None:
        """The newest footage's time: the latest creation or end time of the last indexed
        segment, or the latest end of any (footage order; both indexed lookups)."""
        last = s.execute(
            select(SegmentRow.created_ms, SegmentRow.end_ms).order_by(SegmentRow.id.desc()).limit(1)
        ).first()
        if last is None:
            return None
        top = s.scalar(select(func.max(SegmentRow.end_ms)))
        return max(int(last[0]), int(last[1]), int(top or 0))

    def verify(
        self,
        camera: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        progress: Callable[[VerifyReport], None] | None = None,
    ) -> VerifyReport:
        """Re-hash files and walk the hash chains (see storage/verify.py); `progress` is
        called after each file hashed."""
        with Session(self._engine) as s:
            return verify_store(
                s, self.root, camera=camera, start_ms=start_ms, end_ms=end_ms, progress=progress
            )

    def window_days(self, camera: str) -> int:
        """`camera`'s retention window in days: the longest of the 30-day floor, the
        configured window and the window stored with its footage (as last read)."""
        return max(MIN_WINDOW_DAYS, self._window(camera), self._promised.get(camera, 0))

    def _windows_now(self, s: Session) -> Callable[[str], int]:
        """Window per camera from the index as this transaction sees it (and the config)."""
        stored = _stored_windows(s)
        self._promised.update(stored)
        return lambda camera: max(MIN_WINDOW_DAYS, self._window(camera), stored.get(camera, 0))

    def purge_candidates(
        self, limit: int = 10_000, *, clock_confirmed: bool = False
    ) -> list[Segment]:
        """Up to `limit` segments, oldest first per camera, that ended before their camera's
        window and overlap no active lock (the door re-checks each).

        Locked footage is excluded in the query, not after it: per camera, only the spans
        between its active locks are searched (one index range per span), so a pass costs
        the same however much expired footage is locked. Spans already found empty are
        remembered (per camera, while its locks below them are unchanged) and not searched
        again: old locked footage kept for years costs nothing per pass.

        The clock evidence is applied in the query too: nothing while the clock is
        suspicious, nothing younger than the window by evidence time or newer than the newest
        footage's time minus the window (see the module docstring); `clock_confirmed`: an
        operator confirmed a suspicious clock."""
        now = self._clock()
        out: list[Segment] = []
        with Session(self._engine) as s:
            if self.clock_verdict(s=s).held and not clock_confirmed:
                return []
            elapsed = self.elapsed_now(s)
            newest = self._newest_ms(s)
            if newest is None:
                return []
            window = self._windows_now(s)
            locks: dict[str, list[tuple[int, int]]] = {}
            for camera, start, end in s.execute(
                select(LockRow.camera, LockRow.start_ms, LockRow.end_ms).where(active_lock(now))
            ):
                locks.setdefault(camera, []).append((start, end))
            for camera in self.cameras():
                if len(out) >= limit:
                    break
                horizon = min(now, newest) - window(camera) * DAY_MS
                young = elapsed - window(camera) * DAY_MS
                spans = _merge(locks.get(camera, []))
                cursor = self._purge_cursor(camera, spans)  # end times <= cursor: done
                advancing = True
                for lo, hi in _free_spans(spans, horizon):
                    if hi <= cursor:
                        continue
                    bounds = {
                        "camera": camera,
                        "after": cursor if lo is None else max(cursor, lo - 1),
                        "lo": _NO_BOUND if lo is None else lo,
                        "hi": hi,
                        "n": limit - len(out),
                        "young": young,
                    }
                    rows = s.execute(_FREE_SPAN_QUERY, bounds).all()
                    out += [_segment(r, self.root) for r in rows]
                    if rows or s.execute(_YOUNG_IN_SPAN, bounds).first() is not None:
                        advancing = False  # (footage kept by evidence time ages in place)
                    elif advancing:  # nothing free is left below `hi`
                        cursor = hi
                        self._purge_cursors[camera] = (hi, _below(spans, hi))
                    if len(out) >= limit:
                        break
        return out

    def _purge_cursor(self, camera: str, spans: list[tuple[int, int]]) -> int:
        """Below which end time `camera` has no expired, unlocked footage left, as found by
        earlier searches: valid while the camera's locks below it are the same (a lock that
        ended frees footage below it; new footage is never indexed in the past while this
        process runs, start-up recovery comes before any purge)."""
        found = self._purge_cursors.get(camera)
        if found is None or found[1] != _below(spans, found[0]):
            self._purge_cursors.pop(camera, None)
            return _NO_BOUND
        return found[0]

    def delete_segments(
        self,
        ids: Sequence[int],
        *,
        actor: str,
        action: str = "purge",
        clock_confirmed_by: str | None = None,
    ) -> list[Segment]:
        """Delete these segments in the crash-safe order, or none of them: if any is inside
        its window (by the wall clock, by the evidence time, or past the newest footage's
        time minus the window) or locked, RetentionViolation is raised and the refusal
        audited; while the clock is suspicious, ClockSuspicious, unless an operator confirmed
        the clock (`clock_confirmed_by`, see `confirm_clock`).

        The window and locks are checked and the rows marked as garbage in ONE write
        transaction (see `Index.writing(guard=True)`): a lock or a longer window committed by any
        process before that transaction is seen; one committed after it waits for it."""
        if not ids:
            return []
        self._pause("unguarded")
        refusal: str | None = None
        with self.index.writing(guard=True) as s:
            now = self._clock()
            rows = list(
                s.scalars(
                    select(SegmentRow).where(
                        SegmentRow.id.in_(list(ids)), SegmentRow.garbage.is_(False)
                    )
                )
            )
            if not rows:
                return []
            cams = {r.camera for r in rows}
            verdict = self.clock_verdict(s=s)
            suspicious = verdict.held and clock_confirmed_by is None
            refusals = (
                [f"the server clock is suspicious: {verdict.reason}"]
                if suspicious
                else [f"{r.camera} {r.path}: {why}" for r, why in self._protected(s, rows, now)]
            )
            self._pause("checked")
            if refusals:
                refusal = refusals[0] + (
                    f" (and {len(refusals) - 1} more)" if len(refusals) > 1 else ""
                )
                entry = self.audit.append_in(
                    s,
                    now,
                    actor,
                    action,
                    ",".join(sorted(cams)),
                    "refused",
                    {"segments": len(rows), "refused": len(refusals), "why": refusal},
                )
            else:
                entry = self._mark_garbage(
                    s,
                    rows,
                    now=now,
                    actor=actor,
                    action=action,
                    clock_confirmed_by=clock_confirmed_by if verdict.held else None,
                )
            segs = [Segment.from_row(r, self.root) for r in rows]
        self.audit.committed(entry)
        if suspicious:
            raise ClockSuspicious(
                f"the server clock is suspicious: {verdict.reason}", verdict.advice
            )
        if refusal is not None:
            raise RetentionViolation(refusal)
        # 2. Unlink, fsync each directory once. 3. Drop the rows.
        dirs: set[Path] = set()
        for seg in segs:
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as err:
                raise StorageIOError(f"cannot delete {seg.path}: {err.strerror}") from err
            dirs.add(seg.path.parent)
        self._drop_snapshots(segs)
        for d in dirs:
            fsync_dir(d)
            _remove_empty_dirs(d, self.root)
        with self.index.writing() as s:
            s.execute(delete(SegmentRow).where(SegmentRow.id.in_([seg.id for seg in segs])))
        return segs

    def _protected(
        self, s: Session, rows: list[SegmentRow], now: int
    ) -> list[tuple[SegmentRow, str]]:
        """The rows that may not be deleted at `now`, and why, from the windows and locks as
        the caller's (guarded) transaction sees them."""
        cams = {r.camera for r in rows}
        locks: dict[str, list[Lock]] = {}
        q = select(*LockRow.__table__.c).where(
            LockRow.camera.in_(cams),
            active_lock(now),
            LockRow.start_ms < max(r.end_ms for r in rows),
            LockRow.end_ms > min(r.start_ms for r in rows),
        )
        for row in s.execute(q):
            locks.setdefault(row.camera, []).append(lock_of(row))
        window = self._windows_now(s)
        elapsed = self.elapsed_now(s)
        newest = self._newest_ms(s)
        out = []
        for r in rows:
            days = window(r.camera)
            why = protection(
                r.camera,
                r.start_ms,
                r.end_ms,
                now_ms=now,
                window_days=days,
                locks=locks.get(r.camera, []),
            )
            if why is None and r.elapsed_ms is not None and elapsed - r.elapsed_ms < days * DAY_MS:
                why = (
                    f"inside the {days}-day retention window by the recorder's uptime evidence "
                    f"(indexed {(elapsed - r.elapsed_ms) / DAY_MS:.2f} days of proven time ago, "
                    "whatever the wall clock says)"
                )
            if why is None and newest is not None and r.end_ms > newest - days * DAY_MS:
                why = (
                    f"within {days} days of the newest footage ({iso(newest)}): footage is "
                    "never purged newer than the newest footage's time minus the window"
                )
            if why is not None:
                out.append((r, why))
        return out

    def _mark_garbage(
        self,
        s: Session,
        rows: list[SegmentRow],
        *,
        now: int,
        actor: str,
        action: str,
        clock_confirmed_by: str | None = None,
    ) -> AuditEntry:
        """Step 1 of the delete order, in the caller's guarded transaction: mark the rows as
        garbage, record the chain gaps they leave, and audit it."""
        s.execute(
            update(SegmentRow).where(SegmentRow.id.in_([r.id for r in rows])).values(garbage=True)
        )
        recorded: list[list[str]] = []
        # The gap table holds a few rows per camera: read those of these cameras at once.
        by_last: dict[tuple[str, str], ChainGapRow] = {}
        by_after: dict[tuple[str, str], ChainGapRow] = {}
        for g in s.scalars(
            select(ChainGapRow).where(ChainGapRow.camera.in_({r.camera for r in rows}))
        ):
            by_last[(g.camera, g.last_chain)] = g
            by_after[(g.camera, g.after_chain)] = g
        for camera, after, last, removed in _gaps(rows):
            # Purging the segments right after an earlier gap extends that gap, so the
            # table stays about one row per camera however long the recorder runs.
            prior = by_last.pop((camera, after), None)
            if prior is None:
                prior = ChainGapRow(
                    camera=camera, after_chain=after, last_chain=last, removed=0, at_ms=now
                )
                s.add(prior)
                by_after[(camera, after)] = prior
            prior.last_chain = last
            prior.removed += removed
            prior.at_ms = now
            # ... and a gap that now starts where this one ends is merged into it.
            following = by_after.get((camera, last))
            if following is not None and following is not prior:
                del by_after[(camera, last)]
                by_last.pop((camera, following.last_chain), None)
                prior.last_chain = following.last_chain
                prior.removed += following.removed
                s.delete(following)
            by_last[(camera, prior.last_chain)] = prior
            recorded.append([camera, prior.after_chain, prior.last_chain])
        s.flush()
        return self.audit.append_in(
            s,
            now,
            actor,
            action,
            ",".join(sorted({r.camera for r in rows})),
            "ok",
            {
                "segments": len(rows),
                "bytes": sum(r.bytes for r in rows),
                "from_ms": min(r.start_ms for r in rows),
                "to_ms": max(r.end_ms for r in rows),
                "gaps": recorded,
            }
            | ({"clock_confirmed_by": clock_confirmed_by} if clock_confirmed_by else {}),
        )

    def delete_range(self, camera: str, start_ms: int, end_ms: int, *, actor: str) -> list[Segment]:
        """Delete `camera`'s segments lying wholly inside [start_ms, end_ms); refused (and
        audited) if any of them is inside the window or locked."""
        with Session(self._engine) as s:
            ids = list(
                s.scalars(
                    select(SegmentRow.id).where(
                        SegmentRow.camera == camera,
                        SegmentRow.start_ms >= start_ms,
                        SegmentRow.end_ms <= end_ms,
                        ~SegmentRow.garbage,
                    )
                )
            )
        if not ids:
            return []
        return self.delete_segments(ids, actor=actor, action="delete")

    def locked_bytes(self) -> int:
        """Bytes of segments overlapping an active lock (they cannot be recycled)."""
        total = 0
        for lk in self.locks.find():
            with Session(self._engine) as s:
                total += (
                    s.scalar(
                        select(func.coalesce(func.sum(SegmentRow.bytes), 0)).where(
                            SegmentRow.camera == lk.camera,
                            SegmentRow.start_ms < lk.end_ms,
                            SegmentRow.end_ms > lk.start_ms,
                            ~SegmentRow.garbage,
                        )
                    )
                    or 0
                )
        return int(total)

    def camera_storage(self, camera: str) -> CameraStorage:
        """Bytes stored, bytes under an active lock and the oldest footage of one camera."""
        now = self._clock()
        live = (SegmentRow.camera == camera) & ~SegmentRow.garbage
        locked = (
            select(LockRow.id)
            .where(
                LockRow.camera == SegmentRow.camera,
                LockRow.start_ms < SegmentRow.end_ms,
                LockRow.end_ms > SegmentRow.start_ms,
                active_lock(now),
            )
            .exists()
        )
        with Session(self._engine) as s:
            count, stored, oldest = s.execute(
                select(
                    func.count(SegmentRow.id),
                    func.coalesce(func.sum(SegmentRow.bytes), 0),
                    func.min(SegmentRow.start_ms),
                ).where(live)
            ).one()
            held = s.scalar(
                select(func.coalesce(func.sum(SegmentRow.bytes), 0)).where(live, locked)
            )
        return CameraStorage(
            camera, int(count), int(stored), int(held or 0), None if oldest is None else int(oldest)
        )

    def stored_bytes(self) -> int:
        with Session(self._engine) as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(SegmentRow.bytes), 0)).where(~SegmentRow.garbage)
                )
                or 0
            )


_REPLACED = "recorder-replaced"
"""The ledger cause of a replaced recorder thread (`ingest.supervisor.REPLACED`)."""


class _AlreadyIndexed(Exception):
    """`index_unindexed` lost a race with `commit` for this path: nothing to do."""


def probe_segment(path: Path, camera: str, start_ms: int) -> SegmentInfo:
    """Read a segment file back with PyAV to learn its codecs, size and media duration."""
    with av.open(str(path)) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        main = video if video is not None else audio  # an audio-only camera's: its audio
        if main is None:
            raise StorageIOError(f"{path}: neither video nor audio in the file")
        tb = main.time_base
        first: int | None = None
        last_end = 0
        frames = 0
        for packet in container.demux(main):
            if packet.dts is None:
                continue
            frames += video is not None
            if first is None:
                first = packet.dts
            last_end = max(last_end, packet.dts + (packet.duration or 0))
        if tb is None:
            raise StorageIOError(f"{path}: {main.type} stream has no time base")
        duration_ms = 0 if first is None else int((last_end - first) * tb * 1000)
        return SegmentInfo(
            camera=camera,
            start_ms=start_ms,
            end_ms=start_ms + duration_ms,
            duration_ms=duration_ms,
            frames=frames,
            video_codec=video.codec_context.codec.canonical_name if video is not None else None,
            audio_codec=audio.codec_context.codec.canonical_name if audio is not None else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock held for the block (blocking)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_DISTINCT_SEGMENT_CAMERAS = """
WITH RECURSIVE cams(name) AS (
    SELECT (SELECT MIN(camera) FROM segments)
    UNION ALL
    SELECT (SELECT MIN(camera) FROM segments WHERE camera > cams.name)
    FROM cams WHERE cams.name IS NOT NULL
)
SELECT name FROM cams WHERE name IS NOT NULL
"""


def _gaps(rows: list[SegmentRow]) -> list[tuple[str, str, str, int]]:
    """Group rows into runs that are consecutive in their camera's chain; each run leaves
    one gap (camera, chain before it, last chain in it, count)."""
    out: list[tuple[str, str, str, int]] = []
    by_camera: dict[str, list[SegmentRow]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        by_camera.setdefault(r.camera, []).append(r)
    for camera, run_rows in by_camera.items():
        after = run_rows[0].prev_chain
        last = run_rows[0].chain
        count = 1
        for r in run_rows[1:]:
            if r.prev_chain == last:
                last = r.chain
                count += 1
            else:
                out.append((camera, after, last, count))
                after, last, count = r.prev_chain, r.chain, 1
        out.append((camera, after, last, count))
    return out


_SEGMENT_COLUMNS = tuple(
    SegmentRow.__table__.c[name]
    for name in (
        "id",
        "camera",
        "start_ms",
        "end_ms",
        "duration_ms",
        "bytes",
        "path",
        "video_codec",
        "audio_codec",
        "width",
        "height",
        "frames",
        "sha256",
        "chain",
        "recovered",
        "discontinuity",
    )
)
"""The columns a `Segment` is made of, in its field order (see `_segment`)."""


_NO_BOUND = -(2**62)
_t = SegmentRow.__table__.c
_FREE_SPAN_QUERY = (
    select(*_SEGMENT_COLUMNS)
    .where(
        _t.camera == bindparam("camera"),
        _t.garbage.is_(False),
        _t.end_ms > bindparam("after"),
        _t.end_ms <= bindparam("hi"),
        _t.start_ms >= bindparam("lo"),
        or_(_t.elapsed_ms.is_(None), _t.elapsed_ms <= bindparam("young")),
    )
    .order_by(_t.end_ms)
    .limit(bindparam("n"))
)
"""A camera's segments in one free span (start >= lo, end <= hi) that end after `after`,
oldest first: one range of the (camera, end_ms) index. Built once: a pass runs it per span."""


_YOUNG_IN_SPAN = (
    select(_t.id)
    .where(
        _t.camera == bindparam("camera"),
        _t.garbage.is_(False),
        _t.end_ms > bindparam("after"),
        _t.end_ms <= bindparam("hi"),
        _t.start_ms >= bindparam("lo"),
        _t.elapsed_ms > bindparam("young"),
    )
    .limit(1)
)
"""Whether a span holds footage past its window by the wall clock but not yet by evidence
time (then the span is searched again next pass)."""


def _segment(r: Any, root: Path) -> Segment:
    """A `Segment` from a row of `_SEGMENT_COLUMNS` (cheaper than loading ORM objects)."""
    return Segment(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        root / r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        bool(r[14]),
        bool(r[15]),
    )


def _run_mark(row: RunRow) -> evidence.RunMark:
    return evidence.RunMark(
        row.id,
        row.boot_id,
        row.pid,
        row.started_wall_ms,
        row.started_uptime_ms,
        row.last_wall_ms,
        row.last_uptime_ms,
        row.elapsed_start_ms,
        row.synchronised,
    )


def _runs(rows: list[SegmentRow]) -> list[list[SegmentRow]]:
    """Rows (ordered by id) split into runs consecutive in their camera's hash chain."""
    by_camera: dict[str, list[list[SegmentRow]]] = {}
    for r in rows:
        runs = by_camera.setdefault(r.camera, [])
        if runs and runs[-1][-1].chain == r.prev_chain:
            runs[-1].append(r)
        else:
            runs.append([r])
    return [run for runs in by_camera.values() for run in runs]


def _gap_of(s: Session, run: list[SegmentRow]) -> ChainGapRow | None:
    """The chain gap a delete recorded for these marked rows: it ends at one of them, or
    starts right before them (merged with a later gap)."""
    chains = [r.chain for r in run]
    return s.scalars(
        select(ChainGapRow).where(
            ChainGapRow.camera == run[0].camera,
            ChainGapRow.last_chain.in_(chains)
            | ChainGapRow.after_chain.in_([run[0].prev_chain, *chains]),
        )
    ).first()


def _undo_gap(s: Session, gap: ChainGapRow, run: list[SegmentRow]) -> None:
    """Take the rows of `run` back out of the chain gap their delete recorded, leaving it as
    the deletes before (or after) it left it."""
    chains = [r.chain for r in run]
    starts_here = gap.after_chain == run[0].prev_chain or gap.after_chain in chains
    ends_here = gap.last_chain in chains
    if starts_here and ends_here:
        s.delete(gap)
    elif ends_here:
        gap.removed = max(0, gap.removed - (chains.index(gap.last_chain) + 1))
        gap.last_chain = run[0].prev_chain
    elif starts_here:
        gap.removed = max(0, gap.removed - len(run))
        gap.after_chain = run[-1].chain
    # else: deleted footage on both sides was merged into one gap around the run; it cannot
    # be split into two gaps the audit log confirms (verify will report the run's segments).


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching [start, end) spans merged, sorted by start."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _free_spans(locked: list[tuple[int, int]], horizon: int) -> Iterator[tuple[int | None, int]]:
    """(lo, hi) bounds of the footage that overlaps none of the merged `locked` spans and
    ended by `horizon`: a segment is in one when start >= lo (None: no bound) and end <= hi."""
    lo: int | None = None
    for start, end in locked:
        if lo is not None and lo >= horizon:
            return
        hi = min(start, horizon)
        if lo is None or hi > lo:
            yield lo, hi
        lo = end
    if lo is None or lo < horizon:
        yield lo, horizon


def _below(spans: list[tuple[int, int]], at: int) -> tuple[tuple[int, int], ...]:
    return tuple(span for span in spans if span[0] < at)


def _stored_windows(s: Session) -> dict[str, int]:
    rows = s.execute(select(CameraWindowRow.camera, CameraWindowRow.days))
    return {camera: days for camera, days in rows}


def _remove_empty_dirs(directory: Path, root: Path) -> None:
    """Remove now-empty hour/day/month/year folders up to (not including) the camera's."""
    d = directory
    while d != root and d.parent != root:
        try:
            d.rmdir()
        except OSError:
            return  # not empty (or gone): stop climbing
        fsync_dir(d.parent)
        d = d.parent
