"""The `nvr` command line: `run`, `check-config`, `status`, `discover` (`nvr.discover`), and the
commands of `nvr.cli_retention`, `nvr.cli_api`, `nvr.cli_index` and `nvr.cli_picture`. Runs
on the main thread; `run` hands over to the asyncio loop (`nvr.daemon`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from nvr import cli_api, cli_index, cli_picture, cli_retention, configpath, discover, show
from nvr.cli_context import config_command
from nvr.clock_status import camera_status_lines, server_status_line
from nvr.config import ConfigError, NvrConfig, load_config
from nvr.config.checks import machine_problems
from nvr.storage import CameraStorage, IndexCorruptError, SegmentStore, StorageError
from nvr.storage.timestamps import DAY_MS, now_ms

log = logging.getLogger("nvr")


class _UTCFormatter(logging.Formatter):
    @staticmethod
    def converter(secs: float | None = None, /) -> time.struct_time:
        return time.gmtime(secs)


SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(_UTCFormatter):
    """Our line format, each line prefixed `<N>` with the record's syslog priority: journald
    takes it as the entry's priority (`journalctl -p warning`) and strips it. A traceback's
    lines carry the same prefix, so none of them lands as a lower priority."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in SYSLOG_PRIORITY if lv <= record.levelno), default=logging.DEBUG)
        prefix = f"<{SYSLOG_PRIORITY[level]}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """Whether stderr is the journal's stream (systemd sets `JOURNAL_STREAM=dev:inode` of the
    stream it connected; a redirected stderr no longer matches it)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


def setup_logging(level: str) -> None:
    """Log to stderr in our format (uvicorn's loggers, configured with `log_config=None`,
    reach the same handler); with syslog priorities when stderr is the journal."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"
    journal = stderr_is_journal()
    formatter = JournalFormatter if journal else _UTCFormatter
    handler.setFormatter(formatter(fmt, "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


STATUS_FRESH_MS = 15_000
"""status.json older than this means the daemon is not running (it rewrites it every 2 s)."""

NOT_RUNNING = 3
"""`nvr status` exit status when the daemon is not running (LSB: "program is not running")."""
SIGPIPE_EXIT = 128 + 13
"""Exit status when the reader of stdout went away (what a shell shows for SIGPIPE)."""

MALLOC_ARENAS = 2
"""glibc malloc arenas for the daemon's many threads (see nvr/memory.py)."""

GIL_SWITCH_SECONDS = 0.001
"""How long a thread running Python code may keep the GIL while another waits for it
(CPython's default is 5 ms). The event loop (API, watchdog, supervision) gives the GIL up
at every system call (each accept, recv, send, epoll wait) and must win it back from the
threads that compute (playback plans, recorders, the store): each time it waits up to this
long, so a request of ~20 system calls waited ~100 ms behind a 24 h playback plan
(`python -m bench.abuse`, issue 13). At 1 ms the loop's wait is bounded by ~20 ms per
request; the threads that compute lose only the cost of the extra switches."""


def _freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, functions of FastAPI, SQLAlchemy,
    PyAV, numpy ...) out of the cyclic garbage collector's reach. A full collection walks
    every tracked object with the GIL held, so it stops the event loop for as long as it
    walks: 210-320 ms while twenty clients asked for 24 h plans (gc callbacks in the daemon,
    issue 13), the p99 of /healthz in that phase. Frozen, they are never walked again
    (gen-2 pauses 120-170 ms in the same run); they live as long as the process anyway."""
    gc.freeze()


fmt_ms = show.when


def cmd_run(args: argparse.Namespace) -> int:
    from nvr import memory
    from nvr.daemon import run_daemon

    path = configpath.config_path(args.config)
    config = configpath.load(path)
    setup_logging(config.log_level)
    memory.limit_arenas(MALLOC_ARENAS)  # before any recorder thread exists
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    _freeze_startup_objects()
    if path is None:
        log.info(
            "no config given: embedded default (data in %s, built-in camera 'demo')",
            config.storage.root,
        )
    try:
        asyncio.run(run_daemon(config, config_path=path))
    except StorageError as err:
        log.error("%s", err)
        return 1
    return 0


def _daemon_running(root: Path) -> int | None:
    """The pid of a daemon publishing status for `root` right now, if any."""
    doc = _status_doc(root)
    if doc is None or not doc.get("running"):
        return None
    if now_ms() - int(doc.get("written_ms", 0)) > STATUS_FRESH_MS:
        return None
    pid = int(doc.get("pid", 0))
    return pid or None


def cmd_check_config(args: argparse.Namespace) -> int:
    """The schema, then (unless --schema-only) what the config needs from this machine:
    every problem at once, each naming its key."""
    config = load_config(args.file)
    if not args.schema_only:
        running = _daemon_running(config.storage.root)
        problems = machine_problems(config, port_in_use_ok=running is not None)
        if problems:
            raise ConfigError(str(args.file), problems)
        if running is not None and config.api is not None:
            print(f"{config.api.listen}: not checked, the daemon (pid {running}) is running")
    print(
        f"{args.file}: ok ({show.count(len(config.cameras), 'camera')}, retention "
        f"{show.count(config.retention.days, 'day')})"
    )
    return 0


def _status_doc(root: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((root / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc


def events_lines(doc: dict[str, Any] | None) -> list[str]:
    """One line per alert destination (`[events]`) from the daemon's status.json."""
    out = []
    for d in (doc or {}).get("events", []):
        lost = f", {d['dropped']} dropped" if d.get("dropped") else ""
        if d.get("ok"):
            out.append(f"events: {d['name']}: ok ({d['delivered']} delivered{lost})")
        else:
            out.append(
                f"WARNING events: {d['name']}: unreachable since {fmt_ms(d['since_ms'])}: "
                f"{d['problem']} ({d['queued']} queued{lost})"
            )
    return out


def gb28181_lines(doc: dict[str, Any] | None) -> list[str]:
    """The GB/T 28181 registration (`[gb28181]`) from the daemon's status.json."""
    gb = (doc or {}).get("gb28181")
    if not gb:
        return []
    if gb.get("registered"):
        line = (
            f"gb28181: registered with {gb['server_id']} at {gb['server']} since "
            f"{fmt_ms(int(gb['registered_since'] * 1000))}, {gb.get('streams', 0)} streams"
        )
    else:
        line = (
            f"WARNING gb28181: not registered with {gb['server_id']} at {gb['server']}: "
            f"{gb.get('last_error') or 'trying'}"
        )
    out = [line]
    if gb.get("clock_finding"):
        out.append(f"WARNING gb28181: {gb['clock_finding']}")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    config = configpath.load(args.config)
    doc = _status_doc(config.storage.root)
    now = now_ms()
    fresh = (
        doc is not None and doc.get("running") and now - int(doc["written_ms"]) < STATUS_FRESH_MS
    )
    print("daemon: " + (f"running (pid {doc['pid']})" if fresh and doc else "not running"))
    for line in events_lines(doc if fresh else None) + gb28181_lines(doc if fresh else None):
        print(line)
    try:
        code = _status_from_index(config, doc if fresh else None, now)
        # Scripts and monitoring can tell a stopped recorder from the exit status alone.
        return code if fresh else NOT_RUNNING
    except IndexCorruptError as err:
        # What the daemon says (status.json) still shows, then what is wrong and what to do.
        for name, live in sorted(((doc or {}).get("cameras", {}) if fresh else {}).items()):
            detail = f" ({live['detail']})" if live.get("detail") else ""
            print(f"{name}: {live['state']}{detail}")
        print(f"index: DAMAGED: {err}")
        return 1


def _status_from_index(config: NvrConfig, doc: dict[str, Any] | None, now: int) -> int:
    store = SegmentStore(
        config.storage.root,
        config.storage.index_url(),
        exclusive=False,
        clock_stable_s=config.retention.clock_stable_minutes * 60,
    )
    fresh = doc is not None
    try:
        capacity = store.capacity.history(limit=1)
        free_gb = store.free_bytes() / 1e9
        if capacity:
            print(
                f"storage: {free_gb:.1f} GB free; capacity {capacity[-1].state}: "
                f"{capacity[-1].detail}"
            )
        else:
            print(f"storage: {free_gb:.1f} GB free; capacity not yet forecast")
        print(server_status_line())
        verdict = store.clock_verdict()
        print(("WARNING " if verdict.held else "") + "retention: " + verdict.describe())
        runs = store.runs(limit=1)
        if runs:
            run = runs[0]
            print(
                f"recorder run: pid {run.pid}, started {fmt_ms(run.started_wall_ms)}, last "
                f"heartbeat {fmt_ms(run.last_wall_ms)} (uptime "
                f"{(run.last_uptime_ms - run.started_uptime_ms) / 1000:.0f} s in this run, "
                f"boot {run.boot_id[:8]})"
            )
        hour_ago = now - 3_600_000
        for cam in config.cameras:
            live = (doc or {}).get("cameras", {}).get(cam.name) if fresh else None
            state = live["state"] if live else "not running"
            detail = f" ({live['detail']})" if live and live.get("detail") else ""
            last = store.last_segment(cam.name)
            stats = store.stats(cam.name, hour_ago)
            outages = store.ledger.outages(cam.name, 0)
            print(f"{cam.name}: {state}{detail}")
            picture = picture_line((doc or {}).get("pictures", {}).get(cam.name), store, cam.name)
            if picture:
                print(f"  {picture}")
            for line in camera_status_lines(
                store, cam.name, cam.max_clock_offset_seconds, show.when
            ):
                print(f"  {line}")
            print(f"  last segment end: {fmt_ms(last.end_ms if last else None)}")
            print(
                f"  last hour: {show.count(stats.segments, 'segment')}, {show.size(stats.bytes)}, "
                f"{stats.media_ms / 1000:.0f} s recorded"
            )
            print(f"  {storage_line(store.camera_storage(cam.name), store, now)}")
            open_gaps = [o for o in outages if o.end_ms is None]
            closed = [o for o in outages if o.end_ms is not None]
            for o in open_gaps:
                print(f"  open gap since {fmt_ms(o.start_ms)}: {o.cause} {o.detail}".rstrip())
            if closed:
                o = closed[-1]
                print(
                    f"  last gap: {fmt_ms(o.start_ms)} .. {fmt_ms(o.end_ms)} "
                    f"({(o.duration_ms or 0) / 1000:.1f} s, {o.cause})"
                )
            if not open_gaps and not closed:
                print("  gaps: none")
    finally:
        store.close()
    return 0


def picture_line(live: dict[str, Any] | None, store: SegmentStore, camera: str) -> str:
    """`picture: ...` of one camera (issue 18): the daemon's live verdict, else the last
    finding in the index; a raised condition is a WARNING."""
    if live is not None:
        state = str(live["state"])
        bad = state not in ("ok", "learning")
        text = f"picture: {state} since {fmt_ms(int(live['since_ms']))}"
        if bad and live.get("detail"):
            text += f": {live['detail']}"
        text += f" ({show.count(int(live.get('checks', 0)), 'check')})"
        return ("WARNING " if bad else "") + text
    found = store.pictures.find(camera)
    if not found:
        return ""
    last = found[-1]
    if last.end_ms is None:
        return f"WARNING picture: {last.kind} since {fmt_ms(last.start_ms)}: {last.detail}"
    return f"picture: last finding {last.kind} {fmt_ms(last.start_ms)} .. {fmt_ms(last.end_ms)}"


def storage_line(kept: CameraStorage, store: SegmentStore, now: int) -> str:
    """`stored: ...` of one camera: bytes, oldest footage and days held against its window,
    bytes locked (as `/api/cameras` and `/metrics` give them)."""
    window = store.window_days(kept.camera)
    if kept.oldest_ms is None:
        return f"stored: nothing (window {show.count(window, 'day')})"
    held = max(0, now - kept.oldest_ms) / DAY_MS
    return (
        f"stored: {show.size(kept.stored_bytes)} in {show.count(kept.segments, 'segment')} "
        f"since {fmt_ms(kept.oldest_ms)} ({held:.1f} days held, window "
        f"{show.count(window, 'day')}); {show.size(kept.locked_bytes)} locked"
    )


def _version() -> str:
    try:
        return importlib.metadata.version("nvr")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvr", description="Evidence-grade video recorder")
    parser.add_argument("--version", action="version", version=f"nvr {_version()}")
    parser.add_argument(
        "--utc",
        action="store_true",
        help="print times in UTC (default: local time with its offset from UTC)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = config_command(sub, "run", "run the recorder in the foreground")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser(
        "check-config",
        help="validate a config file and what it needs on this machine (every problem at once)",
    )
    check.add_argument("file", type=Path)
    check.add_argument(
        "--schema-only",
        action="store_true",
        help="only the file itself, not what it needs from this machine (secrets, storage "
        "root, TLS files, the API port)",
    )
    check.set_defaults(func=cmd_check_config)
    status = config_command(sub, "status", "per-camera state, recent segments and gaps")
    status.set_defaults(func=cmd_status)
    cli_retention.register(sub)
    cli_api.register(sub)
    cli_index.register(sub)
    cli_picture.register(sub)
    discover.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show.use_utc(args.utc)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a reader gone is caught below
    except BrokenPipeError:
        # `nvr status | head`: the reader left. No traceback; stdout goes nowhere from now
        # on, so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return SIGPIPE_EXIT
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    except StorageError as err:
        print(f"storage: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
