"""The audit log: append-only, hash-chained entries of every audited action (R5).

Owned by `storage` because it lives in the index database; callers go through
`SegmentStore.audit()` / `audit_entries()` / `verify_audit()`. Functions here take an open
SQLAlchemy session and run on the caller's thread under the store's write lock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.schema import AuditRow

GENESIS = "0" * 64


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


def verify(s: Session, head: tuple[int, str] | None = None) -> list[str]:
    """Walk the chain; each problem (edited, removed or inserted entry) is one line.

    `head` is the (id, hash) last written outside the database: removing entries from the
    end of the chain cannot hide from it."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    prev_hash = GENESIS
    expected_id = 1
    for row in s.scalars(select(AuditRow).order_by(AuditRow.id)).yield_per(5000):
        if row.id != expected_id:
            problems.append(f"audit entries {expected_id}..{row.id - 1} are missing")
        if row.prev_hash != prev_hash:
            problems.append(
                f"audit entry {row.id}: chain broken (previous entry removed or edited)"
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
            problems.append(f"audit entry {row.id}: content does not match its hash (edited)")
        prev_hash = row.hash
        expected_id = row.id + 1
        if head is not None and row.id == head[0]:
            seen[row.id] = row.hash
    if head is not None and head[0] > 0:
        if head[0] not in seen:
            problems.append(f"audit entries up to {head[0]} were recorded but are gone")
        elif seen[head[0]] != head[1]:
            problems.append(f"audit entry {head[0]}: differs from the recorded head")
    return problems
