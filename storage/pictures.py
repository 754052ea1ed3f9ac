"""`PictureEvents`: each camera's picture-health findings (issue 18, R8) in the index.

One row per finding: kind (covered | defocused | repointed | frozen | no-signal), when it was
first seen, when it was raised, when it ended (None while it lasts), its score and detail,
and its keyframe snapshot. The snapshot JPEG is a file the store writes beside the footage of
its hour (`SegmentStore.save_snapshot`) and deletes with that footage; its row then keeps the
finding with `snapshot` None. Reached as `SegmentStore.pictures`.

Threads: blocking, thread-safe methods (writes go through the index's serialised write
transaction); the `picture-check` thread writes, the event loop reads through
`asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from nvr.storage.repository import Repository
from nvr.storage.schema import PictureEventRow


@dataclass(frozen=True)
class PictureEvent:
    id: int
    camera: str
    kind: str
    start_ms: int
    raised_ms: int
    end_ms: int | None
    score: float | None
    detail: str
    snapshot: str | None
    """Relative to the storage root."""


def _event(r: PictureEventRow) -> PictureEvent:
    return PictureEvent(
        r.id, r.camera, r.kind, r.start_ms, r.raised_ms, r.end_ms, r.score, r.detail, r.snapshot
    )


class PictureEvents(Repository):
    """The picture findings in the index."""

    def open(
        self,
        camera: str,
        kind: str,
        start_ms: int,
        raised_ms: int,
        score: float | None,
        detail: str,
        snapshot: str | None,
    ) -> PictureEvent:
        with self._writing() as s:
            row = PictureEventRow(
                camera=camera,
                kind=kind,
                start_ms=start_ms,
                raised_ms=raised_ms,
                end_ms=None,
                score=score,
                detail=detail[:2000],
                snapshot=snapshot,
            )
            s.add(row)
            s.flush()
            return _event(row)

    def close(self, event_id: int, end_ms: int) -> None:
        """The finding ended at `end_ms`; an ended finding stays ended."""
        with self._writing() as s:
            s.execute(
                update(PictureEventRow)
                .where(PictureEventRow.id == event_id, PictureEventRow.end_ms.is_(None))
                .values(end_ms=end_ms)
            )

    def close_open(self, camera: str, end_ms: int, why: str) -> int:
        """End the camera's findings left open (by a daemon that stopped); returns how many."""
        with self._writing() as s:
            rows = list(
                s.scalars(
                    select(PictureEventRow).where(
                        PictureEventRow.camera == camera, PictureEventRow.end_ms.is_(None)
                    )
                )
            )
            for row in rows:
                row.end_ms = max(row.raised_ms, end_ms)
                row.detail = f"{row.detail}; {why}"[:2000]
            return len(rows)

    def find(
        self, camera: str | None = None, since_ms: int = 0, until_ms: int | None = None
    ) -> list[PictureEvent]:
        """Findings that lasted into [since_ms, until_ms) (open ones included), oldest first."""
        with Session(self._engine) as s:
            q = select(PictureEventRow).where(
                PictureEventRow.end_ms.is_(None) | (PictureEventRow.end_ms >= since_ms)
            )
            if until_ms is not None:
                q = q.where(PictureEventRow.start_ms < until_ms)
            if camera is not None:
                q = q.where(PictureEventRow.camera == camera)
            rows = s.scalars(q.order_by(PictureEventRow.start_ms, PictureEventRow.id))
            return [_event(r) for r in rows]

    def get(self, event_id: int) -> PictureEvent | None:
        with Session(self._engine) as s:
            row = s.get(PictureEventRow, event_id)
            return None if row is None else _event(row)

    def forget_snapshots(self, paths: list[str]) -> None:
        """Their files were deleted with their footage: the findings stay, without them."""
        if not paths:
            return
        with self._writing() as s:
            for i in range(0, len(paths), 500):
                s.execute(
                    update(PictureEventRow)
                    .where(PictureEventRow.snapshot.in_(paths[i : i + 500]))
                    .values(snapshot=None)
                )
