"""Retention: what may go and when (windows, locks, purge), and whether the disk can hold the
window (capacity forecast). Retention decides; `storage.SegmentStore` acts and itself refuses
anything inside a window or locked, so no caller can get it wrong.

Imports go down: `storage` (and `config`'s values); `nvr` and `api` import `retention`."""

from nvr.retention.capacity import Forecast, forecast
from nvr.retention.errors import RetentionViolation
from nvr.retention.policy import SegmentSpan, plan_purge
from nvr.retention.service import RetentionService

__all__ = [
    "Forecast",
    "RetentionService",
    "RetentionViolation",
    "SegmentSpan",
    "forecast",
    "plan_purge",
]
