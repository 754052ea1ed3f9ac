"""`Index`: the index database as every repository shares it, and `Repository`, their base.

Owns the serialised write transaction (`Index.writing`, with database errors made typed and
the delete door's guarded variant), the index's reserve file (see `storage.store`), the clock
every record is stamped with, and the audit hook (`Index.audit`, a `storage.audit.AuditLog`).
`SegmentStore` makes one `Index` when it opens and hands it to each repository (accounts,
exports, locks, outage ledger, ...): they share one engine, one write lock and one audit log,
and none of them touches another's tables.

Threads: methods are blocking and thread-safe; every index write of the process is serialised
by one lock (a single process is the only writer of its SQLite file). The event loop calls
through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from nvr.storage.audit import AuditLog
from nvr.storage.errors import IndexFullError, IndexWriteError

log = logging.getLogger("nvr.storage")

RESERVE_SUFFIX = ".reserve"


class Index:
    """One open index: engine, serialised writes, reserve, clock and audit log."""

    def __init__(
        self,
        engine: Engine,
        *,
        root: Path,
        clock: Callable[[], int],
        reserve_bytes: int,
        signing_key: Path,
        checkpoint_entries: int,
        checkpoint_ms: int,
    ) -> None:
        """`reserve_bytes` > 0 keeps `<index>.reserve` beside a SQLite file (the exclusive
        writer only; 0 otherwise). `signing_key`, `checkpoint_entries` and `checkpoint_ms`
        are the audit log's (see `storage.audit.AuditLog`)."""
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        db = engine.url.database if engine.dialect.name == "sqlite" else None
        self.reserve_file: Path | None = None
        self.reserve_bytes = 0
        if db and db != ":memory:" and reserve_bytes > 0:
            self.reserve_file = Path(db).resolve().with_name(Path(db).name + RESERVE_SUFFIX)
            self.reserve_bytes = reserve_bytes
        self._reserve_lock = threading.Lock()
        self.audit = AuditLog(
            engine,
            self.writing,
            clock,
            root=root,
            signing_key=signing_key,
            checkpoint_entries=checkpoint_entries,
            checkpoint_ms=checkpoint_ms,
        )
        """The audit log (R5): every repository audits through it."""

    @contextlib.contextmanager
    def writing(self, *, guard: bool = False) -> Iterator[Session]:
        """One index write transaction, serialised, with database errors made typed.

        `guard` makes it the delete door's transaction: it takes the database's write lock
        before its first read, so the windows and locks it checks cannot change until it has
        marked what it deletes. SQLite: BEGIN IMMEDIATE (every other writer, in any process,
        waits for the commit). PostgreSQL: the `locks` and `camera_windows` tables are locked
        in SHARE ROW EXCLUSIVE mode, which waits for and blocks every lock, lock change and
        window change, and every other guarded delete, until the commit."""
        try:
            with self._lock, Session(self.engine) as s, s.begin():
                if guard:
                    if self.engine.dialect.name == "sqlite":
                        # pysqlite begins lazily (at the first write); begin now, for writing.
                        s.connection().exec_driver_sql("BEGIN IMMEDIATE")
                    else:
                        s.execute(
                            text("LOCK TABLE locks, camera_windows IN SHARE ROW EXCLUSIVE MODE")
                        )
                yield s
        except OperationalError as err:
            msg = str(err.orig) if err.orig is not None else str(err)
            if "full" in msg or "space" in msg:
                self.release_reserve()
                raise IndexFullError(f"index write failed: {msg}") from err
            raise IndexWriteError(f"index write failed: {msg}") from err

    def release_reserve(self) -> None:
        """The index's filesystem is full: delete the reserve so the next writes find room."""
        path = self.reserve_file
        if path is None:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            return  # already used
        except OSError as err:
            log.error("cannot release the index reserve %s: %s", path, err.strerror)
            return
        log.warning(
            "the index's filesystem is full: released its %d KiB reserve (%s) so the outage "
            "ledger and held segments can still be written",
            self.reserve_bytes // 1024,
            path,
        )

    def restore_reserve(self) -> bool:
        """Make the reserve file if it is missing and there is room; True if it exists."""
        path = self.reserve_file
        if path is None:
            return True
        with self._reserve_lock:
            return self._make_reserve(path)

    def _make_reserve(self, path: Path) -> bool:
        try:
            if path.stat().st_size >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        except OSError:
            return False
        tmp = path.with_name(path.name + ".tmp")
        try:
            if shutil.disk_usage(path.parent).free < 2 * self.reserve_bytes:
                return False
            with tmp.open("wb") as f:
                f.write(bytes(self.reserve_bytes))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            log.warning("cannot make the index reserve %s yet: %s", path, err.strerror)
            return False
        return True


class Repository:
    """Base of the index's repositories: the shared engine, write transaction, clock and
    audit log, under the names every repository uses."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._engine = index.engine
        self._writing = index.writing
        self._clock = index.clock
        self._audit = index.audit
