"""The audit log: append-only, hash-chained entries of every audited action (R5).

Owned by `storage` because it lives in the index database. `AuditLog` is the shared index's
audit hook (`storage.repository.Index.audit`, reached as `SegmentStore.audit`): `append` writes
an entry in a transaction of its own; a repository that must audit inside its own write
transaction calls `append_in(s, ...)` and, after the commit, `committed(entry)`. The module's
functions take an open SQLAlchemy session and run on the caller's thread under the index's
write lock.

The sha256 chain alone proves nothing to someone who can write the index: they can delete
entries and recompute every later hash. So the chain is anchored by signatures (Ed25519, the
export key): a signed *head* (the newest entry's id and hash, in `<root>/.audit-head`,
rewritten after every entry) and signed *checkpoints* (every N entries and at the first entry
after an interval; kept in the index, appended to `<root>/.audit-checkpoints` and logged to
the journal). Rewriting or truncating history then needs the private key; `verify_log` names
the first entry that fails and the last checkpoint that still holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nvr.storage import signing
from nvr.storage.errors import StorageError
from nvr.storage.schema import AuditCheckpointRow, AuditRow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger("nvr.storage")

GENESIS = "0" * 64
AUDIT_HEAD_NAME = ".audit-head"
CHECKPOINTS_NAME = ".audit-checkpoints"


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


HEAD_LABEL = "nvr-audit-head"
CHECKPOINT_LABEL = "nvr-audit-checkpoint"


def head_message(id_: int, hash_: str) -> bytes:
    return f"{HEAD_LABEL}|{id_}|{hash_}".encode()


def checkpoint_message(audit_id: int, audit_hash: str, at_ms: int) -> bytes:
    return f"{CHECKPOINT_LABEL}|{audit_id}|{audit_hash}|{at_ms}".encode()


@dataclass(frozen=True)
class Head:
    """What `.audit-head` says: the newest entry, and its signature (None: unsigned)."""

    id: int
    hash: str
    signature: bytes | None


@dataclass(frozen=True)
class Checkpoint:
    """A signed (entry id, hash, time); `where` says where it was read (index, file)."""

    audit_id: int
    audit_hash: str
    at_ms: int
    signature: bytes
    where: str


@dataclass
class AuditReport:
    """The outcome of `verify_log`: problems (empty when intact), the first entry that fails
    (None when none does), and the last checkpoint that still holds."""

    entries: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None
    last_good: Checkpoint | None = None

    def bad(self, entry_id: int, problem: str) -> None:
        self.problems.append(problem)
        if self.first_bad is None or entry_id < self.first_bad:
            self.first_bad = entry_id


def verify_log(
    s: Session,
    *,
    head: Head | None,
    head_missing: bool,
    checkpoints: list[Checkpoint],
    check: Callable[[bytes, bytes], bool] | None,
) -> AuditReport:
    """Walk the chain, check the signed head and every checkpoint against it.

    `check(signature, message)` verifies with the recorder's public key; None when no key
    is available (then signatures are reported as unchecked, which is a problem)."""
    report = AuditReport()
    wanted = {c.audit_id for c in checkpoints}
    if head is not None:
        wanted.add(head.id)
    found: dict[int, str] = {}
    prev_hash = GENESIS
    expected_id = 1
    last_id = 0
    for row in s.scalars(select(AuditRow).order_by(AuditRow.id)).yield_per(5000):
        report.entries += 1
        if row.id != expected_id:
            report.bad(expected_id, f"audit entries {expected_id}..{row.id - 1} are missing")
        if row.prev_hash != prev_hash:
            report.bad(
                row.id, f"audit entry {row.id}: chain broken (previous entry removed or edited)"
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
            report.bad(row.id, f"audit entry {row.id}: content does not match its hash (edited)")
        if row.id in wanted:
            found[row.id] = row.hash
        prev_hash = row.hash
        expected_id = row.id + 1
        last_id = row.id
    if check is None and (checkpoints or head is not None):
        report.problems.append(
            "no public key to check the audit signatures with (give the recorder's key)"
        )
    # Checkpoints, oldest first: a valid one whose entry still has its hash holds.
    seen: set[tuple[int, str, int]] = set()
    index_cps = {(c.audit_id, c.audit_hash, c.at_ms) for c in checkpoints if c.where == "index"}
    for cp in sorted(checkpoints, key=lambda c: (c.audit_id, c.at_ms)):
        key = (cp.audit_id, cp.audit_hash, cp.at_ms)
        if key in seen:
            continue
        seen.add(key)
        report.checkpoints += 1
        if check is not None and not check(
            cp.signature, checkpoint_message(cp.audit_id, cp.audit_hash, cp.at_ms)
        ):
            report.bad(
                cp.audit_id,
                f"checkpoint of entry {cp.audit_id} ({cp.where}): the signature does not "
                "verify (forged or made with another key)",
            )
            continue
        if cp.where != "index" and key not in index_cps:
            report.problems.append(
                f"checkpoint of entry {cp.audit_id} ({cp.where}) is missing from the index"
            )
        if cp.audit_id not in found:
            report.bad(
                cp.audit_id,
                f"audit entry {cp.audit_id} was signed in a checkpoint but is gone "
                "(entries removed)",
            )
        elif found[cp.audit_id] != cp.audit_hash:
            report.bad(
                cp.audit_id,
                f"audit entry {cp.audit_id} differs from the signed checkpoint "
                "(history rewritten)",
            )
    if head_missing:
        if report.entries or checkpoints:
            report.bad(
                last_id + 1,
                f"the audit head ({AUDIT_HEAD_NAME}) is missing: entries at the end may have "
                "been removed",
            )
    elif head is None:
        report.bad(last_id + 1, f"the audit head ({AUDIT_HEAD_NAME}) is unreadable")
    else:
        if head.signature is None:
            report.bad(head.id, "the audit head is not signed")
        elif check is not None and not check(
            head.signature, head_message(head.id, head.hash)
        ):
            report.bad(head.id, "the audit head's signature does not verify (forged)")
        if head.id > 0 and head.id not in found:
            report.bad(
                min(head.id, last_id + 1),
                f"audit entries up to {head.id} were recorded but are gone",
            )
        elif head.id > 0 and found[head.id] != head.hash:
            report.bad(head.id, f"audit entry {head.id}: differs from the recorded head")
    good = [
        c
        for c in checkpoints
        if c.audit_id in found
        and found[c.audit_id] == c.audit_hash
        and (report.first_bad is None or c.audit_id < report.first_bad)
        and (
            check is not None
            and check(c.signature, checkpoint_message(c.audit_id, c.audit_hash, c.at_ms))
        )
    ]
    report.last_good = max(good, key=lambda c: (c.audit_id, c.at_ms)) if good else None
    return report


Writing = Callable[[], AbstractContextManager[Session]]


class AuditLog:
    """The audit log of one index, its signed head and its checkpoints.

    Threads: blocking and thread-safe (writes go through the index's serialised write
    transaction); the event loop calls the readers through `asyncio.to_thread`."""

    def __init__(
        self,
        engine: Engine,
        writing: Writing,
        clock: Callable[[], int],
        *,
        root: Path,
        signing_key: Path,
        checkpoint_entries: int,
        checkpoint_ms: int,
    ) -> None:
        """`root` holds the head and the checkpoint file; `signing_key` (the export key)
        signs the head and a checkpoint every `checkpoint_entries` entries or
        `checkpoint_ms`."""
        self._engine = engine
        self._writing = writing
        self._clock = clock
        self._root = root
        self._key_path = signing_key
        self._signer: Ed25519PrivateKey | None = None
        self._signer_failed = False
        self._signer_lock = threading.Lock()
        self._checkpoint_entries = checkpoint_entries
        self._checkpoint_ms = checkpoint_ms

    def append(
        self,
        actor: str,
        action: str,
        target: str = "",
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        at_ms: int | None = None,
    ) -> AuditEntry:
        """Append an entry in a transaction of its own (R5). Never pass secrets in `detail`."""
        when = self._clock() if at_ms is None else at_ms
        for attempt in range(5):
            try:
                with self._writing() as s:
                    entry = append(s, when, actor, action, target, outcome, detail or {})
                break
            except IntegrityError:
                # Another process (the CLI beside the daemon) appended the same id first.
                if attempt == 4:
                    raise
                # An Event's wait, not time.sleep, which fails under libfaketime (EINVAL).
                threading.Event().wait(0.05 * (attempt + 1))
        self.committed(entry)
        return entry

    def append_in(
        self,
        s: Session,
        at_ms: int,
        actor: str,
        action: str,
        target: str,
        outcome: str,
        detail: dict[str, Any],
    ) -> AuditEntry:
        """Append an entry inside the caller's write transaction `s`; call `committed` with
        it once that transaction has committed."""
        return append(s, at_ms, actor, action, target, outcome, detail)

    def _signing_key(self) -> Ed25519PrivateKey | None:
        """The key signing audit heads and checkpoints (the export key), created if missing
        (owned like the storage root, so a command run as root never leaves a key the
        daemon's user cannot read). None when unusable (logged once): entries are still
        written, and `audit-verify` reports them unsigned."""
        with self._signer_lock:
            if self._signer is None and not self._signer_failed:
                try:
                    self._signer = signing.load_or_create_key(self._key_path, owner=self._root)
                except signing.SigningKeyError as err:
                    self._signer_failed = True
                    log.error("audit entries are not signed: %s", err)
            return self._signer

    def committed(self, entry: AuditEntry) -> None:
        """After the transaction that appended `entry` committed: keep the newest (id, hash)
        outside the database, signed, so truncation and a rewritten tail are detectable;
        add a signed checkpoint when one is due."""
        key = self._signing_key()
        sig = "-"
        if key is not None:
            sig = base64.b64encode(key.sign(head_message(entry.id, entry.hash))).decode("ascii")
        path = self._root / AUDIT_HEAD_NAME
        tmp = path.with_name(f"{AUDIT_HEAD_NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{entry.id} {entry.hash} {sig}\n", encoding="ascii")
            os.replace(tmp, path)
        except OSError as err:
            log.error("cannot record the audit head in %s: %s", path, err.strerror)
        if key is not None:
            self._checkpoint_if_due(key, entry, entry.at_ms)

    def checkpoint(self) -> bool:
        """Sign a checkpoint over the newest audit entry if the last checkpoint is older than
        the checkpoint interval and does not cover it yet. The daemon calls this on a timer,
        so the hourly checkpoint does not wait for the next entry to arrive. Returns whether a
        checkpoint was written. Runs on the caller's thread (blocking I/O)."""
        key = self._signing_key()
        if key is None:
            return False
        with Session(self._engine) as s:
            row = s.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).first()
            newest = None if row is None else to_entry(row)
        if newest is None:
            return False
        return self._checkpoint_if_due(key, newest, self._clock())

    def _checkpoint_if_due(self, key: Ed25519PrivateKey, entry: AuditEntry, now_ms: int) -> bool:
        """Write a checkpoint over `entry` at `now_ms` when `checkpoint_entries` entries or
        `checkpoint_ms` have passed since the last one (and it does not cover `entry` yet)."""
        with Session(self._engine) as s:
            last = s.execute(
                select(AuditCheckpointRow.audit_id, AuditCheckpointRow.at_ms)
                .order_by(AuditCheckpointRow.id.desc())
                .limit(1)
            ).first()
        if last is not None and (
            entry.id - last[0] < self._checkpoint_entries
            and now_ms - last[1] < self._checkpoint_ms
        ):
            return False
        if last is not None and last[0] >= entry.id:
            return False
        at = now_ms
        sig = key.sign(checkpoint_message(entry.id, entry.hash, at))
        text = base64.b64encode(sig).decode("ascii")
        fp = signing.fingerprint(key)
        try:
            with self._writing() as s:
                s.add(
                    AuditCheckpointRow(
                        audit_id=entry.id,
                        audit_hash=entry.hash,
                        at_ms=at,
                        key_sha256=fp,
                        signature=text,
                    )
                )
        except StorageError as err:
            log.error("cannot store an audit checkpoint: %s", err)
        line = f"{entry.id} {entry.hash} {at} {fp} {text}"
        # Outside the index too: the journal, and an append-only file beside the footage.
        log.info("audit checkpoint: %s", line)
        try:
            fd = os.open(
                self._root / CHECKPOINTS_NAME,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                0o640,
            )
            try:
                os.write(fd, (line + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            log.error("cannot append the audit checkpoint to a file: %s", err.strerror)
        return True

    def entries(
        self,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """Audit entries, oldest first, filtered."""
        with Session(self._engine) as s:
            q = select(AuditRow)
            if since_ms is not None:
                q = q.where(AuditRow.at_ms >= since_ms)
            if until_ms is not None:
                q = q.where(AuditRow.at_ms < until_ms)
            if actor is not None:
                q = q.where(AuditRow.actor == actor)
            if action is not None:
                q = q.where(AuditRow.action == action)
            if target is not None:
                q = q.where(AuditRow.target == target)
            if outcome is not None:
                q = q.where(AuditRow.outcome == outcome)
            rows = s.scalars(q.order_by(AuditRow.id).limit(limit).offset(offset))
            return [to_entry(r) for r in rows]

    def verify(self, public_key_pem: bytes | None = None) -> list[str]:
        """Problems found in the audit log (empty when intact); see `report`."""
        return self.report(public_key_pem).problems

    def report(self, public_key_pem: bytes | None = None) -> AuditReport:
        """Walk the audit chain and check the signed head and checkpoints (index and the
        file outside it) with `public_key_pem`, or else the public half of the signing key."""
        check = None
        try:
            pub = (
                signing.load_public(public_key_pem, "the given key")
                if public_key_pem is not None
                else signing.load_key(self._key_path).public_key()
            )

            def check(signature: bytes, message: bytes) -> bool:
                return signing.signature_ok(pub, signature, message)

        except signing.SigningKeyError as err:
            log.warning("audit signatures cannot be checked: %s", err)
        head: Head | None = None
        head_missing = False
        try:
            fields = (self._root / AUDIT_HEAD_NAME).read_text(encoding="ascii").split()
            sig = base64.b64decode(fields[2]) if len(fields) > 2 and fields[2] != "-" else None
            head = Head(int(fields[0]), fields[1], sig)
        except FileNotFoundError:
            head_missing = True
        except (OSError, ValueError, IndexError, binascii.Error):
            head = None
        checkpoints: list[Checkpoint] = []
        with Session(self._engine) as s:
            for row in s.scalars(select(AuditCheckpointRow).order_by(AuditCheckpointRow.id)):
                checkpoints.append(
                    Checkpoint(
                        row.audit_id, row.audit_hash, row.at_ms, _b64(row.signature), "index"
                    )
                )
            try:
                lines = (self._root / CHECKPOINTS_NAME).read_text("ascii").splitlines()
            except FileNotFoundError:
                lines = []
            for line in lines:
                parts = line.split()
                if len(parts) != 5 or not parts[0].isdigit() or not parts[2].isdigit():
                    continue
                checkpoints.append(
                    Checkpoint(int(parts[0]), parts[1], int(parts[2]), _b64(parts[4]), "file")
                )
            return verify_log(
                s,
                head=head,
                head_missing=head_missing,
                checkpoints=checkpoints,
                check=check,
            )


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return b""
