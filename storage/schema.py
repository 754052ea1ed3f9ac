"""The index schema (SQLAlchemy 2 ORM). Owned by `storage`; changed only through Alembic
migrations in `storage/migrations`. Pure declarations, no I/O."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the store, e.g. `store_id` (must match `<root>/.nvr-store`)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SegmentRow(Base):
    """One recorded, durable MP4 segment. Times are UTC milliseconds since the epoch."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    """Media duration from the stream's own timestamps."""
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    """Relative to the storage root."""
    video_codec: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """NULL (and width, height): an audio-only camera's segment."""
    audio_codec: Mapped[str | None] = mapped_column(String(32), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    frames: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    prev_chain: Mapped[str] = mapped_column(String(64))
    """The chain value of this camera's previous segment (zeros for the first)."""
    chain: Mapped[str] = mapped_column(String(64))
    """sha256(prev_chain || sha256 || camera || start_ms || end_ms), per camera."""
    recovered: Mapped[bool] = mapped_column(Boolean, default=False)
    """Salvaged at start-up from a file that was in flight when the process died."""
    discontinuity: Mapped[bool] = mapped_column(Boolean, default=False)
    """The stream's timestamps jumped right before this segment."""
    garbage: Mapped[bool] = mapped_column(Boolean, default=False)
    """Marked for deletion: the file may already be gone; start-up finishes the delete."""
    created_ms: Mapped[int] = mapped_column(BigInteger)
    elapsed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Evidence time when indexed (`storage.clock`): real time proven by the recorder's
    uptime, so a segment's proven age cannot be faked by stepping the wall clock."""

    __table_args__ = (
        Index("ix_segments_camera_start", "camera", "start_ms"),
        Index("ix_segments_camera_end", "camera", "end_ms"),
        Index("ix_segments_end", "end_ms"),
    )


class CameraWindowRow(Base):
    """The longest retention window ever promised to a camera's footage, in days. Only ever
    raised (by the recorder when it indexes a segment); read by every delete, so a camera
    dropped from the config, or a CLI run with another config, keeps its window."""

    __tablename__ = "camera_windows"
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    days: Mapped[int] = mapped_column(Integer)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class RunRow(Base):
    """One run of the recorder (the exclusive store): its boot, and its wall clock and
    uptime (`storage.clock`) when it started and when last seen, updated by its heartbeat,
    so a step of the wall clock shows against uptime, in this run or the next."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    boot_id: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    started_wall_ms: Mapped[int] = mapped_column(BigInteger)
    started_uptime_ms: Mapped[int] = mapped_column(BigInteger)
    last_wall_ms: Mapped[int] = mapped_column(BigInteger)
    last_uptime_ms: Mapped[int] = mapped_column(BigInteger)
    elapsed_start_ms: Mapped[int] = mapped_column(BigInteger)
    """Evidence time when the run started."""
    synchronised: Mapped[bool] = mapped_column(Boolean)
    """The kernel's sync state at the last heartbeat."""


class ClockHoldRow(Base):
    """A step of the wall clock seen by the recorder: purging is held back until an operator
    confirms the clock or it has been synchronised and stable for a while (`cleared_*`)."""

    __tablename__ = "clock_holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    boot_id: Mapped[str] = mapped_column(String(64))
    uptime_ms: Mapped[int] = mapped_column(BigInteger)
    step_ms: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text)
    cleared_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cleared_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class OutageRow(Base):
    """One interruption of a camera's recording: the outage ledger (R1)."""

    __tablename__ = "outages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """None while the outage is still open."""
    cause: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (Index("ix_outages_camera_start", "camera", "start_ms"),)


class EventRow(Base):
    """Point events about a camera's stream (timestamp discontinuities, salvages, ...)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    at_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (Index("ix_events_camera_at", "camera", "at_ms"),)


class PictureEventRow(Base):
    """A picture-health finding of one camera (issue 18, R8): covered, defocused, re-pointed,
    frozen or no signal, from `start_ms` (first seen) to `end_ms` (None while it lasts)."""

    __tablename__ = "picture_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    raised_ms: Mapped[int] = mapped_column(BigInteger)
    """When it had persisted long enough to be raised."""
    end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    snapshot: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """The keyframe's JPEG, relative to the storage root, beside the footage of its hour
    (None once purged with that footage, or if it could not be written)."""
    __table_args__ = (Index("ix_picture_events_camera_start", "camera", "start_ms"),)


class AuditRow(Base):
    """One entry of the append-only, hash-chained audit log (R5).

    hash = sha256(prev_hash | id | at_ms | actor | action | target | outcome | detail).
    SQLite triggers refuse UPDATE and DELETE; `AuditLog.verify` detects edits made around them.
    """

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    """ok | refused | failed"""
    detail: Mapped[str] = mapped_column(Text)
    """Canonical JSON (sorted keys, no spaces)."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    __table_args__ = (
        Index("ix_audit_at", "at_ms"),
        Index("ix_audit_actor", "actor"),
        Index("ix_audit_action", "action"),
    )


class AuditCheckpointRow(Base):
    """A signed statement that the audit log's entry `audit_id` had hash `audit_hash` at
    `at_ms` (R5): Ed25519 over `nvr-audit-checkpoint|<audit_id>|<audit_hash>|<at_ms>`
    with the export signing key. Rewriting history before a checkpoint needs that key.
    Append-only (SQLite triggers)."""

    __tablename__ = "audit_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[int] = mapped_column(Integer)
    audit_hash: Mapped[str] = mapped_column(String(64))
    at_ms: Mapped[int] = mapped_column(BigInteger)
    key_sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    """base64 of the 64-byte signature."""
    __table_args__ = (Index("ix_audit_checkpoints_audit", "audit_id"),)


class LockRow(Base):
    """Important footage locked as evidence (R3): a camera's time range kept past the window.

    `expires_ms` None means a legal hold: kept until an admin releases it explicitly.
    """

    __tablename__ = "locks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    case_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    released_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    end_requested_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """An admin asked to end this lock early (made by mistake); a second admin must approve."""
    end_requested_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    end_request_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    __table_args__ = (Index("ix_locks_camera", "camera", "start_ms"),)


class ChainGapRow(Base):
    """Segments removed from a camera's hash chain by a legitimate purge or delete.

    Verification walks each camera's remaining rows; where a row's `prev_chain` is not the
    previous row's chain, a gap starting at that chain and ending at the row's `prev_chain`
    must exist here, and must be confirmed by the audit log (action `purge` or `delete`).
    """

    __tablename__ = "chain_gaps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    after_chain: Mapped[str] = mapped_column(String(64))
    last_chain: Mapped[str] = mapped_column(String(64))
    removed: Mapped[int] = mapped_column(Integer)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (
        Index("ix_chain_gaps_after", "camera", "after_chain"),
        Index("ix_chain_gaps_last", "camera", "last_chain"),
    )


class CapacityRow(Base):
    """A change of the storage capacity state (ok / warning / critical), kept for health."""

    __tablename__ = "capacity_states"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    forecast_days: Mapped[float] = mapped_column(Float)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text)


class UserRow(Base):
    """An account of the HTTP API (R7). `password_hash` is an argon2id hash, never the secret."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    """viewer | operator | auditor | admin"""
    password_hash: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    unmasked: Mapped[bool] = mapped_column(Boolean, default=False)
    """May see behind cameras' privacy masks (R10); default: masked."""


class UserCameraRow(Base):
    """A camera a user may see; camera `*` means every camera."""

    __tablename__ = "user_cameras"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    camera: Mapped[str] = mapped_column(String(64), primary_key=True)


class TokenRow(Base):
    """A bearer token of a logged-in user, stored as the sha256 of the token (never the token)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    __table_args__ = (Index("ix_tokens_expires", "expires_ms"),)


class ExportRow(Base):
    """The export register (R5, R6): one evidence export request, its approval and package."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera: Mapped[str] = mapped_column(String(64))
    start_ms: Mapped[int] = mapped_column(BigInteger)
    end_ms: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(Text)
    recipient: Mapped[str] = mapped_column(Text)
    approval_document: Mapped[str] = mapped_column(Text)
    requester: Mapped[str] = mapped_column(String(64))
    requester_work_id: Mapped[str] = mapped_column(String(64))
    requested_ms: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    """pending | building | ready | failed"""
    approver: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approver_work_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    built_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    package: Mapped[str | None] = mapped_column(String(512), nullable=True)
    """Folder of the package, relative to the storage root."""
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    files: Mapped[str] = mapped_column(Text, default="[]")
    """JSON list of {name, bytes, sha256} handed over."""
    error: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (Index("ix_exports_camera", "camera", "requested_ms"),)


class SegmentSamplesRow(Base):
    """A segment's sample index for playback (sizes, durations, keyframes, where each run of
    samples sits in the file), zlib-compressed; made by `storage.media.sampleindex` from the
    file, kept so a one-hour MP4 can be laid out without reading thousands of `moof` boxes
    from disk. Goes with its segment row (ON DELETE CASCADE)."""

    __tablename__ = "segment_samples"
    segment_id: Mapped[int] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64))
    """The segment file's hash when the index was made (a reused id cannot match)."""
    data: Mapped[bytes] = mapped_column(LargeBinary)
