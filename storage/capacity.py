"""`CapacityHistory`: the record of the recordings' capacity state over time (R4).

Retention judges how long the storage will last (`retention.capacity`) and records each change
of state here, with its forecast and free space, so `nvr status` and `/api/health` can say
since when the storage has been short. Owns the `capacity` table; reached as
`SegmentStore.capacity`.

Threads: blocking, thread-safe methods; the retention task writes through
`asyncio.to_thread`, the API and the CLI read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from nvr.storage.repository import Repository
from nvr.storage.schema import CapacityRow


@dataclass(frozen=True)
class CapacityState:
    """One change of the capacity state."""

    at_ms: int
    state: str
    forecast_days: float
    free_bytes: int
    detail: str


class CapacityHistory(Repository):
    """Capacity states in the index, oldest first."""

    def record(self, state: str, forecast_days: float, free_bytes: int, detail: str) -> bool:
        """Record the capacity state if it changed; True when it did."""
        last = self.history(limit=1)
        if last and last[-1].state == state:
            return False
        with self._writing() as s:
            s.add(
                CapacityRow(
                    at_ms=self._clock(),
                    state=state,
                    forecast_days=forecast_days,
                    free_bytes=free_bytes,
                    detail=detail,
                )
            )
        return True

    def history(self, limit: int = 100) -> list[CapacityState]:
        """The last `limit` states, oldest first."""
        with Session(self._engine) as s:
            rows = list(s.scalars(select(CapacityRow).order_by(CapacityRow.id.desc()).limit(limit)))
        return [
            CapacityState(r.at_ms, r.state, r.forecast_days, r.free_bytes, r.detail)
            for r in reversed(rows)
        ]
