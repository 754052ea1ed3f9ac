"""CLI commands for retention and integrity: lock, locks, lock-extend, lock-release, lock-end,
delete, verify, purge. Each opens the store beside a running daemon (no writer lock) and acts
through the storage door, which refuses and audits anything inside the window or locked.
Runs on the main thread."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import TextIO

from nvr import show
from nvr.cli_context import actor, config_command, opened
from nvr.config import NvrConfig
from nvr.retention import RetentionService
from nvr.show import when as iso
from nvr.storage import ClockSuspicious, LockError, RetentionViolation, SegmentStore
from nvr.storage.verify import VerifyReport


def parse_time(text: str) -> int:
    """ISO 8601 with a zone (`2026-11-22T08:00:00Z`, `...+08:00`) -> UTC ms."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time with a zone, e.g. 2026-11-22T08:00:00Z, found {text!r}"
        ) from err
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"the time {text!r} has no zone; add Z or an offset such as +08:00"
        )
    return int(dt.timestamp() * 1000)


def _camera(config: NvrConfig, store: SegmentStore, name: str) -> str:
    known = {c.name for c in config.cameras} | set(store.cameras())
    if name not in known:
        raise SystemExit(f"nvr: unknown camera {name!r} (known: {', '.join(sorted(known))})")
    return name


def cmd_lock(args: argparse.Namespace) -> int:
    with opened(args) as (config, store):
        cam = _camera(config, store, args.camera)
        try:
            lock = store.locks.add(
                cam,
                args.start,
                args.end,
                actor=actor(),
                reason=args.reason,
                case_id=args.case,
                until_ms=args.until,
                hold=args.hold,
            )
        except LockError as err:
            print(f"nvr lock: refused: {err}", file=sys.stderr)
            return 1
    print(f"locked: {lock.describe()} {cam} {iso(lock.start_ms)} .. {iso(lock.end_ms)}")
    return 0


def cmd_locks(args: argparse.Namespace) -> int:
    with opened(args) as (_, store):
        locks = store.locks.find(include_inactive=args.all)
        now = store.now()
    if not locks:
        print("no locks")
    for lk in locks:
        state = "active" if lk.active(now) else "ended"
        until = "legal hold" if lk.expires_ms is None else f"until {iso(lk.expires_ms)}"
        asked = (
            f"\tend asked by {lk.end_requested_by} ({lk.end_request_reason})"
            if lk.end_requested_by is not None and lk.active(now)
            else ""
        )
        print(
            f"{lk.id}\t{lk.camera}\t{iso(lk.start_ms)} .. {iso(lk.end_ms)}\t{until}\t"
            f"{state}\tby {lk.created_by}\tcase {lk.case_id or '-'}\t{lk.reason}{asked}"
        )
    return 0


def cmd_lock_extend(args: argparse.Namespace) -> int:
    with opened(args) as (_, store):
        try:
            lock = store.locks.extend(args.id, args.until, actor=actor())
        except LockError as err:
            print(f"nvr lock-extend: refused: {err}", file=sys.stderr)
            return 1
    print(f"extended: {lock.describe()}")
    return 0


def cmd_lock_release(args: argparse.Namespace) -> int:
    with opened(args) as (_, store):
        try:
            lock = store.locks.release_hold(args.id, actor=actor(), reason=args.reason)
        except LockError as err:
            print(f"nvr lock-release: refused: {err}", file=sys.stderr)
            return 1
    print(f"released: {lock.describe()}")
    return 0


def cmd_lock_end(args: argparse.Namespace) -> int:
    """Ask to end a lock made by mistake, or (another person) approve that request."""
    with opened(args) as (_, store):
        try:
            if args.approve:
                lock = store.locks.approve_end(args.id, actor=actor(), reason=args.reason)
            else:
                lock = store.locks.request_end(args.id, actor=actor(), reason=args.reason)
        except LockError as err:
            print(f"nvr lock-end: refused: {err}", file=sys.stderr)
            return 1
    if args.approve:
        print(f"ended: {lock.describe()}")
    else:
        print(f"asked to end {lock.describe()}; a second person must approve (--approve)")
    return 0


def backwards(args: argparse.Namespace, command: str) -> bool:
    """Whether `--to` is not after `--from` (said on stderr; the command then exits 2)."""
    if args.end > args.start:
        return False
    print(f"nvr {command}: --to must be after --from", file=sys.stderr)
    return True


def cmd_delete(args: argparse.Namespace) -> int:
    if backwards(args, "delete"):
        return 2
    with opened(args) as (config, store):
        cam = _camera(config, store, args.camera)
        try:
            gone = store.delete_range(cam, args.start, args.end, actor=actor())
        except ClockSuspicious as err:
            print(f"nvr delete: refused: {err.reason}.\n{err.advice}", file=sys.stderr)
            return 1
        except RetentionViolation as err:
            print(f"nvr delete: refused: {err.reason}", file=sys.stderr)
            return 1
    print(f"deleted {show.count(len(gone), 'segment')} ({show.size(sum(s.bytes for s in gone))})")
    return 0


class Progress:
    """`nvr verify`'s progress on a terminal (stderr): bytes hashed of the total, rate and
    time left, redrawn at most every `every_s` seconds on one line."""

    def __init__(self, out: TextIO, every_s: float = 0.5) -> None:
        self._out = out
        self._every = every_s
        self._started = time.monotonic()
        self._drawn = 0.0
        self.shown = False

    def rate(self, done: int) -> float:
        return done / max(time.monotonic() - self._started, 1e-6)

    def __call__(self, report: VerifyReport) -> None:
        now = time.monotonic()
        if now - self._drawn < self._every:
            return
        self._drawn = now
        done, total = report.bytes_hashed, max(report.bytes_to_hash, report.bytes_hashed)
        rate = self.rate(done)
        left = (total - done) / rate if rate > 0 else 0.0
        share = 100 * done / total if total else 100.0
        self._out.write(
            f"\rverifying: {show.size(done)} of {show.size(total)} ({share:.0f}%), "
            f"{show.size(int(rate))}/s, ETA {_duration(left)}\x1b[K"
        )
        self._out.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self._out.write("\r\x1b[K")
            self._out.flush()


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def cmd_verify(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr) if sys.stderr.isatty() else None
    started = time.monotonic()
    with opened(args) as (config, store):
        camera = None if args.camera is None else _camera(config, store, args.camera)
        try:
            report = store.verify(camera, args.start, args.end, progress)
        finally:
            if progress is not None:
                progress.finish()
        audit = store.audit.verify()
    elapsed = time.monotonic() - started
    for line in report.problems + audit:
        print(line)
    rate = report.bytes_hashed / max(elapsed, 1e-6)
    print(
        f"{show.count(report.segments_checked, 'segment')} checked, "
        f"{show.count(report.files_hashed, 'file')} hashed ({show.size(report.bytes_hashed)} "
        f"in {elapsed:.1f} s, {show.size(int(rate))}/s), "
        f"{show.count(len(report.problems), 'recording problem')}, "
        f"{show.count(len(audit), 'audit problem')}"
    )
    return 0 if report.ok and not audit else 1


def cmd_purge(args: argparse.Namespace) -> int:
    """One retention pass. Under a suspicious server clock it refuses (audited) and says
    why, unless the operator checked the clock (`--i-confirm-clock --reason`, audited)."""
    if args.i_confirm_clock and not (args.reason or "").strip():
        print("nvr purge: --i-confirm-clock needs --reason (what you checked)", file=sys.stderr)
        return 2
    with opened(args) as (config, store):
        who = actor()
        confirmed: str | None = None
        if args.i_confirm_clock:
            was = store.confirm_clock(actor=who, reason=args.reason)
            confirmed = who
            print(
                f"clock confirmed by {who} ({args.reason})"
                + (f"; it was suspicious: {was.reason}" if was.held else "")
            )
        verdict = store.clock_verdict()
        if verdict.held and confirmed is None:
            store.audit.append(who, "purge", "", "refused", {"why": f"clock: {verdict.reason}"})
            print(
                "nvr purge: refused, nothing deleted: the server clock is suspicious: "
                f"{verdict.reason}.\n{verdict.advice}",
                file=sys.stderr,
            )
            return 1
        service = RetentionService(config, store)
        deleted = service.purge_once(clock_confirmed_by=confirmed)
        fc = service.capacity_once()
    print(f"purged {show.count(deleted, 'segment')}; capacity {fc.state}: {fc.detail}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the retention commands to the `nvr` parser."""

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        return config_command(sub, name, help_text)

    p = with_config("lock", "lock footage as evidence (default 2 years)")
    p.add_argument("camera")
    p.add_argument("--from", dest="start", type=parse_time, required=True)
    p.add_argument("--to", dest="end", type=parse_time, required=True)
    p.add_argument("--reason", required=True)
    p.add_argument("--case")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--until", type=parse_time, help="expiry (default: two years from now)")
    until.add_argument("--hold", action="store_true", help="legal hold: no expiry")
    p.set_defaults(func=cmd_lock)

    p = with_config("locks", "list locks")
    p.add_argument("--all", action="store_true", help="include expired and released locks")
    p.set_defaults(func=cmd_locks)

    p = with_config("lock-extend", "move a lock's expiry later (never earlier)")
    p.add_argument("id", type=int)
    p.add_argument("--until", type=parse_time, required=True)
    p.set_defaults(func=cmd_lock_extend)

    p = with_config("lock-release", "release a legal hold (admin)")
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_lock_release)

    p = with_config(
        "lock-end", "end a lock made by mistake: one person asks, a second approves (--approve)"
    )
    p.add_argument("id", type=int)
    p.add_argument("--reason", required=True)
    p.add_argument("--approve", action="store_true", help="approve another person's request")
    p.set_defaults(func=cmd_lock_end)

    p = with_config("delete", "delete expired, unlocked footage (refuses anything else)")
    p.add_argument("camera")
    p.add_argument("--from", dest="start", type=parse_time, required=True)
    p.add_argument("--to", dest="end", type=parse_time, required=True)
    p.set_defaults(func=cmd_delete)

    p = with_config("verify", "re-hash recordings and walk the hash chains and audit log")
    p.add_argument("--camera")
    p.add_argument("--from", dest="start", type=parse_time)
    p.add_argument("--to", dest="end", type=parse_time)
    p.set_defaults(func=cmd_verify)

    p = with_config("purge", "run one retention pass now (the daemon does this every minute)")
    p.add_argument(
        "--i-confirm-clock",
        action="store_true",
        help="I checked the server clock: purge even though it stepped (audited; needs --reason)",
    )
    p.add_argument("--reason", help="what was checked (with --i-confirm-clock)")
    p.set_defaults(func=cmd_purge)
