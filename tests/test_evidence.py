"""Evidence that survives tampering (issue 14): bounded locks, exported footage locked, signed
audit checkpoints, a two-person rule between truly different people, and a package a recipient
can check with standard tools only. Real stores in `tmp_path` under a simulated clock; the
package and playback tests use the session's recorded footage (see `tests/test_api.py`)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storage import LockError, SegmentStore
from storage.accounts import AccountError
from storage.audit import entry_hash
from storage.exports import ExportRefused
from storage.guard import DAY_MS, add_years, protection

T0 = 1_790_000_000_000  # 2026-09-21
PASSWORD = "correct horse battery staple"
NVR = [sys.executable, "-m", "nvr.cli"]


class FakeClock:
    """A simulated UTC clock in ms, moved by the test."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def open_store(root: Path, clock: FakeClock) -> SegmentStore:
    return SegmentStore(root, f"sqlite:///{root / 'index.db'}", clock=clock)


def request(store: SegmentStore, requester: str, work_id: str) -> int:
    return store.exports.request(
        camera="cam",
        start_ms=T0 - 60_000,
        end_ms=T0,
        purpose="theft at the gate",
        recipient="Yuzhong police, officer Li",
        approval_document="YZ-2026-07",
        requester=requester,
        requester_work_id=work_id,
    ).id


# --- item 4: two different people ------------------------------------------------------------


def test_two_person_rule_needs_different_accounts_and_work_ids(tmp_path: Path) -> None:
    store = open_store(tmp_path, FakeClock(T0))
    for name in ("olga", "oscar", "otto"):
        store.accounts.add_user(name, "operator", PASSWORD, cameras=["*"], actor="test")
    # One person cannot hold two accounts whose names differ only in case.
    with pytest.raises(AccountError, match="already exists"):
        store.accounts.add_user("Olga", "operator", PASSWORD, cameras=["*"], actor="test")
    first = request(store, "olga", "OP-1001")
    # The same work id, whatever its case or spacing, is the same person.
    with pytest.raises(ExportRefused, match="requester's") as refused:
        store.exports.approve(first, approver="oscar", approver_work_id=" op-1001 ")
    assert refused.value.person
    approved = store.exports.approve(first, approver="oscar", approver_work_id="OP-2002")
    assert approved.state == "building" and approved.approver == "oscar"
    # A work id belongs to the account that used it first: otto cannot approve as oscar's id,
    # nor request with olga's.
    second = request(store, "olga", "OP-1001")
    with pytest.raises(ExportRefused, match="belongs to another account"):
        store.exports.approve(second, approver="otto", approver_work_id="op-2002")
    with pytest.raises(ExportRefused, match="belongs to another account"):
        request(store, "otto", "Op-1001")
    # The requester cannot decide on their own request (rejecting is the second person's).
    with pytest.raises(ExportRefused, match="cancel it instead") as refused:
        store.exports.reject(second, approver="olga", approver_work_id="OP-1001", reason="oops")
    assert refused.value.person
    # Nobody but the requester cancels; the requester cancels while pending only.
    with pytest.raises(ExportRefused, match="only the requester"):
        store.exports.cancel(second, requester="otto", reason="not mine")
    cancelled = store.exports.cancel(second, requester="olga", reason="wrong camera")
    assert cancelled.state == "cancelled"
    with pytest.raises(ExportRefused, match="already cancelled"):
        store.exports.reject(second, approver="otto", approver_work_id="OP-3003", reason="late")
    with pytest.raises(ExportRefused, match="already building"):
        store.exports.cancel(first, requester="olga", reason="after the approval")
    third = request(store, "otto", "OP-3003")
    rejected = store.exports.reject(
        third, approver="oscar", approver_work_id="OP-2002", reason="no"
    )
    assert rejected.state == "rejected" and rejected.approver == "oscar"
    with pytest.raises(ExportRefused, match="already rejected"):
        store.exports.cancel(third, requester="otto", reason="undo the rejection")
    with pytest.raises(ExportRefused, match="is rejected"):
        store.exports.approve(third, approver="olga", approver_work_id="OP-1001")
    # Every state change and every refusal is in the audit log.
    log = [(e.actor, e.action, e.outcome) for e in store.audit_entries() if "export" in e.action]
    assert ("olga", "export-cancel", "ok") in log
    assert ("otto", "export-cancel", "refused") in log
    assert ("olga", "export-reject", "refused") in log
    assert ("oscar", "export-reject", "ok") in log
    assert ("otto", "export-request", "refused") in log
    assert log.count(("oscar", "export-approve", "refused")) == 1
    store.close()


# --- item 1: bounded locks, ended early only by two admins --------------------------------------


def test_locks_are_bounded_and_end_early_only_with_two_admins(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = open_store(tmp_path, clock)
    year_2100 = 4_102_444_800_000
    # The review's lock nobody could undo: footage of the future, kept to 2100.
    with pytest.raises(LockError, match="footage that exists"):
        store.lock("cam", 946_684_800_000, year_2100, actor="olga", reason="x", until_ms=year_2100)
    with pytest.raises(LockError, match="at most 10 years"):
        store.lock("cam", T0 - DAY_MS, T0, actor="olga", reason="x", until_ms=year_2100)
    lock = store.lock(
        "cam", T0 - DAY_MS, T0, actor="olga", reason="x", until_ms=add_years(T0, 10)
    )
    with pytest.raises(LockError, match="at most 10 years"):
        store.extend_lock(lock.id, add_years(T0, 10) + DAY_MS, actor="olga")
    clock.now += 2 * DAY_MS  # later on, it may be extended again, up to ten years from then
    assert store.extend_lock(lock.id, add_years(T0, 10) + DAY_MS, actor="olga").active(T0)
    # Ended early: one admin asks with a reason, a second admin approves.
    with pytest.raises(LockError, match="nobody asked"):
        store.approve_lock_end(lock.id, actor="ada", reason="typo")
    with pytest.raises(LockError, match="needs a reason"):
        store.request_lock_end(lock.id, actor="root", reason=" ")
    asked = store.request_lock_end(lock.id, actor="root", reason="wrong camera")
    assert asked.end_requested_by == "root" and asked.active(clock.now)
    with pytest.raises(LockError, match="already asked"):
        store.request_lock_end(lock.id, actor="ada", reason="again")
    with pytest.raises(LockError, match="second admin"):
        store.approve_lock_end(lock.id, actor="ROOT", reason="me again")
    ended = store.approve_lock_end(lock.id, actor="ada", reason="confirmed with the operator")
    assert not ended.active(clock.now) and ended.released_by == "ada"
    assert ended.release_reason is not None and "wrong camera" in ended.release_reason
    log = [(e.actor, e.action, e.outcome) for e in store.audit_entries()]
    assert log[:2] == [("olga", "lock", "refused"), ("olga", "lock", "refused")]
    assert ("root", "lock-end-request", "ok") in log
    assert ("ROOT", "lock-end-approve", "refused") in log
    assert ("ada", "lock-end-approve", "ok") in log
    assert ("olga", "lock-extend", "refused") in log
    store.close()


def test_approving_an_export_locks_its_range_for_two_years(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = open_store(tmp_path, clock)
    eid = request(store, "olga", "OP-1")
    assert store.locks() == []
    store.exports.approve(eid, approver="oscar", approver_work_id="OP-2")
    (lock,) = store.locks()
    assert (lock.camera, lock.start_ms, lock.end_ms) == ("cam", T0 - 60_000, T0)
    assert lock.case_id == f"export-{eid}" and f"export {eid}" in lock.reason
    assert lock.expires_ms == add_years(T0, 2) and lock.created_by == "oscar"
    # A year on, past any window, the exported footage is still protected by the lock.
    later = add_years(T0, 1)
    why = protection("cam", T0 - 30_000, T0, now_ms=later, window_days=30, locks=store.locks())
    assert why is not None and f"export-{eid}" in why
    store.close()


# --- item 3: the audit log anchored by signed checkpoints ---------------------------------------


def audit_verify(root: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "nvr.toml"
    config.write_text(f'[storage]\nroot = "{root}"\n')
    return subprocess.run(
        [*NVR, "audit-verify", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def busy_store(root: Path) -> SegmentStore:
    """A store with 23 audit entries and a checkpoint every 5."""
    store = SegmentStore(
        root, f"sqlite:///{root / 'index.db'}", clock=FakeClock(T0), checkpoint_entries=5
    )
    for n in range(23):
        store.audit("olga", "playback", "cam", "ok", {"n": n})
    return store


def rewrite(root: Path, sql: list[str]) -> None:
    """What an attacker with write access to the index does: drop the triggers, change rows,
    recompute the (unkeyed) sha256 chain from the first entry on."""
    db = sqlite3.connect(root / "index.db")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for stmt in sql:
        db.execute(stmt)
    prev = "0" * 64
    rows = db.execute(
        "SELECT id, at_ms, actor, action, target, outcome, detail FROM audit ORDER BY id"
    ).fetchall()
    for new_id, (old_id, at, actor, action, target, outcome, detail) in enumerate(rows, 1):
        digest = entry_hash(prev, new_id, at, actor, action, target, outcome, detail)
        db.execute(
            "UPDATE audit SET id = ?, prev_hash = ?, hash = ? WHERE id = ?",
            (new_id, prev, digest, old_id),
        )
        prev = digest
    db.commit()
    db.close()
    (root / ".audit-head").write_text(f"{len(rows)} {prev}\n")


def test_audit_verify_detects_truncation_and_rewritten_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    with caplog.at_level(logging.INFO, logger="nvr.storage"):
        store = busy_store(root)
    # Checkpoints at entries 1, 6, 11, 16, 21: in the index, in a file and in the journal.
    report = store.audit_report()
    assert report.problems == [] and report.entries == 23 and report.checkpoints == 5
    assert report.last_good is not None and report.last_good.audit_id == 21
    assert len((root / ".audit-checkpoints").read_text().splitlines()) == 5
    assert sum("audit checkpoint: 21 " in r.getMessage() for r in caplog.records) == 1
    store.close()
    intact = audit_verify(root, tmp_path)
    assert intact.returncode == 0 and "intact" in intact.stdout
    assert "5 signed checkpoints" in intact.stdout and "entry 21" in intact.stdout
    backup = tmp_path / "backup"
    shutil.copytree(root, backup)

    # (a) Truncation: the last rows deleted around the triggers, the head removed.
    db = sqlite3.connect(root / "index.db")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE id > 18")
    db.commit()
    db.close()
    (root / ".audit-head").unlink()
    done = audit_verify(root, tmp_path)
    assert done.returncode == 1 and "intact" not in done.stdout
    assert "head (.audit-head) is missing" in done.stdout
    assert "entry 21 was signed in a checkpoint but is gone" in done.stdout
    assert "last good checkpoint: entry 16" in done.stdout

    # (b) A rewritten tail: one entry deleted, the chain and the head recomputed.
    shutil.rmtree(root)
    shutil.copytree(backup, root)
    rewrite(root, ["DELETE FROM audit WHERE id = 9"])
    done = audit_verify(root, tmp_path)
    assert done.returncode == 1 and "intact" not in done.stdout
    assert "entry 11 differs from the signed checkpoint" in done.stdout
    assert "the audit head is not signed" in done.stdout
    assert "first entry that fails: 11" in done.stdout
    assert "last good checkpoint: entry 6" in done.stdout

    # (c) Only entries after the last checkpoint rewritten: the signed head still tells.
    shutil.rmtree(root)
    shutil.copytree(backup, root)
    rewrite(root, ["DELETE FROM audit WHERE id = 22"])
    done = audit_verify(root, tmp_path)
    assert done.returncode == 1 and "the audit head is not signed" in done.stdout
    assert "last good checkpoint: entry 21" in done.stdout
