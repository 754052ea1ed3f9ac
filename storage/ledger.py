"""`OutageLedger` and `StreamEvents`: why footage is missing, and what a stream did.

The outage ledger (R2) has one row per gap in a camera's recording: when it began, when it
ended (None while open) and why (the cause a recorder names, refined while the gap lasts).
Stream events are the notes a recorder keeps about its stream (reconnects, quirks worked
around, clock drift). Both are written by recorder threads and read by the API, `nvr status`
and the benches; neither ever touches footage, so they live beside the store, not in it.
Reached as `SegmentStore.ledger` and `SegmentStore.events`.

Threads: blocking, thread-safe methods (writes go through the index's serialised write
transaction); recorder threads write, the event loop reads through `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nvr.storage.repository import Repository
from nvr.storage.schema import EventRow, OutageRow


@dataclass(frozen=True)
class Outage:
    """One row of the outage ledger."""

    id: int
    camera: str
    start_ms: int
    end_ms: int | None
    cause: str
    detail: str

    @property
    def duration_ms(self) -> int | None:
        return None if self.end_ms is None else self.end_ms - self.start_ms


@dataclass(frozen=True)
class StreamEvent:
    """One note about a camera's stream."""

    id: int
    camera: str
    at_ms: int
    kind: str
    detail: str
    value: float | None


def _outage(row: OutageRow) -> Outage:
    return Outage(row.id, row.camera, row.start_ms, row.end_ms, row.cause, row.detail)


class OutageLedger(Repository):
    """The outage ledger in the index."""

    def open(self, camera: str, start_ms: int, cause: str, detail: str = "") -> Outage:
        """A gap in `camera`'s footage began at `start_ms`."""
        return self._insert(camera, start_ms, None, cause, detail)

    def add(self, camera: str, start_ms: int, end_ms: int, cause: str, detail: str = "") -> Outage:
        """A gap that is already over (a clock step's span), in one write: a crash can never
        leave it open, to be taken for the outage of the next start."""
        return self._insert(camera, start_ms, end_ms, cause, detail)

    def _insert(
        self, camera: str, start_ms: int, end_ms: int | None, cause: str, detail: str
    ) -> Outage:
        with self._writing() as s:
            row = OutageRow(
                camera=camera, start_ms=start_ms, end_ms=end_ms, cause=cause, detail=detail
            )
            s.add(row)
            s.flush()
            return _outage(row)

    def update(self, outage_id: int, cause: str, detail: str) -> None:
        """Refine the cause of a still-open outage (e.g. stalled -> connect failed)."""
        with self._writing() as s:
            s.execute(
                update(OutageRow)
                .where(OutageRow.id == outage_id, OutageRow.end_ms.is_(None))
                .values(cause=cause, detail=detail)
            )

    def close(self, outage_id: int, end_ms: int) -> None:
        """The gap ended (footage again) at `end_ms`; a closed outage stays closed."""
        with self._writing() as s:
            s.execute(
                update(OutageRow)
                .where(OutageRow.id == outage_id, OutageRow.end_ms.is_(None))
                .values(end_ms=end_ms)
            )

    def reopen(self, outage_id: int, cause: str, detail: str) -> None:
        """An outage was closed for footage that then came to nothing (its segment failed
        before a byte was kept): the gap goes on, under the cause of that failure."""
        with self._writing() as s:
            s.execute(
                update(OutageRow)
                .where(OutageRow.id == outage_id)
                .values(end_ms=None, cause=cause, detail=detail)
            )

    def set_end(self, outage_id: int, end_ms: int) -> None:
        """Correct the end of a just-closed outage to the start of the footage that ended it."""
        with self._writing() as s:
            s.execute(update(OutageRow).where(OutageRow.id == outage_id).values(end_ms=end_ms))

    def open_outages(self, camera: str) -> list[Outage]:
        """`camera`'s outages that have not ended, oldest first."""
        with Session(self._engine) as s:
            rows = s.scalars(
                select(OutageRow)
                .where(OutageRow.camera == camera, OutageRow.end_ms.is_(None))
                .order_by(OutageRow.start_ms)
            )
            return [_outage(r) for r in rows]

    def outages(self, camera: str | None = None, since_ms: int = 0) -> list[Outage]:
        """Outages that were open at or after `since_ms` (open ones included)."""
        with Session(self._engine) as s:
            q = select(OutageRow).where(
                (OutageRow.end_ms.is_(None)) | (OutageRow.end_ms >= since_ms)
            )
            if camera is not None:
                q = q.where(OutageRow.camera == camera)
            return [_outage(r) for r in s.scalars(q.order_by(OutageRow.start_ms))]

    def cameras(self) -> set[str]:
        """Every camera with a row in the ledger."""
        with Session(self._engine) as s:
            return set(s.scalars(select(OutageRow.camera).distinct()))


class StreamEvents(Repository):
    """The stream events in the index."""

    def add(
        self, camera: str, at_ms: int, kind: str, detail: str = "", value: float | None = None
    ) -> None:
        with self._writing() as s:
            s.add(EventRow(camera=camera, at_ms=at_ms, kind=kind, detail=detail, value=value))

    def since(self, camera: str | None = None, since_ms: int = 0) -> list[StreamEvent]:
        """Events at or after `since_ms` (of one camera or all), oldest first."""
        with Session(self._engine) as s:
            q = select(EventRow).where(EventRow.at_ms >= since_ms)
            if camera is not None:
                q = q.where(EventRow.camera == camera)
            return [
                StreamEvent(r.id, r.camera, r.at_ms, r.kind, r.detail, r.value)
                for r in s.scalars(q.order_by(EventRow.at_ms))
            ]

    def latest(self, camera: str, kind: str, limit: int = 64) -> list[StreamEvent]:
        """The camera's newest `limit` events of `kind`, newest first."""
        with Session(self._engine) as s:
            q = (
                select(EventRow)
                .where(EventRow.camera == camera, EventRow.kind == kind)
                .order_by(EventRow.at_ms.desc(), EventRow.id.desc())
                .limit(limit)
            )
            return [
                StreamEvent(r.id, r.camera, r.at_ms, r.kind, r.detail, r.value)
                for r in s.scalars(q)
            ]
