"""Evidence that survives tampering (issue 14): bounded locks, exported footage locked, signed
audit checkpoints, a two-person rule between truly different people, and a package a recipient
can check with standard tools only. Real stores in `tmp_path` under a simulated clock; the
package and playback tests use the session's recorded footage (see `tests/test_api.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import SegmentStore
from storage.accounts import AccountError
from storage.exports import ExportRefused

T0 = 1_790_000_000_000  # 2026-09-21
PASSWORD = "correct horse battery staple"


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
