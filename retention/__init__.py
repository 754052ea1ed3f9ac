"""Retention: what may go and when (windows, locks, purge), and whether the disk can hold the
window (capacity forecast). Retention decides; `storage.SegmentStore` acts and itself refuses
anything inside a window or locked, so no caller can get it wrong."""

from retention.capacity import Forecast, forecast
from retention.errors import RetentionViolation
from retention.policy import SegmentSpan, plan_purge
from retention.service import RetentionService

__all__ = [
    "Forecast",
    "RetentionService",
    "RetentionViolation",
    "SegmentSpan",
    "forecast",
    "plan_purge",
]
