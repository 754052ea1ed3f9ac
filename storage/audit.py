"""The audit log: append-only, hash-chained entries of every audited action (R5).

Owned by `storage` because it lives in the index database; callers go through
`SegmentStore.audit()` / `audit_entries()` / `verify_audit()`. Functions here take an open
SQLAlchemy session and run on the caller's thread under the store's write lock.

The sha256 chain alone proves nothing to someone who can write the index: they can delete
entries and recompute every later hash. So the chain is anchored by signatures (Ed25519, the
export key): a signed *head* (the newest entry's id and hash, in `<root>/.audit-head`,
rewritten after every entry) and signed *checkpoints* (every N entries and at the first entry
after an interval; kept in the index, appended to `<root>/.audit-checkpoints` and logged to
the journal). Rewriting or truncating history then needs the private key; `verify_log` names
the first entry that fails and the last checkpoint that still holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import AuditRow

GENESIS = "0" * 64
AUDIT_HEAD_NAME = ".audit-head"
CHECKPOINTS_NAME = ".audit-checkpoints"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at_ms: int
    actor: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]
    hash: str


def canonical(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    prev: str,
    id_: int,
    at_ms: int,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: str,
) -> str:
    text = "|".join((prev, str(id_), str(at_ms), actor, action, target, outcome, detail))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def append(
    s: Session,
    at_ms: int,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    detail: dict[str, Any],
) -> AuditEntry:
    """Append one entry (caller holds the store's write lock and commits)."""
    last = s.execute(
        select(AuditRow.id, AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)
    ).first()
    prev_id, prev_hash = (last[0], last[1]) if last is not None else (0, GENESIS)
    id_ = prev_id + 1
    text = canonical(detail)
    digest = entry_hash(prev_hash, id_, at_ms, actor, action, target, outcome, text)
    s.add(
        AuditRow(
            id=id_,
            at_ms=at_ms,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            detail=text,
            prev_hash=prev_hash,
            hash=digest,
        )
    )
    return AuditEntry(id_, at_ms, actor, action, target, outcome, detail, digest)


def to_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        row.id,
        row.at_ms,
        row.actor,
        row.action,
        row.target,
        row.outcome,
        json.loads(row.detail),
        row.hash,
    )


HEAD_LABEL = "nvr-audit-head"
CHECKPOINT_LABEL = "nvr-audit-checkpoint"


def head_message(id_: int, hash_: str) -> bytes:
    return f"{HEAD_LABEL}|{id_}|{hash_}".encode()


def checkpoint_message(audit_id: int, audit_hash: str, at_ms: int) -> bytes:
    return f"{CHECKPOINT_LABEL}|{audit_id}|{audit_hash}|{at_ms}".encode()


@dataclass(frozen=True)
class Head:
    """What `.audit-head` says: the newest entry, and its signature (None: unsigned)."""

    id: int
    hash: str
    signature: bytes | None


@dataclass(frozen=True)
class Checkpoint:
    """A signed (entry id, hash, time); `where` says where it was read (index, file)."""

    audit_id: int
    audit_hash: str
    at_ms: int
    signature: bytes
    where: str


@dataclass
class AuditReport:
    """The outcome of `verify_log`: problems (empty when intact), the first entry that fails
    (None when none does), and the last checkpoint that still holds."""

    entries: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None
    last_good: Checkpoint | None = None

    def bad(self, entry_id: int, problem: str) -> None:
        self.problems.append(problem)
        if self.first_bad is None or entry_id < self.first_bad:
            self.first_bad = entry_id


def verify_log(
    s: Session,
    *,
    head: Head | None,
    head_missing: bool,
    checkpoints: list[Checkpoint],
    check: Callable[[bytes, bytes], bool] | None,
) -> AuditReport:
    """Walk the chain, check the signed head and every checkpoint against it.

    `check(signature, message)` verifies with the recorder's public key; None when no key
    is available (then signatures are reported as unchecked, which is a problem)."""
    report = AuditReport()
    wanted = {c.audit_id for c in checkpoints}
    if head is not None:
        wanted.add(head.id)
    found: dict[int, str] = {}
    prev_hash = GENESIS
    expected_id = 1
    last_id = 0
    for row in s.scalars(select(AuditRow).order_by(AuditRow.id)).yield_per(5000):
        report.entries += 1
        if row.id != expected_id:
            report.bad(expected_id, f"audit entries {expected_id}..{row.id - 1} are missing")
        if row.prev_hash != prev_hash:
            report.bad(
                row.id, f"audit entry {row.id}: chain broken (previous entry removed or edited)"
            )
        digest = entry_hash(
            row.prev_hash,
            row.id,
            row.at_ms,
            row.actor,
            row.action,
            row.target,
            row.outcome,
            row.detail,
        )
        if digest != row.hash:
            report.bad(row.id, f"audit entry {row.id}: content does not match its hash (edited)")
        if row.id in wanted:
            found[row.id] = row.hash
        prev_hash = row.hash
        expected_id = row.id + 1
        last_id = row.id
    if check is None and (checkpoints or head is not None):
        report.problems.append(
            "no public key to check the audit signatures with (give the recorder's key)"
        )
    # Checkpoints, oldest first: a valid one whose entry still has its hash holds.
    seen: set[tuple[int, str, int]] = set()
    index_cps = {(c.audit_id, c.audit_hash, c.at_ms) for c in checkpoints if c.where == "index"}
    for cp in sorted(checkpoints, key=lambda c: (c.audit_id, c.at_ms)):
        key = (cp.audit_id, cp.audit_hash, cp.at_ms)
        if key in seen:
            continue
        seen.add(key)
        report.checkpoints += 1
        if check is not None and not check(
            cp.signature, checkpoint_message(cp.audit_id, cp.audit_hash, cp.at_ms)
        ):
            report.bad(
                cp.audit_id,
                f"checkpoint of entry {cp.audit_id} ({cp.where}): the signature does not "
                "verify (forged or made with another key)",
            )
            continue
        if cp.where != "index" and key not in index_cps:
            report.problems.append(
                f"checkpoint of entry {cp.audit_id} ({cp.where}) is missing from the index"
            )
        if cp.audit_id not in found:
            report.bad(
                cp.audit_id,
                f"audit entry {cp.audit_id} was signed in a checkpoint but is gone "
                "(entries removed)",
            )
        elif found[cp.audit_id] != cp.audit_hash:
            report.bad(
                cp.audit_id,
                f"audit entry {cp.audit_id} differs from the signed checkpoint "
                "(history rewritten)",
            )
    if head_missing:
        if report.entries or checkpoints:
            report.bad(
                last_id + 1,
                f"the audit head ({AUDIT_HEAD_NAME}) is missing: entries at the end may have "
                "been removed",
            )
    elif head is None:
        report.bad(last_id + 1, f"the audit head ({AUDIT_HEAD_NAME}) is unreadable")
    else:
        if head.signature is None:
            report.bad(head.id, "the audit head is not signed")
        elif check is not None and not check(
            head.signature, head_message(head.id, head.hash)
        ):
            report.bad(head.id, "the audit head's signature does not verify (forged)")
        if head.id > 0 and head.id not in found:
            report.bad(
                min(head.id, last_id + 1),
                f"audit entries up to {head.id} were recorded but are gone",
            )
        elif head.id > 0 and found[head.id] != head.hash:
            report.bad(head.id, f"audit entry {head.id}: differs from the recorded head")
    good = [
        c
        for c in checkpoints
        if c.audit_id in found
        and found[c.audit_id] == c.audit_hash
        and (report.first_bad is None or c.audit_id < report.first_bad)
        and (
            check is not None
            and check(c.signature, checkpoint_message(c.audit_id, c.audit_hash, c.at_ms))
        )
    ]
    report.last_good = max(good, key=lambda c: (c.audit_id, c.at_ms)) if good else None
    return report
