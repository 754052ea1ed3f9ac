"""`ExportRegister`: the evidence export register (R5) and its two-person rule (R6).

A repository over the shared index (`storage.repository`), reached as `SegmentStore.exports`. A
request is registered as `pending`; only a second, different user may approve it (`approve`
refuses the requester, and the refusal is audited); the package is then built outside the index
(see `api.exports`) and recorded here as `ready` with the files handed over and their hashes,
or as `failed`. Rows are never deleted: the register is the record of who took which footage
where, for what, on whose authority.

The two persons must be different people: different accounts (names compared without regard
to case), and different work ids (likewise); a work id, once used in the register by one
account, is refused for any other account. Only the requester may cancel a pending request;
only a second person may reject it; once decided (approved, rejected, cancelled) a request
never changes its decision. Every transition, and every refusal, writes an audit entry.

Threads: blocking, thread-safe methods; the event loop calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nvr.storage.errors import StorageError
from nvr.storage.repository import Index, Repository
from nvr.storage.schema import ExportRow

PENDING = "pending"
BUILDING = "building"
READY = "ready"
FAILED = "failed"
REJECTED = "rejected"
CANCELLED = "cancelled"


def same_person_key(text: str) -> str:
    """How names and work ids are compared: case and surrounding space do not count."""
    return text.strip().casefold()


class ExportError(StorageError):
    """An export that does not exist."""


class ExportRefused(ExportError):
    """A transition the rules forbid (self-approval, approving twice, ...). `reason` says why."""

    def __init__(self, reason: str, *, person: bool = False, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code or ("export-refused" if person else "export-not-pending")
        """A stable word for the refusal (the API's problem `code`)."""
        self.person = person
        """True when refused because of who asked (same person, not theirs to decide)."""


@dataclass(frozen=True)
class ExportFile:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Export:
    """One row of the export register."""

    id: int
    camera: str
    start_ms: int
    end_ms: int
    purpose: str
    recipient: str
    approval_document: str
    requester: str
    requester_work_id: str
    requested_ms: int
    state: str
    approver: str | None
    approver_work_id: str | None
    approved_ms: int | None
    built_ms: int | None
    package: str | None
    manifest_sha256: str | None
    files: tuple[ExportFile, ...]
    error: str


def _export(row: ExportRow) -> Export:
    files = tuple(
        ExportFile(f["name"], int(f["bytes"]), f["sha256"]) for f in json.loads(row.files)
    )
    return Export(
        id=row.id,
        camera=row.camera,
        start_ms=row.start_ms,
        end_ms=row.end_ms,
        purpose=row.purpose,
        recipient=row.recipient,
        approval_document=row.approval_document,
        requester=row.requester,
        requester_work_id=row.requester_work_id,
        requested_ms=row.requested_ms,
        state=row.state,
        approver=row.approver,
        approver_work_id=row.approver_work_id,
        approved_ms=row.approved_ms,
        built_ms=row.built_ms,
        package=row.package,
        manifest_sha256=row.manifest_sha256,
        files=files,
        error=row.error,
    )


class ExportRegister(Repository):
    """Export requests, approvals and packages, in the index."""

    def __init__(self, index: Index) -> None:
        super().__init__(index)
        self.on_approved: Callable[[Export], object] | None = None
        """Called after an approval (the store locks the exported range, R3)."""

    def get(self, export_id: int) -> Export:
        with Session(self._engine) as s:
            row = s.get(ExportRow, export_id)
            if row is None:
                raise ExportError(f"no export {export_id}")
            return _export(row)

    def entries(
        self,
        *,
        camera: str | None = None,
        state: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Export]:
        """Register rows, newest first."""
        with Session(self._engine) as s:
            q = select(ExportRow)
            if camera is not None:
                q = q.where(ExportRow.camera == camera)
            if state is not None:
                q = q.where(ExportRow.state == state)
            rows = s.scalars(q.order_by(ExportRow.id.desc()).limit(limit).offset(offset))
            return [_export(r) for r in rows]

    def request(
        self,
        *,
        camera: str,
        start_ms: int,
        end_ms: int,
        purpose: str,
        recipient: str,
        approval_document: str,
        requester: str,
        requester_work_id: str,
    ) -> Export:
        """Register a pending request (audited `export-request`). Refused (and audited) when
        another account has already used the requester's work id."""
        owner = self._work_id_owner(requester_work_id, requester)
        if owner is not None:
            reason = f"work id {requester_work_id!r} belongs to another account ({owner})"
            self._audit.append(
                requester, "export-request", f"camera:{camera}", "refused", {"reason": reason}
            )
            raise ExportRefused(reason, person=True, code="work-id-taken")
        with self._writing() as s:
            row = ExportRow(
                camera=camera,
                start_ms=start_ms,
                end_ms=end_ms,
                purpose=purpose,
                recipient=recipient,
                approval_document=approval_document,
                requester=requester,
                requester_work_id=requester_work_id,
                requested_ms=self._clock(),
                state=PENDING,
                files="[]",
                error="",
            )
            s.add(row)
            s.flush()
            export = _export(row)
        self._audit.append(
            requester,
            "export-request",
            f"export:{export.id}",
            "ok",
            {
                "camera": camera,
                "start_ms": start_ms,
                "end_ms": end_ms,
                "purpose": purpose,
                "recipient": recipient,
                "approval_document": approval_document,
                "work_id": requester_work_id,
            },
        )
        return export

    def _refuse(
        self,
        actor: str,
        action: str,
        export_id: int,
        reason: str,
        *,
        person: bool = False,
        code: str | None = None,
    ) -> ExportRefused:
        self._audit.append(actor, action, f"export:{export_id}", "refused", {"reason": reason})
        return ExportRefused(reason, person=person, code=code)

    def _work_id_owner(self, work_id: str, account: str) -> str | None:
        """Another account that already used `work_id` in the register, if any."""
        key = same_person_key(work_id)
        mine = same_person_key(account)
        with Session(self._engine) as s:
            # The register is small (one row per export): compare in Python, where casefold
            # also covers letters beyond ASCII that SQLite's lower() leaves alone.
            rows: list[tuple[str | None, str | None]] = []
            for req, req_id, appr, appr_id in s.execute(
                select(
                    ExportRow.requester,
                    ExportRow.requester_work_id,
                    ExportRow.approver,
                    ExportRow.approver_work_id,
                )
            ):
                rows += [(req, req_id), (appr, appr_id)]
        for name, used in rows:
            if name is not None and used is not None and same_person_key(name) != mine:
                if same_person_key(used) == key:
                    return str(name)
        return None

    def approve(self, export_id: int, *, approver: str, approver_work_id: str) -> Export:
        """The second person's approval: refused (and audited) for the requester themself
        (same account, or the same work id, compared without regard to case), for a work id
        another account has used, and when the request is no longer pending. On success the
        state becomes `building` and `on_approved` runs (the range is locked, R3)."""
        current = self.get(export_id)
        if same_person_key(approver) == same_person_key(current.requester):
            raise self._refuse(
                approver,
                "export-approve",
                export_id,
                "the requester cannot approve their own request; a second person must",
                person=True,
                code="self-approval",
            )
        if same_person_key(approver_work_id) == same_person_key(current.requester_work_id):
            raise self._refuse(
                approver,
                "export-approve",
                export_id,
                f"work id {approver_work_id!r} is the requester's; a second person, with their "
                "own work id, must approve",
                person=True,
                code="self-approval",
            )
        owner = self._work_id_owner(approver_work_id, approver)
        if owner is not None:
            raise self._refuse(
                approver,
                "export-approve",
                export_id,
                f"work id {approver_work_id!r} belongs to another account ({owner})",
                person=True,
                code="work-id-taken",
            )
        if current.state != PENDING:
            raise self._refuse(
                approver, "export-approve", export_id, f"the request is {current.state}"
            )
        with self._writing() as s:
            done = s.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id, ExportRow.state == PENDING)
                .values(
                    state=BUILDING,
                    approver=approver,
                    approver_work_id=approver_work_id,
                    approved_ms=self._clock(),
                )
            )
            changed = int(getattr(done, "rowcount", 0) or 0)
        if changed != 1:
            raise self._refuse(
                approver, "export-approve", export_id, "the request is no longer pending"
            )
        self._audit.append(
            approver,
            "export-approve",
            f"export:{export_id}",
            "ok",
            {"work_id": approver_work_id, "requester": current.requester},
        )
        approved = self.get(export_id)
        if self.on_approved is not None:
            self.on_approved(approved)
        return approved

    def reject(
        self, export_id: int, *, approver: str, approver_work_id: str, reason: str
    ) -> Export:
        """A second person declines a pending request (audited `export-reject`). The
        requester cannot (they cancel instead), and a decision once made stays."""
        current = self.get(export_id)
        if same_person_key(approver) == same_person_key(current.requester):
            raise self._refuse(
                approver,
                "export-reject",
                export_id,
                "the requester cannot decide on their own request; cancel it instead",
                person=True,
            )
        return self._decide(
            export_id,
            actor=approver,
            action="export-reject",
            state=REJECTED,
            work_id=approver_work_id,
            reason=reason,
        )

    def cancel(self, export_id: int, *, requester: str, reason: str) -> Export:
        """The requester withdraws a request that is still pending (audited
        `export-cancel`); nobody else may, and a decided request cannot be cancelled."""
        current = self.get(export_id)
        if same_person_key(requester) != same_person_key(current.requester):
            raise self._refuse(
                requester,
                "export-cancel",
                export_id,
                "only the requester may cancel a request; a second person rejects it",
                person=True,
            )
        return self._decide(
            export_id,
            actor=requester,
            action="export-cancel",
            state=CANCELLED,
            work_id=None,
            reason=reason,
        )

    def _decide(
        self,
        export_id: int,
        *,
        actor: str,
        action: str,
        state: str,
        work_id: str | None,
        reason: str,
    ) -> Export:
        if not reason.strip():
            raise self._refuse(actor, action, export_id, "a reason is required")
        values: dict[str, Any] = {"state": state, "error": reason}
        if work_id is not None:
            values |= {"approver": actor, "approver_work_id": work_id}
            values["approved_ms"] = self._clock()
        with self._writing() as s:
            done = s.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id, ExportRow.state == PENDING)
                .values(**values)
            )
            changed = int(getattr(done, "rowcount", 0) or 0)
        if changed != 1:
            current = self.get(export_id)
            raise self._refuse(
                actor,
                action,
                export_id,
                f"the request is already {current.state}; a decision, once made, stays",
            )
        detail: dict[str, Any] = {"reason": reason}
        if work_id is not None:
            detail["work_id"] = work_id
        self._audit.append(actor, action, f"export:{export_id}", "ok", detail)
        return self.get(export_id)

    def mark_ready(
        self, export_id: int, *, package: str, manifest_sha256: str, files: list[ExportFile]
    ) -> Export:
        doc: list[dict[str, Any]] = [
            {"name": f.name, "bytes": f.bytes, "sha256": f.sha256} for f in files
        ]
        with self._writing() as s:
            s.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id)
                .values(
                    state=READY,
                    built_ms=self._clock(),
                    package=package,
                    manifest_sha256=manifest_sha256,
                    files=json.dumps(doc, separators=(",", ":")),
                )
            )
        self._audit.append(
            "system",
            "export-built",
            f"export:{export_id}",
            "ok",
            {"manifest_sha256": manifest_sha256, "files": doc},
        )
        return self.get(export_id)

    def mark_failed(self, export_id: int, error: str) -> Export:
        with self._writing() as s:
            s.execute(
                update(ExportRow)
                .where(ExportRow.id == export_id)
                .values(state=FAILED, built_ms=self._clock(), error=error)
            )
        self._audit.append(
            "system", "export-built", f"export:{export_id}", "failed", {"error": error}
        )
        return self.get(export_id)

    def interrupted(self) -> list[Export]:
        """Approved exports whose package was being built when the process stopped."""
        return self.entries(state=BUILDING)
