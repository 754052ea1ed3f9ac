"""Opening the index database: engine with SQLite pragmas (WAL, full sync, busy timeout) and
Alembic migrations to the newest schema. Runs on the thread that opens the store.

A damaged SQLite file (`database disk image is malformed`, `file is not a database`) raises
`IndexCorruptError`, naming the file and the way out (`nvr index rebuild`), from whatever
statement finds it, so no caller sees a raw driver error; `check_integrity` looks for damage
before the daemon trusts the file.

`migrate(..., in_child=True)` runs `python -m nvr.storage.migrate` for the upgrade itself."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import ExceptionContext

from nvr.storage.errors import IndexCorruptError, StorageError

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = "0011"
"""The newest migration's revision (tests/test_store.py checks it against Alembic's own
view). A database already there is opened without running Alembic at all (see
`migrate` for what importing it costs)."""


def damaged(err: BaseException) -> bool:
    """Whether a driver error says the SQLite file itself is damaged."""
    name = getattr(err, "sqlite_errorname", "") or ""
    return isinstance(err, sqlite3.DatabaseError) and (
        name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB"
    )


def _sqlite_pragmas(database: str) -> Any:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as err:
            if damaged(err):
                raise IndexCorruptError(database, str(err)) from err
            raise
        finally:
            cur.close()

    return connect


def _corrupt_to_typed(database: str) -> Any:
    def handle_error(context: ExceptionContext) -> None:
        err = context.original_exception
        if damaged(err):
            raise IndexCorruptError(database, str(err)) from err

    return handle_error


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL mode and a busy timeout, and a damaged file
    raises `IndexCorruptError`."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        database = str(Path(engine.url.database or ":memory:").resolve())
        event.listen(engine, "connect", _sqlite_pragmas(database))
        event.listen(engine, "handle_error", _corrupt_to_typed(database))
        return engine
    return create_engine(url, pool_pre_ping=True)


def check_integrity(engine: Engine) -> None:
    """IndexCorruptError unless SQLite's `PRAGMA quick_check` finds the file sound (every
    page, record and index entry well formed). A no-op for other databases. Reads the whole
    file: the daemon runs it once at start, before it trusts the index."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        found = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
    if found != ["ok"]:
        database = str(Path(engine.url.database or ":memory:").resolve())
        raise IndexCorruptError(database, "integrity check: " + "; ".join(found))


def current_revision(engine: Engine) -> str | None:
    """The schema revision Alembic last recorded in the database (None: never migrated)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, *, in_child: bool = False) -> None:
    """Bring the schema to the newest Alembic revision (creating it on a fresh database).

    `in_child` runs Alembic in a short-lived child process: the daemon does, because a module
    once imported stays in memory, and Alembic with the SQLAlchemy dialects and pygments
    lexers it loads costs a process 12 MiB for as long as it runs (on a new site, for the
    whole first run)."""
    if current_revision(engine) == HEAD_REVISION:
        return
    if in_child:
        _upgrade_in_child(engine.url.render_as_string(hide_password=False))
    else:
        upgrade(engine)


def _upgrade_in_child(url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nvr.storage.migrate"],
        input=url,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}, no message"
        raise StorageError(f"migrating the index to schema revision {HEAD_REVISION}: {detail}")


def upgrade(engine: Engine) -> None:
    """Run Alembic's upgrade to head on this engine, in this process."""
    from alembic import command  # only when there is something to do (see HEAD_REVISION)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
