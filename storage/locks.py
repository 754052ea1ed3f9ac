"""`LockRegister`: evidence locks and legal holds (R3), how they are made, extended and ended.

A lock keeps `camera`'s footage over [start, end) until its expiry (a legal hold: until an admin
releases it); the delete door (`storage.store`) refuses to delete footage under an active lock,
reading the `locks` table inside its guarded transaction. This module owns every change to that
table and its rules: a lock covers footage that exists, its expiry is bounded
(`max_years`), it is only ever extended, a legal hold is released by an admin with a reason,
and ending a lock early needs two admins. Every change and every refusal is audited in the same
transaction. Reached as `SegmentStore.locks`; an approved export locks its range
(`lock_export`, R3).

Threads: blocking, thread-safe methods (writes go through the index's serialised write
transaction); the event loop calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, select

from nvr.storage.errors import LockError, StorageError
from nvr.storage.guard import (
    LOCK_FUTURE_MARGIN_MS,
    LOCK_YEARS,
    MAX_LOCK_YEARS,
    Lock,
    add_years,
)
from nvr.storage.repository import Index, Repository
from nvr.storage.schema import LockRow
from nvr.storage.timestamps import iso

if TYPE_CHECKING:
    from nvr.storage.exports import Export

log = logging.getLogger("nvr.storage")


def lock_of(row: Any) -> Lock:
    """A `Lock` from a `LockRow` or a Core row of its columns."""
    return Lock(
        id=row.id,
        camera=row.camera,
        start_ms=row.start_ms,
        end_ms=row.end_ms,
        created_ms=row.created_ms,
        created_by=row.created_by,
        reason=row.reason,
        case_id=row.case_id,
        expires_ms=row.expires_ms,
        released_ms=row.released_ms,
        released_by=row.released_by,
        release_reason=row.release_reason,
        end_requested_by=row.end_requested_by,
        end_requested_ms=row.end_requested_ms,
        end_request_reason=row.end_request_reason,
    )




def active_lock(now: int) -> ColumnElement[bool]:
    """Locks active at `now` (as `Lock.active`): not released, not expired."""
    return LockRow.released_ms.is_(None) & (
        LockRow.expires_ms.is_(None) | (LockRow.expires_ms > now)
    )


class LockRegister(Repository):
    """The evidence locks in the index."""

    def __init__(self, index: Index, *, max_years: int = MAX_LOCK_YEARS) -> None:
        """`max_years` bounds a lock's expiry (legal holds excepted)."""
        super().__init__(index)
        self.max_years = max_years

    def add(
        self,
        camera: str,
        start_ms: int,
        end_ms: int,
        *,
        actor: str,
        reason: str,
        case_id: str | None = None,
        until_ms: int | None = None,
        hold: bool = False,
    ) -> Lock:
        """Lock footage as evidence: kept until `until_ms` (default two years from now) or,
        with `hold`, until an admin releases it. Audited."""
        now = self._clock()
        if end_ms <= start_ms:
            raise LockError("the lock's end must be after its start")
        if not reason.strip():
            raise LockError("a lock needs a reason")
        if hold and until_ms is not None:
            raise LockError("a legal hold has no expiry; give either until or hold")
        expires = (
            None if hold else (until_ms if until_ms is not None else add_years(now, LOCK_YEARS))
        )
        if expires is not None and expires <= now:
            raise LockError("the lock's expiry must be in the future")
        problem = self._bounds(start_ms, end_ms, expires, now)
        if problem is not None:
            self._audit.append(
                actor,
                "lock",
                camera,
                "refused",
                {"start_ms": start_ms, "end_ms": end_ms, "expires_ms": expires, "why": problem},
            )
            raise LockError(problem)
        with self._writing() as s:
            row = LockRow(
                camera=camera,
                start_ms=start_ms,
                end_ms=end_ms,
                created_ms=now,
                created_by=actor,
                reason=reason,
                case_id=case_id,
                expires_ms=expires,
            )
            s.add(row)
            s.flush()
            made = lock_of(row)
            entry = self._audit.append_in(
                s,
                now,
                actor,
                "lock",
                camera,
                "ok",
                {
                    "lock": made.id,
                    "start_ms": start_ms,
                    "end_ms": end_ms,
                    "reason": reason,
                    "case_id": case_id,
                    "expires_ms": expires,
                    "hold": hold,
                },
            )
        self._audit.committed(entry)
        return made

    def max_expiry(self, now_ms: int) -> int:
        """The latest expiry a lock made or extended at `now_ms` may have."""
        return add_years(now_ms, self.max_years)

    def _bounds(self, start_ms: int, end_ms: int, expires: int | None, now: int) -> str | None:
        """Why a lock over [start_ms, end_ms) kept until `expires` may not be made, or None."""
        if end_ms > now + LOCK_FUTURE_MARGIN_MS:
            return (
                f"a lock covers footage that exists: its end ({iso(end_ms)}) may be at most "
                f"{LOCK_FUTURE_MARGIN_MS // 60_000} minutes past now ({iso(now)})"
            )
        if expires is not None and expires > self.max_expiry(now):
            return (
                f"a lock's expiry may be at most {self.max_years} years from now "
                f"({iso(self.max_expiry(now))}), asked {iso(expires)}; extend it later, "
                "or make a legal hold (released by an admin)"
            )
        return None

    def lock_export(self, export: Export) -> Lock | None:
        """Footage handed over (an approved export) is kept two years (R3): lock its range
        with the export as the case. Never undoes the approval: a failure is logged."""
        now = self._clock()
        try:
            return self.add(
                export.camera,
                export.start_ms,
                min(export.end_ms, now),
                actor=export.approver or "system",
                reason=f"exported as evidence (export {export.id}: {export.purpose})",
                case_id=f"export-{export.id}",
            )
        except (LockError, StorageError) as err:
            log.error("export %d: cannot lock its range: %s", export.id, err)
            return None

    def find(
        self,
        camera: str | None = None,
        include_inactive: bool = False,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[Lock]:
        """Active (or all) locks, of one camera or every camera, overlapping
        [start_ms, end_ms) when given."""
        now = self._clock()
        q = select(*LockRow.__table__.c)
        if camera is not None:
            q = q.where(LockRow.camera == camera)
        if start_ms is not None:
            q = q.where(LockRow.end_ms > start_ms)
        if end_ms is not None:
            q = q.where(LockRow.start_ms < end_ms)
        if not include_inactive:
            q = q.where(active_lock(now))
        with self._engine.connect() as conn:
            found = [lock_of(r) for r in conn.execute(q.order_by(LockRow.id))]
        return found if include_inactive else [lk for lk in found if lk.active(now)]

    def extend(self, lock_id: int, until_ms: int, *, actor: str) -> Lock:
        """Move a lock's expiry later; shortening is refused. Audited either way."""
        now = self._clock()
        with self._writing() as s:
            row = s.get(LockRow, lock_id)
            if row is None:
                raise LockError(f"no lock {lock_id}")
            current = lock_of(row)
            problem = None
            if not current.active(now):
                problem = f"lock {lock_id} is no longer active"
            elif current.expires_ms is None:
                problem = f"lock {lock_id} is a legal hold with no expiry"
            elif until_ms <= current.expires_ms:
                problem = (
                    f"a lock's expiry can only be extended, never shortened "
                    f"(now {current.expires_ms}, asked {until_ms})"
                )
            elif until_ms > self.max_expiry(now):
                problem = (
                    f"a lock's expiry may be at most {self.max_years} years from now "
                    f"({iso(self.max_expiry(now))}); extend it again later, or make a "
                    "legal hold"
                )
            if problem is None:
                row.expires_ms = until_ms
                s.flush()
            entry = self._audit.append_in(
                s,
                now,
                actor,
                "lock-extend",
                current.camera,
                "ok" if problem is None else "refused",
                {"lock": lock_id, "from_ms": current.expires_ms, "to_ms": until_ms, "why": problem},
            )
            updated = lock_of(row)
        self._audit.committed(entry)
        if problem is not None:
            raise LockError(problem)
        return updated

    def release_hold(self, lock_id: int, *, actor: str, reason: str) -> Lock:
        """Release a legal hold (the caller has checked the actor is an admin). Audited."""
        now = self._clock()
        if not reason.strip():
            raise LockError("releasing a legal hold needs a reason")
        with self._writing() as s:
            row = s.get(LockRow, lock_id)
            if row is None:
                raise LockError(f"no lock {lock_id}")
            if row.expires_ms is not None:
                raise LockError(f"lock {lock_id} is not a legal hold; it expires by itself")
            if row.released_ms is not None:
                raise LockError(f"lock {lock_id} was already released")
            row.released_ms = now
            row.released_by = actor
            row.release_reason = reason
            s.flush()
            released = lock_of(row)
            entry = self._audit.append_in(
                s,
                now,
                actor,
                "lock-release",
                row.camera,
                "ok",
                {"lock": lock_id, "reason": reason},
            )
        self._audit.committed(entry)
        return released

    def request_end(self, lock_id: int, *, actor: str, reason: str) -> Lock:
        """An admin (the caller checks the role) asks to end a lock made by mistake. Nothing
        ends until a second admin approves (`approve_end`). Audited, refusals too."""
        return self._end(lock_id, actor=actor, reason=reason, approve=False)

    def approve_end(self, lock_id: int, *, actor: str, reason: str) -> Lock:
        """A second admin, not the one who asked, ends the lock early. Audited."""
        return self._end(lock_id, actor=actor, reason=reason, approve=True)

    def _end(self, lock_id: int, *, actor: str, reason: str, approve: bool) -> Lock:
        now = self._clock()
        action = "lock-end-approve" if approve else "lock-end-request"
        with self._writing() as s:
            row = s.get(LockRow, lock_id)
            if row is None:
                raise LockError(f"no lock {lock_id}")
            current = lock_of(row)
            problem = None
            if not reason.strip():
                problem = "ending a lock early needs a reason"
            elif not current.active(now):
                problem = f"lock {lock_id} is no longer active"
            elif not approve and current.end_requested_by is not None:
                problem = (
                    f"{current.end_requested_by} already asked to end lock {lock_id}; "
                    "a second admin approves it"
                )
            elif approve and current.end_requested_by is None:
                problem = f"nobody asked to end lock {lock_id}; an admin must ask first"
            elif (
                approve
                and current.end_requested_by is not None
                and current.end_requested_by.strip().casefold() == actor.strip().casefold()
            ):
                problem = "the admin who asked to end a lock cannot approve it; a second admin must"
            if problem is None and not approve:
                row.end_requested_by = actor
                row.end_requested_ms = now
                row.end_request_reason = reason
            elif problem is None:
                row.released_ms = now
                row.released_by = actor
                row.release_reason = (
                    f"ended early: asked by {current.end_requested_by} "
                    f"({current.end_request_reason}), approved by {actor} ({reason})"
                )
            s.flush()
            entry = self._audit.append_in(
                s,
                now,
                actor,
                action,
                row.camera,
                "ok" if problem is None else "refused",
                {
                    "lock": lock_id,
                    "reason": reason,
                    "requested_by": current.end_requested_by,
                    "why": problem,
                },
            )
            updated = lock_of(row)
        self._audit.committed(entry)
        if problem is not None:
            raise LockError(problem)
        return updated
