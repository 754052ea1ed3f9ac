"""Evidence that survives tampering (issue 14): bounded locks, exported footage locked, signed
audit checkpoints, a two-person rule between truly different people, and a package a recipient
can check with standard tools only. Real stores in `tmp_path` under a simulated clock; the
package and playback tests use the session's recorded footage (see `tests/test_api.py`)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import av
import pytest

from nvr.api import ApiContext
from nvr.config import CameraConfig, NvrConfig, StorageConfig
from nvr.config.models import ApiConfig, SiteConfig
from nvr.storage import LockError, SegmentInfo, SegmentStore
from nvr.storage.accounts import AccountError
from nvr.storage.audit import entry_hash
from nvr.storage.exports import ExportRefused
from nvr.storage.guard import add_years, protection
from nvr.storage.media.hevc import hvc1_entry
from nvr.storage.media.segment import parse_segment
from nvr.storage.timestamps import DAY_MS, iso
from tests.api_rig import Api, ServerThread, approved_export, free_port, nvr_here
from tests.media import fast_pattern, pattern_packets

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
    log = [(e.actor, e.action, e.outcome) for e in store.audit.entries() if "export" in e.action]
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
        store.locks.add(
            "cam", 946_684_800_000, year_2100, actor="olga", reason="x", until_ms=year_2100
        )
    with pytest.raises(LockError, match="at most 10 years"):
        store.locks.add("cam", T0 - DAY_MS, T0, actor="olga", reason="x", until_ms=year_2100)
    lock = store.locks.add(
        "cam", T0 - DAY_MS, T0, actor="olga", reason="x", until_ms=add_years(T0, 10)
    )
    with pytest.raises(LockError, match="at most 10 years"):
        store.locks.extend(lock.id, add_years(T0, 10) + DAY_MS, actor="olga")
    clock.now += 2 * DAY_MS  # later on, it may be extended again, up to ten years from then
    assert store.locks.extend(lock.id, add_years(T0, 10) + DAY_MS, actor="olga").active(T0)
    # Ended early: one admin asks with a reason, a second admin approves.
    with pytest.raises(LockError, match="nobody asked"):
        store.locks.approve_end(lock.id, actor="ada", reason="typo")
    with pytest.raises(LockError, match="needs a reason"):
        store.locks.request_end(lock.id, actor="root", reason=" ")
    asked = store.locks.request_end(lock.id, actor="root", reason="wrong camera")
    assert asked.end_requested_by == "root" and asked.active(clock.now)
    with pytest.raises(LockError, match="already asked"):
        store.locks.request_end(lock.id, actor="ada", reason="again")
    with pytest.raises(LockError, match="second admin"):
        store.locks.approve_end(lock.id, actor="ROOT", reason="me again")
    ended = store.locks.approve_end(lock.id, actor="ada", reason="confirmed with the operator")
    assert not ended.active(clock.now) and ended.released_by == "ada"
    assert ended.release_reason is not None and "wrong camera" in ended.release_reason
    log = [(e.actor, e.action, e.outcome) for e in store.audit.entries()]
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
    assert store.locks.find() == []
    store.exports.approve(eid, approver="oscar", approver_work_id="OP-2")
    (lock,) = store.locks.find()
    assert (lock.camera, lock.start_ms, lock.end_ms) == ("cam", T0 - 60_000, T0)
    assert lock.case_id == f"export-{eid}" and f"export {eid}" in lock.reason
    assert lock.expires_ms == add_years(T0, 2) and lock.created_by == "oscar"
    # A year on, past any window, the exported footage is still protected by the lock.
    later = add_years(T0, 1)
    why = protection("cam", T0 - 30_000, T0, now_ms=later, window_days=30, locks=store.locks.find())
    assert why is not None and f"export-{eid}" in why
    store.close()


# --- item 3: the audit log anchored by signed checkpoints ---------------------------------------


def audit_verify(root: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "nvr.toml"
    config.write_text(f'[storage]\nroot = "{root}"\n')
    return nvr_here(["audit-verify", "-c", str(config)], tmp_path)


def busy_store(root: Path) -> SegmentStore:
    """A store with 23 audit entries and a checkpoint every 5."""
    store = SegmentStore(
        root, f"sqlite:///{root / 'index.db'}", clock=FakeClock(T0), checkpoint_entries=5
    )
    for n in range(23):
        store.audit.append("olga", "playback", "cam", "ok", {"n": n})
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
    report = store.audit.report()
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


def test_hourly_checkpoint_does_not_wait_for_the_next_entry(tmp_path: Path) -> None:
    """Entries after the last checkpoint are covered by one within the checkpoint interval
    even when no further entry arrives (the daemon asks `AuditLog.checkpoint` on a timer)."""
    root = tmp_path / "store"
    clock = FakeClock(T0)
    store = SegmentStore(
        root, f"sqlite:///{root / 'index.db'}", clock=clock, checkpoint_ms=3_600_000
    )
    for n in range(3):
        store.audit.append("olga", "playback", "cam", "ok", {"n": n})
    assert store.audit.report().checkpoints == 1  # the first entry starts the chain
    clock.now += 3_599_000
    assert store.audit.checkpoint() is False  # not an hour yet
    clock.now += 1_000
    assert store.audit.checkpoint() is True
    assert store.audit.checkpoint() is False  # the newest entry is covered already
    report = store.audit.report()
    assert report.problems == [] and report.checkpoints == 2
    assert report.last_good is not None and report.last_good.audit_id == 3
    lines = (root / ".audit-checkpoints").read_text().splitlines()
    assert lines[-1].split()[:3] == ["3", store.audit.entries()[-1].hash, str(clock.now)]
    clock.now += 7_200_000
    assert store.audit.checkpoint() is False  # nothing new to sign
    store.close()


# --- items 2, 5-8: a package the recipient can use, gaps, H.265 -------------------------------

SITE = "Jiefangbei pedestrian street, Yuzhong district"
LOCATION = "North gate, facing the car park entrance"
SEG_MS = 2000
GAP_MS = 20_000


class HevcSource:
    """Frames encoded with libx265 (keyframe every 10 frames, no B-frames): the template
    stream and packets for a segment writer, as a camera's H.265 stream gives them."""

    def __init__(self) -> None:
        self._dummy = av.open(io.BytesIO(), "w", format="mp4")
        stream = self._dummy.add_stream("libx265", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            # Parameter sets in every keyframe too, as cameras send them.
            "x265-params": "keyint=10:min-keyint=10:scenecut=0:bframes=0:repeat-headers=1:"
            "log-level=error",
        }
        self._dummy.start_encoding()
        self.video = stream
        assert stream.time_base is not None
        self._tb = stream.time_base

    def packets(self, count: int) -> Iterator[av.Packet[Any]]:
        for i in range(count):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for plane, value in zip(frame.planes, (40 + 8 * i, 128, 128), strict=True):
                plane.update(bytes([value % 256]) * plane.buffer_size)
            frame.pts, frame.time_base = i, Fraction(1, 10)
            for packet in self.video.encode(frame):
                src = packet.time_base
                if src is not None and src != self._tb:
                    scale = src / self._tb
                    packet.pts = int((packet.pts or 0) * scale)
                    packet.dts = int((packet.dts or 0) * scale)
                    packet.duration = int((packet.duration or 0) * scale)
                    packet.time_base = self._tb
                yield packet

    def close(self) -> None:
        self._dummy.close()


def add_segment(store: SegmentStore, camera: str, start_ms: int, hevc: bool = False) -> None:
    frames = SEG_MS // 100
    src: Any = HevcSource() if hevc else fast_pattern()
    writer = store.new_writer(camera, start_ms, src.video, None)
    packets = src.packets(frames) if hevc else pattern_packets(src, frames)
    for pkt in packets:
        pkt.stream = writer.video
        writer.mux(pkt)
    codec, w, h = ("hevc", 320, 240) if hevc else ("h264", 640, 360)
    info = SegmentInfo(camera, start_ms, start_ms + SEG_MS, SEG_MS, frames, codec, None, w, h)
    store.commit(writer, info)
    src.close()


@dataclass
class Site:
    api: Api
    t0: int
    """Start of the footage: `gate` records t0 .. t0+4 s, is unreachable for 20 s, records
    t0+24 s .. t0+28 s; `hevc` (H.265) records t0 .. t0+4 s."""


@pytest.fixture
def site(users_template: Path, tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "store"
    shutil.copytree(users_template, root)
    t0 = (time.time_ns() // 1_000_000 - 600_000) // 1000 * 1000
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    add_segment(store, "gate", t0)
    add_segment(store, "gate", t0 + SEG_MS)
    outage = store.ledger.open("gate", t0 + 2 * SEG_MS, "camera-unreachable", "connect timeout")
    store.ledger.close(outage.id, t0 + 2 * SEG_MS + GAP_MS)
    add_segment(store, "gate", t0 + 2 * SEG_MS + GAP_MS)
    add_segment(store, "gate", t0 + 3 * SEG_MS + GAP_MS)
    add_segment(store, "hevc", t0, hevc=True)
    add_segment(store, "hevc", t0 + SEG_MS, hevc=True)
    port = free_port()
    config = NvrConfig(
        storage=StorageConfig(root=root),
        cameras=[
            CameraConfig(
                name="gate", url="rtsp://127.0.0.1:9/gate", location=LOCATION, description="dome"
            ),
            CameraConfig(name="hevc", url="rtsp://127.0.0.1:9/hevc"),
        ],
        api=ApiConfig(listen=f"127.0.0.1:{port}"),
        site=SiteConfig(name=SITE, timezone="Asia/Shanghai"),
    )
    server = ServerThread(ApiContext(config=config, store=store))
    try:
        server.start()
        yield Site(Api(server.base, store, root, config, server), t0)
    finally:
        server.stop()
        store.close()


def exported(site: Site, camera: str, start: int, end: int, tmp_path: Path) -> tuple[Path, int]:
    """Request (olga), approve (oscar), wait, download: the package and its export id."""
    body = {
        "camera": camera,
        "start": start,
        "end": end,
        "purpose": "theft at the gate / 门口盗窃案",
        "recipient": "Yuzhong district police, officer Li, by hand",
        "approval_document": "YZ-2026-1122-07",
        "requester_work_id": "OP-1001",
    }
    eid, package = approved_export(site.api, body)
    path = tmp_path / f"export-{eid}.zip"
    path.write_bytes(package)
    return path, eid


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_package_is_usable_with_standard_tools_only(site: Site, tmp_path: Path) -> None:
    t0 = site.t0
    package, eid = exported(site, "gate", t0 + 1000, t0 + 2 * SEG_MS + GAP_MS + 1000, tmp_path)
    # What the recipient does, with Debian's tools and nothing of ours.
    folder = tmp_path / "unzipped"
    assert run(["unzip", "-q", str(package), "-d", str(folder)], tmp_path).returncode == 0
    sums = run(["sha256sum", "-c", "SHA256SUMS"], folder)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    checked = sums.stdout.splitlines()
    assert len(checked) >= 6 and all(line.endswith(": OK") for line in checked)
    assert {"manifest.json: OK", "README.txt: OK", "cover.html: OK"} <= set(checked)
    sig = run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "signing-key.pub",
            "-rawin",
            "-in",
            "manifest.json",
            "-sigfile",
            "manifest.sig",
        ],
        folder,
    )
    assert sig.returncode == 0 and "Signature Verified Successfully" in sig.stdout, sig
    manifest = json.loads((folder / "manifest.json").read_text())
    fp = run(
        [
            "sh",
            "-c",
            "openssl pkey -pubin -in signing-key.pub -outform DER | tail -c 32 | sha256sum",
        ],
        folder,
    )
    assert fp.stdout.split()[0] == manifest["signing_key_sha256"]
    with site.api.as_user("olga") as c:
        assert c.get("/api/signing-key").headers["x-key-sha256"] == manifest["signing_key_sha256"]
    probe = run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type",
            "-of",
            "csv=p=0",
            "recording.mp4",
        ],
        folder,
    )
    assert probe.returncode == 0 and probe.stdout.split() == ["video", "subtitle"], probe
    # The cover sheet, in Chinese and English, with every fact a court needs.
    readme = (folder / "README.txt").read_text(encoding="utf-8")
    cover = (folder / "cover.html").read_text(encoding="utf-8")
    outage_start = t0 + 2 * SEG_MS
    local = datetime.fromtimestamp(outage_start / 1000, ZoneInfo("Asia/Shanghai"))
    for text in (readme, cover):
        for fact in (
            SITE,
            LOCATION,
            "Asia/Shanghai",
            "+08:00",
            local.strftime("%Y-%m-%d %H:%M:%S"),
            "camera-unreachable",
            "connect timeout",
            "olga",
            "OP-1001",
            "oscar",
            "OP-2002",
            "门口盗窃案",
            "Yuzhong district police",
            "YZ-2026-1122-07",
            "sha256sum -c SHA256SUMS",
            "openssl pkeyutl -verify",
            "证据导出",
            "申请人",
            "批准人",
        ):
            assert fact in text, fact
        for f in manifest["files"]:
            if f["name"].startswith("segments/") or f["name"] == "recording.mp4":
                assert f["sha256"] in text and f["name"] in text
    assert datetime.fromtimestamp((t0 + 1000) / 1000, UTC).strftime("%H:%M:%S") in readme
    # The manifest carries the same facts and the outage list.
    assert manifest["site"] == {"name": SITE, "timezone": "Asia/Shanghai"}
    assert manifest["camera_info"]["location"] == LOCATION
    assert manifest["range"]["start_local"].endswith("+08:00")
    (outage,) = manifest["outages"]
    assert outage["cause"] == "camera-unreachable" and outage["seconds"] == GAP_MS / 1000
    (gap,) = manifest["recording"]["gaps"]
    assert gap["causes"][0]["cause"] == "camera-unreachable" and gap["seconds"] == 20.0
    # R3: footage handed over is locked for two years, in `nvr locks` and the timeline.
    with site.api.as_user("olga") as c:
        locks = [x for x in c.get("/api/locks").json() if x["case_id"] == f"export-{eid}"]
        assert len(locks) == 1 and locks[0]["created_by"] == "oscar"
        assert locks[0]["expires_ms"] > t0 + 729 * 86_400_000
        tl = c.get("/api/cameras/gate/timeline", params={"start": t0, "end": t0 + 30_000}).json()
        assert [x["case_id"] for x in tl["locks"]] == [f"export-{eid}"]
    config = tmp_path / "nvr.toml"
    config.write_text(f'[storage]\nroot = "{site.api.root}"\n')
    listed = nvr_here(["locks", "-c", str(config)], tmp_path)
    assert f"export-{eid}" in listed.stdout, listed

    # Item 6: zipped again by the recipient's own tools, or left as a folder, it verifies.
    key = tmp_path / "signing.pem"
    key.write_bytes((folder / "signing-key.pub").read_bytes())
    rezipped = tmp_path / "rezipped.zip"
    assert run(["zip", "-qr", str(rezipped), "."], folder).returncode == 0  # with dir entries
    wrapped = tmp_path / "wrapped.zip"
    assert run(["zip", "-qr", str(wrapped), folder.name], tmp_path).returncode == 0
    for candidate in (package, rezipped, wrapped, folder):
        done = nvr_here(["verify-export", str(candidate), "--key", str(key)], tmp_path)
        assert done.returncode == 0 and "verified" in done.stdout, (candidate, done)
    # ... and names what is wrong: a missing file, an altered one.
    seg_name = next(f["name"] for f in manifest["files"] if f["name"].startswith("segments/"))
    (folder / "README.txt").unlink()
    done = nvr_here(["verify-export", str(folder), "--key", str(key)], tmp_path)
    assert done.returncode == 1 and "README.txt: missing" in done.stdout, done
    with (folder / seg_name).open("r+b") as f:
        f.seek(3000)
        byte = f.read(1)
        f.seek(3000)
        f.write(bytes([byte[0] ^ 1]))
    done = nvr_here(["verify-export", str(folder), "--key", str(key)], tmp_path)
    assert done.returncode == 1 and f"{seg_name}: altered" in done.stdout, done


def test_a_gap_is_explicit_in_recording_mp4(site: Site, tmp_path: Path) -> None:
    t0 = site.t0
    start, end = t0, t0 + 4 * SEG_MS + GAP_MS
    with site.api.as_user("olga") as c:
        r = c.get("/api/cameras/gate/recording.mp4", params={"start": start, "end": end})
    assert r.status_code == 200
    gap_lo, gap_hi = t0 + 2 * SEG_MS, t0 + 2 * SEG_MS + GAP_MS
    assert r.headers["x-recording-gaps"] == (f"{iso(gap_lo)}/{iso(gap_hi)} camera-unreachable")
    path = tmp_path / "r.mp4"
    path.write_bytes(r.content)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        tb = v.time_base
        assert tb is not None
        pts = [float(p.pts * tb) for p in c.demux(v) if p.size and p.pts is not None]
    # Wall-clock time stays true: the first frame after the gap is 24 s into the file.
    after = [p for p in pts if p > 3.95]
    assert after and abs(after[0] - (gap_hi - t0) / 1000) < 0.05, pts
    # ... and the file itself says, over the gap, that nothing was recorded and why.
    with av.open(str(path)) as c:
        (sub,) = c.streams.subtitles
        stb = sub.time_base
        assert stb is not None
        cues = [
            (float(p.pts * stb), float((p.duration or 0) * stb), bytes(p)[2:].decode())
            for p in c.demux(sub)
            if p.size > 2 and p.pts is not None
        ]
    ((at, length, text),) = cues
    assert abs(at - 4.0) < 0.01 and abs(length - 20.0) < 0.01
    assert "NO RECORDING" in text and "camera-unreachable" in text
    with site.api.as_user("olga") as c:
        r = c.get("/api/cameras/gate/recording.mp4", params={"start": t0, "end": t0 + 2 * SEG_MS})
        assert r.headers["x-recording-gaps"] == "none"


def sample_entry(mp4: bytes) -> bytes:
    """The first video sample entry (stsd child) of an MP4 file."""
    at = mp4.find(b"stsd")
    assert at > 0
    size = struct.unpack_from(">I", mp4, at + 12)[0]
    return mp4[at + 12 : at + 12 + size]


def parameter_sets(entry: bytes) -> dict[int, int]:
    """NAL type -> array_completeness of each array in the entry's hvcC."""
    at = entry.find(b"hvcC")
    assert at > 0
    count = entry[at + 4 + 22]
    pos = at + 4 + 23
    out = {}
    for _ in range(count):
        out[entry[pos] & 0x3F] = entry[pos] >> 7
        n = struct.unpack_from(">H", entry, pos + 1)[0]
        pos += 3
        for _ in range(n):
            pos += 2 + struct.unpack_from(">H", entry, pos)[0]
    return out


def test_h265_is_tagged_hvc1_with_parameter_sets(site: Site, tmp_path: Path) -> None:
    t0 = site.t0
    with site.api.as_user("olga") as c:
        r = c.get("/api/cameras/hevc/recording.mp4", params={"start": t0, "end": t0 + 4000})
    assert r.status_code == 200
    entry = sample_entry(r.content)
    assert entry[4:8] == b"hvc1"
    sets = parameter_sets(entry)
    assert {32: 1, 33: 1, 34: 1}.items() <= sets.items(), sets
    path = tmp_path / "r.mp4"
    path.write_bytes(r.content)
    probe = run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=codec_tag_string",
            "-of",
            "csv=p=0",
            str(path),
        ],
        tmp_path,
    )
    assert probe.stdout.strip() == "hvc1"
    with av.open(str(path)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 40
    # The export's recording.mp4 too.
    package, _eid = exported(site, "hevc", t0, t0 + 4000, tmp_path)
    with zipfile.ZipFile(package) as zf:
        assert sample_entry(zf.read("recording.mp4"))[4:8] == b"hvc1"
    # A recorded entry without parameter sets (hev1, sets in-band only) gets them from the
    # first keyframe.
    seg = site.api.store.segments("hevc")[0]
    index = parse_segment(seg.path)
    video = index.video
    bare = strip_arrays(video.sample_entry)
    assert parameter_sets(bare) == {}
    with seg.path.open("rb") as f:
        f.seek(int(video.offset[0]))
        key = f.read(int(video.size[0]))
    fixed = hvc1_entry(bare, lambda: key)
    assert fixed[4:8] == b"hvc1" and set(parameter_sets(fixed)) >= {32, 33, 34}


def strip_arrays(entry: bytes) -> bytes:
    """The entry as `hev1` with an hvcC that has no parameter set arrays."""
    at = entry.find(b"hvcC") - 4
    size = struct.unpack_from(">I", entry, at)[0]
    record = entry[at + 8 : at + 8 + 22] + b"\0"
    hvcc = struct.pack(">I4s", 8 + len(record), b"hvcC") + record
    body = entry[8:at] + hvcc + entry[at + size :]
    return struct.pack(">I4s", 8 + len(body), b"hev1") + body


def test_lock_ends_early_over_http_and_cli_only_with_two_people(site: Site, tmp_path: Path) -> None:
    t0 = site.t0
    site.api.store.accounts.add_user("ada", "admin", PASSWORD, actor="test")
    lock = {"camera": "gate", "start": t0, "end": t0 + 4000, "reason": "typo: wrong camera"}
    with site.api.as_user("root") as root, site.api.as_user("ada") as ada:
        with site.api.as_user("olga") as olga:
            made = olga.post("/api/locks", json=lock).json()
            r = olga.post(f"/api/locks/{made['id']}/end-request", json={"reason": "mine"})
            assert r.status_code == 403  # admins only
        r = root.post(f"/api/locks/{made['id']}/end-request", json={"reason": "wrong camera"})
        assert r.status_code == 200 and r.json()["end_requested_by"] == "root"
        assert r.json()["active"] is True
        r = root.post(f"/api/locks/{made['id']}/end-approve", json={"reason": "sure"})
        assert r.status_code == 409 and "second admin" in r.json()["detail"]
        config = tmp_path / "nvr.toml"
        config.write_text(f'[storage]\nroot = "{site.api.root}"\n')
        listed = nvr_here(["locks", "-c", str(config)], tmp_path)
        assert "end asked by root (wrong camera)" in listed.stdout, listed
        r = ada.post(f"/api/locks/{made['id']}/end-approve", json={"reason": "checked"})
        assert r.status_code == 200 and r.json()["active"] is False
    # At the command line the same two steps, and one person cannot take both.
    cli_lock = site.api.store.locks.add("gate", t0, t0 + 2000, actor="olga", reason="x")
    asked = nvr_here(
        ["lock-end", "-c", str(config), str(cli_lock.id), "--reason", "wrong"], tmp_path
    )
    assert asked.returncode == 0, asked
    again = nvr_here(
        ["lock-end", "-c", str(config), str(cli_lock.id), "--reason", "ok", "--approve"],
        tmp_path,
    )
    assert again.returncode == 1 and "second admin" in again.stderr, again
    assert any(lk.id == cli_lock.id for lk in site.api.store.locks.find())
