"""Integrity verification of recordings (R4): re-hash files and walk each camera's hash chain.

Reports every altered file (hash mismatch), missing file, index row that was edited (its
chain value does not recompute), segments removed outside a legitimate purge (a break in the
chain with no gap record confirmed by the audit log), and files on disk without an index
row (also of cameras the index does not name at all). Pure reading; runs on the calling
thread (the `nvr verify` CLI, or a worker thread).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nvr.storage.schema import AuditRow, ChainGapRow, SegmentRow

GENESIS = "0" * 64


@dataclass
class VerifyReport:
    """What `verify` checked and what it found; `ok` when nothing was found."""

    segments_checked: int = 0
    files_hashed: int = 0
    problems: list[str] = field(default_factory=list)
    bytes_hashed: int = 0
    bytes_to_hash: int = 0
    """What the index says the files in range take (the progress total)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _chain(prev: str, sha: str, camera: str, start: int, end: int) -> str:
    text = f"{prev}|{sha}|{camera}|{start}|{end}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _confirmed_gaps(s: Session) -> set[tuple[str, str, str]]:
    """(camera, after, last) of every gap a purge or delete wrote into the audit log."""
    out: set[tuple[str, str, str]] = set()
    q = select(AuditRow.detail).where(
        AuditRow.action.in_(("purge", "delete")), AuditRow.outcome == "ok"
    )
    for (detail,) in s.execute(q):
        try:
            for camera, after, last in json.loads(detail).get("gaps", []):
                out.add((camera, after, last))
        except (ValueError, TypeError):
            continue
    return out


def _camera_dirs(root: Path) -> list[str]:
    """Folders under the root that may hold a camera's files, indexed or not."""
    try:
        return [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _verify_camera(
    s: Session,
    root: Path,
    cam: str,
    confirmed: set[tuple[str, str, str]],
    indexed: set[str],
    report: VerifyReport,
    start_ms: int | None,
    end_ms: int | None,
    progress: Callable[[VerifyReport], None] | None = None,
) -> None:
    """Walk one camera's chain. Rows marked for deletion (garbage) are checked too: their
    chain values and (while they remain) files, and that the delete that marked them recorded
    the chain gap they leave; marked rows without one are reported and walked as present."""
    gaps: dict[str, ChainGapRow] = {
        g.after_chain: g for g in s.scalars(select(ChainGapRow).where(ChainGapRow.camera == cam))
    }
    gap_lasts = {g.last_chain for g in gaps.values()}
    expected = GENESIS

    def link(row: SegmentRow) -> None:
        nonlocal expected
        hops = 0
        while expected != row.prev_chain:
            gap = gaps.get(expected)
            if gap is None or hops > len(gaps):
                report.problems.append(
                    f"{cam}: segments removed before {row.path} outside any purge "
                    "(hash chain broken)"
                )
                break
            if (cam, gap.after_chain, gap.last_chain) not in confirmed:
                report.problems.append(
                    f"{cam}: a gap of {gap.removed} segments before {row.path} is not "
                    "confirmed by the audit log"
                )
            expected = gap.last_chain
            hops += 1
        expected = row.chain

    def check(row: SegmentRow, *, marked: bool) -> None:
        report.segments_checked += 1
        if _chain(row.prev_chain, row.sha256, cam, row.start_ms, row.end_ms) != row.chain:
            report.problems.append(f"{cam}: index row of {row.path} was edited")
        if start_ms is not None and row.end_ms <= start_ms:
            return
        if end_ms is not None and row.start_ms >= end_ms:
            return
        path = root / row.path
        if not path.exists():
            if not marked:  # a marked row's file may already be unlinked
                report.problems.append(f"{cam}: missing file {row.path}")
            return
        report.files_hashed += 1
        if file_sha256(path) != row.sha256:
            report.problems.append(f"{cam}: altered file {row.path} (sha256 differs)")
        report.bytes_hashed += row.bytes
        if progress is not None:
            progress(report)

    def settle(run: list[SegmentRow]) -> None:
        if not run:
            return
        chains = [r.chain for r in run]
        gapped = (
            any(c in gap_lasts for c in chains)
            or run[0].prev_chain in gaps
            or any(c in gaps for c in chains)
        )
        for r in run:
            check(r, marked=True)
        if not gapped:
            report.problems.append(
                f"{cam}: {len(run)} segments marked for deletion outside any purge or delete "
                f"({run[0].path} .. {run[-1].path}; no chain gap recorded)"
            )
            for r in run:
                link(r)
        run.clear()

    marked: list[SegmentRow] = []
    rows = s.scalars(select(SegmentRow).where(SegmentRow.camera == cam).order_by(SegmentRow.id))
    for row in rows.yield_per(2000):
        indexed.add(row.path)
        if row.garbage:
            if marked and marked[-1].chain != row.prev_chain:
                settle(marked)
            marked.append(row)
            continue
        settle(marked)
        link(row)
        check(row, marked=False)
    settle(marked)


def verify_store(
    s: Session,
    root: Path,
    *,
    camera: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    progress: Callable[[VerifyReport], None] | None = None,
    grace_wait: Callable[[float], object] | None = None,
) -> VerifyReport:
    """Check the chains of all (or one) camera; re-hash files overlapping the time range.
    `progress` is called (on this thread) after each file hashed. `grace_wait(seconds)`
    waits while a file found without a row may be getting one (default: waits; injectable
    for tests)."""
    report = VerifyReport()
    total = select(func.coalesce(func.sum(SegmentRow.bytes), 0)).where(~SegmentRow.garbage)
    if camera is not None:
        total = total.where(SegmentRow.camera == camera)
    if start_ms is not None:
        total = total.where(SegmentRow.end_ms > start_ms)
    if end_ms is not None:
        total = total.where(SegmentRow.start_ms < end_ms)
    report.bytes_to_hash = int(s.scalar(total) or 0)
    cams_q = select(SegmentRow.camera).distinct()
    cameras = sorted(set(s.scalars(cams_q)) | set(s.scalars(select(ChainGapRow.camera).distinct())))
    if camera is not None:
        cameras = [camera]
    on_disk = [] if camera is not None else _camera_dirs(root)
    confirmed = _confirmed_gaps(s)
    indexed: set[str] = set()
    for cam in cameras:
        _verify_camera(s, root, cam, confirmed, indexed, report, start_ms, end_ms, progress)
    unindexed: list[tuple[str, str]] = []
    for cam in sorted(set(cameras) | set(on_disk)):
        base = root / cam
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not name.endswith(".mp4"):
                    continue
                rel = str((Path(dirpath) / name).relative_to(root))
                if rel not in indexed:
                    unindexed.append((cam, rel))
    for cam, rel in _still_unindexed(s, unindexed, grace_wait or threading.Event().wait):
        report.problems.append(f"{cam}: unindexed file {rel}")
    return report


COMMIT_GRACE_SECONDS = 1.0
"""How long a file found without a row is given to get one: a running recorder renames a
segment to its final name just before it inserts its row."""


def _still_unindexed(
    s: Session, files: list[tuple[str, str]], wait: Callable[[float], object]
) -> list[tuple[str, str]]:
    """Of files found without a row, those that still have none once a recorder committing
    them has had time to insert it (verify runs beside the daemon: a segment renamed after
    the rows were read, or in the moment between its rename and its row, is not stranded)."""
    for attempt in range(2):
        if not files:
            break
        if attempt:
            wait(COMMIT_GRACE_SECONDS)  # an Event's wait, not time.sleep (libfaketime)
        rows = set(
            s.scalars(select(SegmentRow.path).where(SegmentRow.path.in_([r for _, r in files])))
        )
        files = [(cam, rel) for cam, rel in files if rel not in rows]
    return files
