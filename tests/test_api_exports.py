"""Evidence exports over HTTP (two persons, signed packages, `nvr verify-export`), evidence
locks and refused deletions, against a real uvicorn with recorded footage."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import av
import httpx
import pytest

from tests.api_rig import Api, contiguous_trio, export_body, nvr, ready

pytestmark = pytest.mark.slow


def test_export_needs_a_second_person_and_verifies_offline(
    footage_api: Api, tmp_path: Path
) -> None:
    trio = contiguous_trio(footage_api.store, "h264aac")
    start, end = str(trio[0].start_ms + 1000), str(trio[1].end_ms - 1000)
    olga = footage_api.as_user("olga")
    oscar = footage_api.as_user("oscar")
    vera = footage_api.as_user("vera")
    audrey = footage_api.as_user("audrey")
    with olga, oscar, vera, audrey:
        assert vera.post("/api/exports", json=export_body(int(start), int(end))).status_code == 403
        r = olga.post("/api/exports", json=export_body(int(start), int(end)))
        assert r.status_code == 201, r.text
        export = r.json()
        assert export["state"] == "pending" and export["requester"] == "olga"
        eid = export["id"]
        # One person alone cannot export: self-approval is refused, and nothing is built.
        r = olga.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-1001"})
        assert r.status_code == 403 and "second person" in r.json()["detail"]
        assert olga.get(f"/api/exports/{eid}/download").status_code == 409
        # Nor can the requester decide as if a second person: rejecting is not theirs,
        # and the same work id in another case is the same person.
        r = olga.post(
            f"/api/exports/{eid}/reject", json={"approver_work_id": "OP-9", "reason": "no"}
        )
        assert r.status_code == 403 and "cancel" in r.json()["detail"]
        r = oscar.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "op-1001"})
        assert r.status_code == 403 and "requester's" in r.json()["detail"]
        r = oscar.post(f"/api/exports/{eid}/cancel", json={"reason": "not mine"})
        assert r.status_code == 403
        assert (
            audrey.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "A"}).status_code
            == 403
        )
        r = oscar.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-2002"})
        assert r.status_code == 200, r.text
        done = ready(oscar, eid)
        assert done["state"] == "ready", done
        r = oscar.post(f"/api/exports/{eid}/approve", json={"approver_work_id": "OP-2002"})
        assert r.status_code == 409  # approving twice
        register = audrey.get("/api/exports").json()
        (row,) = [x for x in register if x["id"] == eid]
        assert row["requester"] == "olga" and row["approver"] == "oscar"
        assert row["requester_work_id"] == "OP-1001" and row["approver_work_id"] == "OP-2002"
        assert (
            row["recipient"].startswith("Yuzhong") and row["approval_document"] == "YZ-2026-1122-07"
        )
        names = {f["name"] for f in row["files"]}
        assert "recording.mp4" in names and all(len(f["sha256"]) == 64 for f in row["files"])
        assert vera.get(f"/api/exports/{eid}/download").status_code == 403
        pkg = olga.get(f"/api/exports/{eid}/download")
        assert pkg.status_code == 200 and pkg.headers["content-type"] == "application/zip"
        key = olga.get("/api/signing-key")
        assert key.status_code == 200 and b"BEGIN PUBLIC KEY" in key.content
    package = tmp_path / "export.zip"
    package.write_bytes(pkg.content)
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(key.content)
    with zipfile.ZipFile(package) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["camera"] == "h264aac"
        assert manifest["requester"]["user"] == "olga" and manifest["approver"]["user"] == "oscar"
        assert manifest["approval_document"] == "YZ-2026-1122-07"
        segs = manifest["segments"]
        assert [s["sha256"] for s in segs] == [s.sha256 for s in trio[:2]]
        assert [s["chain"] for s in segs] == [s.chain for s in trio[:2]]
        for s, seg in zip(segs, trio[:2], strict=True):
            assert zf.read(s["file"]) == seg.path.read_bytes()
        zf.extract("recording.mp4", tmp_path)
    with av.open(str(tmp_path / "recording.mp4")) as c:
        frames = sum(1 for p in c.demux(c.streams.video[0]) if p.size > 0)
        assert abs(frames - (int(end) - int(start)) / 100) <= 10  # 10 fps, keyframe before start
    ok = nvr(["verify-export", str(package), "--key", str(key_file)], tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified" in ok.stdout
    # One byte changed anywhere in the footage: the package no longer verifies.
    data = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as zf:
        info = zf.getinfo("recording.mp4")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    at = info.header_offset + 30 + name_len + extra_len + 5000
    data[at] ^= 0x01
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(bytes(data))
    bad = nvr(["verify-export", str(tampered), "--key", str(key_file)], tmp_path)
    assert bad.returncode != 0
    assert "recording.mp4" in bad.stdout
    # The manifest rewritten (and re-zipped) without the private key: the signature fails.
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename == "manifest.json":
                body = body.replace(b"YZ-2026-1122-07", b"YZ-2026-1122-08")
            dst.writestr(item, body)
    bad = nvr(["verify-export", str(forged), "--key", str(key_file)], tmp_path)
    assert bad.returncode != 0 and "signature" in bad.stdout
    # A request withdrawn by its requester: cancelled, audited, and never approvable.
    with footage_api.as_user("olga") as olga, footage_api.as_user("oscar") as oscar:
        second = olga.post("/api/exports", json=export_body(int(start), int(end))).json()["id"]
        r = olga.post(f"/api/exports/{second}/cancel", json={"reason": "wrong range"})
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        r = oscar.post(f"/api/exports/{second}/approve", json={"approver_work_id": "OP-2002"})
        assert r.status_code == 409
    actions = [(e.actor, e.action, e.outcome) for e in footage_api.store.audit.entries()]
    assert ("olga", "export-cancel", "ok") in actions
    assert ("olga", "export-reject", "refused") in actions
    assert ("olga", "export-request", "ok") in actions
    assert ("olga", "export-approve", "refused") in actions
    assert ("oscar", "export-approve", "ok") in actions
    assert ("olga", "export-download", "ok") in actions
    assert footage_api.store.audit.verify() == []


def test_locks_and_refused_deletions(footage_api: Api) -> None:
    segs = footage_api.store.segments("h264aac")
    start, end = segs[0].start_ms, segs[-1].end_ms
    with footage_api.as_user("olga") as c:
        r = c.delete("/api/cameras/h264aac/recordings", params={"start": start, "end": end})
        assert r.status_code == 409
        assert "retention window" in r.json()["detail"]
        lock = {
            "camera": "h264aac",
            "start": start,
            "end": start + 5000,
            "reason": "case 42",
            "case_id": "CQ-42",
        }
        r = c.post("/api/locks", json=lock)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["active"] and made["created_by"] == "olga" and made["expires_ms"] > end
        listed = c.get("/api/locks").json()
        assert [x["id"] for x in listed] == [made["id"]]
        later = made["expires_ms"] + 86_400_000
        r = c.post(f"/api/locks/{made['id']}/extend", json={"until": later})
        assert r.status_code == 200 and r.json()["expires_ms"] == later
        r = c.post(f"/api/locks/{made['id']}/extend", json={"until": later - 1000})
        assert r.status_code == 409 and "never shortened" in r.json()["detail"]
        r = c.post(f"/api/locks/{made['id']}/release", json={"reason": "no"})
        assert r.status_code == 403  # admins only
        assert c.post("/api/locks/999/extend", json={"until": later}).status_code == 404
    with footage_api.as_user("vera") as c:
        assert [x["id"] for x in c.get("/api/locks").json()] == [made["id"]]
        r = c.delete("/api/cameras/h264aac/recordings", params={"start": start, "end": end})
        assert r.status_code == 403
    with footage_api.as_user("root") as c:
        hold = {**lock, "hold": True}
        r = c.post("/api/locks", json=hold)
        assert r.status_code == 201 and r.json()["hold"] is True
        r = c.post(f"/api/locks/{r.json()['id']}/release", json={"reason": "case closed"})
        assert r.status_code == 200 and r.json()["active"] is False
    refused = footage_api.store.audit.entries(action="delete")
    assert refused and refused[0].outcome == "refused" and refused[0].actor == "olga"
    assert {e.action for e in footage_api.store.audit.entries(actor="olga")} >= {
        "lock",
        "lock-extend",
    }
    assert footage_api.store.segments("h264aac") == segs  # nothing was deleted


def test_playback_links_for_video_elements(footage_api: Api) -> None:
    trio = contiguous_trio(footage_api.store, "h264aac")
    params = {"start": str(trio[0].start_ms), "end": str(trio[1].end_ms)}
    with footage_api.as_user("vera") as c:
        r = c.post("/api/cameras/h264aac/links", json=params)
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        assert c.post("/api/cameras/bframes/links", json=params).status_code == 403
    with httpx.Client(base_url=footage_api.base, timeout=60) as anon:
        r = anon.get(url, headers={"Range": "bytes=0-1023"})
        assert r.status_code == 206 and len(r.content) == 1024
        other = url.replace(params["end"], str(trio[2].end_ms))
        assert anon.get(other).status_code == 403  # the grant is for one range only
        assert anon.get(url.replace("access=", "access=x")).status_code == 401
        assert anon.get(url.replace("h264aac", "bframes")).status_code == 403
    played = footage_api.store.audit.entries(action="playback")
    (entry,) = [e for e in played if e.outcome == "ok"]
    assert entry.actor == "vera" and entry.detail["via"] == "link"
    refused = [e for e in played if e.outcome == "refused"]
    assert len(refused) == 2 and all(e.detail["via"] == "link" for e in refused)
    with footage_api.as_user("root") as c:
        c.patch("/api/users/vera", json={"disabled": True})
    with httpx.Client(base_url=footage_api.base, timeout=60) as anon:
        assert anon.get(url).status_code == 401  # a disabled user's links die with them
