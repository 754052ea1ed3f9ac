"""Request and response bodies of the API (pydantic v2), i.e. the OpenAPI schema at `/docs`.
Times are UTC milliseconds since 1970 (`*_ms`); request times also accept RFC 3339.

A response that shows a stored record (an export, a lock, an audit entry) is made from the
record's frozen dataclass by `record_model`, not by repeating its fields: a field added to
the record appears in the API, and one left out says so here (`exclude`). Build one with
`Model.model_validate(record)`. Pure data; no I/O; imported by the event loop's routes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, create_model

from nvr.config.models import CAMERA_NAME, CAMERA_NAME_RULE
from nvr.ingest.status import PictureStatus
from nvr.storage.accounts import USER_NAME, Role
from nvr.storage.audit import AuditEntry
from nvr.storage.exports import Export
from nvr.storage.guard import Lock
from nvr.storage.pictures import PictureEvent
from nvr.storage.timestamps import iso

Text = Annotated[str, Field(min_length=1, max_length=2000)]
WorkId = Annotated[str, Field(min_length=1, max_length=64)]
CameraName = Annotated[str, Field(pattern=CAMERA_NAME.pattern)]
CameraGrant = Annotated[str, Field(pattern=rf"^(\*|{CAMERA_NAME_RULE})$")]
"""A camera a user may see, or `*` for all."""
TimeIn = Annotated[
    int | Annotated[str, Field(min_length=1, max_length=64)],
    Field(description="UTC ms since 1970, or RFC 3339 with a zone (2026-11-22T08:15:00Z)"),
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def record_model(
    name: str,
    record: type[Any],
    *,
    exclude: frozenset[str] = frozenset(),
    extra: dict[str, Any] | None = None,
    doc: str | None = None,
) -> type[BaseModel]:
    """A response model named `name` with the fields of the dataclass `record` (types and
    defaults as declared there), less `exclude`, plus `extra` (name: (type, default)), read
    from a record by `model_validate(record)` (`from_attributes`); `doc` is its description."""
    hints = typing.get_type_hints(record)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else ...
        fields[f.name] = (hints[f.name], default)
    unknown = exclude - set(fields) - {f.name for f in dataclasses.fields(record)}
    if unknown:
        raise TypeError(f"{record.__name__} has no field {sorted(unknown)}")
    return create_model(
        name,
        __config__=ConfigDict(from_attributes=True),
        __doc__=doc,
        **fields,
        **(extra or {}),
    )


def list_of(model: type[BaseModel]) -> Any:
    """`list[model]` for a `response_model=` of a model made by `record_model`."""
    return types.GenericAlias(list, (model,))


if TYPE_CHECKING:
    # To the type checker these are plain models; at run time they carry the records' fields.
    AuditOut: TypeAlias = BaseModel
    LockOut: TypeAlias = BaseModel
    ExportOut: TypeAlias = BaseModel
    PictureEventOut: TypeAlias = BaseModel
else:
    AuditOut = record_model("AuditOut", AuditEntry)
    LockOut = record_model(
        "LockOut",
        Lock,
        extra={
            "hold": (bool, ...),
            "active": (bool, Field(description="Not released and not expired (now).")),
        },
    )
    ExportOut = record_model(
        "ExportOut",
        Export,
        exclude=frozenset({"package"}),  # the package's path on the server is not the client's
    )
    PictureEventOut = record_model(
        "PictureEventOut",
        PictureEvent,
        exclude=frozenset({"camera", "snapshot"}),
        # whether its keyframe JPEG is still kept (it goes with the footage of its hour)
        extra={"snapshot": (bool, ...)},
        doc="A picture finding (issue 18) overlapping the range.",
    )


class LoginIn(_In):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserOut(BaseModel):
    name: str
    role: Role
    cameras: list[str]
    disabled: bool
    created_ms: int


class LoginOut(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_ms: int
    user: UserOut


class UserIn(_In):
    name: Annotated[str, Field(pattern=USER_NAME.pattern)]
    role: Role
    password: Annotated[str, Field(min_length=10, max_length=1024)]
    cameras: list[CameraGrant] = []


class UserPatch(_In):
    role: Role | None = None
    cameras: list[CameraGrant] | None = None
    disabled: bool | None = None
    password: Annotated[str, Field(min_length=10, max_length=1024)] | None = None


class PictureOut(BaseModel):
    """A camera's picture health (issue 18): is the picture clear and where it should be?"""

    state: str
    """ok | learning (the reference picture is being learned) | covered | defocused |
    repointed | frozen | no-signal"""
    since: str
    """When the state began, RFC 3339 UTC (a condition: when it was first seen)."""
    since_ms: int
    score: float | None
    """The measure that raised the condition (covered: entropy share of the reference's, or
    grey level when dark; defocused: sharpness share; repointed: correlation with the
    reference; frozen: mean difference; no-signal: contrast)."""
    detail: str
    checks: int
    """Keyframes checked since the daemon started."""

    @classmethod
    def of(cls, status: PictureStatus | None) -> PictureOut | None:
        if status is None:
            return None
        return cls(
            state=status.state,
            since=iso(status.since_ms),
            since_ms=status.since_ms,
            score=None if status.score is None else round(status.score, 4),
            detail=status.detail,
            checks=status.checks,
        )


class CameraOut(BaseModel):
    name: str
    state: str
    state_since_ms: int | None
    detail: str
    last_segment_end_ms: int | None
    bitrate_bps: float | None
    recorded_share_24h: float
    reconnects: int
    stored_bytes: int
    """Bytes of this camera's footage on disk."""
    locked_bytes: int
    """Of those, bytes under an active lock (kept whatever the window)."""
    oldest_footage_ms: int | None
    held_days: float | None
    """Days from the oldest footage kept to now (the window it is kept for: `window_days` in
    `/api/health`; how long the disk holds at the current rate: its `storage.forecast_days`)."""
    picture: PictureOut | None = None
    """Picture health; null when the camera's pictures are not checked (`[cameras.picture]
    enabled = false`, or the camera is not running)."""


class SpanOut(BaseModel):
    start_ms: int
    end_ms: int
    segments: int
    bytes: int


class GapCauseOut(BaseModel):
    cause: str
    detail: str
    outage_start_ms: int
    outage_end_ms: int | None


class GapOut(BaseModel):
    start_ms: int
    end_ms: int
    causes: list[GapCauseOut]


class TimelineOut(BaseModel):
    camera: str
    start_ms: int
    end_ms: int
    recorded_ms: int
    spans: list[SpanOut]
    gaps: list[GapOut]
    locks: list[LockOut] = []
    """Active locks overlapping the range (evidence locks, exported footage)."""
    pictures: list[PictureEventOut] = []
    """Picture findings (covered, defocused, re-pointed, frozen, no signal) overlapping the
    range, oldest first."""


class LinkIn(_In):
    start: TimeIn
    end: TimeIn


class LinkRenewIn(_In):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    """The link's URL as `POST /api/cameras/{name}/links` gave it (or just its `access`)."""


class LinkOut(BaseModel):
    url: str
    """Relative URL of the recording, playable by a `<video>` element without a header."""
    expires_ms: int


class OutageOut(BaseModel):
    cause: str
    detail: str
    start_ms: int
    end_ms: int | None
    duration_s: float | None


class CameraClockOut(BaseModel):
    source: str
    at_ms: int
    offset_s: float
    """Camera clock minus server clock (positive: the camera is ahead)."""
    limit_s: float
    warning: bool


class CameraHealthOut(BaseModel):
    name: str
    state: str
    down_for_s: float | None
    last_segment_age_s: float | None
    gap_seconds_24h: float
    outages_24h: list[OutageOut]
    window_days: int
    oldest_segment_ms: int | None
    clocks: list[CameraClockOut]
    """The newest clock reading of each method (onvif, rtcp)."""
    picture: PictureOut | None = None
    """Picture health, as in `/api/cameras` (a raised condition makes the status degraded)."""


class CapacityOut(BaseModel):
    state: str
    forecast_days: float | None
    free_bytes: int
    detail: str
    source: str


class ErrorLineOut(BaseModel):
    at_ms: int
    level: str
    logger: str
    message: str


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "critical"]
    reasons: list[str]
    at_ms: int
    cameras: list[CameraHealthOut]
    storage: CapacityOut
    retention_compliant: bool | None
    retention_detail: str
    retention_held: bool
    """Purging is held back because the server clock stepped (see `retention_clock`)."""
    retention_clock: str
    """How footage's age is judged now, or why purging is held and what to do."""
    last_errors: list[ErrorLineOut]
    clock_synchronised: bool | None
    """The kernel says the server clock is synchronised (None: its state cannot be read)."""
    clock_detail: str
    gb28181: Gb28181Out | None = None
    """The GB/T 28181 registration; null without `[gb28181]`."""


class Gb28181Out(BaseModel):
    """The recorder's registration with its GB/T 28181 platform (docs/gb28181.md)."""

    server_id: str
    server: str
    """host:port of the platform."""
    registered: bool
    last_error: str
    clock_offset_s: float | None
    """The platform's clock minus ours (from its Date header at the last registration),
    like a camera's clock offset; our clock is never set from it."""
    clock_limit_s: float
    clock_warning: bool
    streams: int


class LivenessOut(BaseModel):
    status: Literal["ok"] = "ok"


class LockIn(_In):
    camera: CameraName
    start: TimeIn
    end: TimeIn
    reason: Text
    case_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    until: TimeIn | None = None
    """Default: two years from now (R3)."""
    hold: bool = False
    """A legal hold: kept until an admin releases it."""


class LockExtendIn(_In):
    until: TimeIn


class LockReleaseIn(_In):
    reason: Text


class DeletedOut(BaseModel):
    camera: str
    start_ms: int
    end_ms: int
    segments: int
    bytes: int


class ExportIn(_In):
    camera: CameraName
    start: TimeIn
    end: TimeIn
    purpose: Text
    recipient: Text
    """Who receives the footage, and where it goes."""
    approval_document: Text
    """Reference of the approval document."""
    requester_work_id: WorkId


class ApproveIn(_In):
    approver_work_id: WorkId


class RejectIn(_In):
    approver_work_id: WorkId
    reason: Text


class CancelIn(_In):
    reason: Text


class ProblemField(BaseModel):
    loc: list[str]
    msg: str
    type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem: what went wrong, never what the client sent."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    """In English, for API clients."""
    code: str | None = None
    """A stable word for what went wrong (`not-found`, `camera-forbidden`, ...): the pages
    show their own language's message for it."""
    errors: list[ProblemField] | None = None


class DocumentOut(BaseModel):
    """An approval document as stored: the export request's `approval_document` names it by
    `sha256`; `url` hands it back."""

    sha256: str
    bytes: int
    name: str
    url: str
