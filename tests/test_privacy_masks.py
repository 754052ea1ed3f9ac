"""Privacy masks (issue 18, R10): a user without the `unmasked` permission plays a camera's
footage as a re-encoded copy with the polygons filled black (decoded: the masked area black,
the rest the same picture); a user with it gets exactly the bytes of today's playback; the
originals are untouched; masked playback is audited as such; an export a masked user asked
for holds only the masked recording and names the originals by their hashes."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from nvr.api.masking import mask_file
from nvr.config.models import CameraConfig, PrivacyMask
from nvr.ingest.picture.decode import jpeg_snapshot
from nvr.storage import Segment, SegmentStore
from nvr.storage.media.package import verify_package
from tests.api_rig import Api, approved_export, export_body, footage_end, run_api

MASK = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]  # the top left quarter


def serve(
    root: Path, masks: list[PrivacyMask], mask_hold: threading.Event | None = None
) -> Iterator[Api]:
    """The API over `root` a minute after its footage, camera h264aac masked by `masks`."""
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    yield from run_api(
        root,
        clock=lambda: time.time_ns() // 1_000_000 - offset,
        privacy_masks={"h264aac": masks},
        mask_hold=mask_hold,
    )


def footage_copy(
    footage_template: Path, tmp_path: Path, unmasked: str
) -> tuple[Path, list[Segment]]:
    """A copy of the session's footage in which `unmasked` may see behind the masks: its
    root and the segments of h264aac."""
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        store.accounts.set_unmasked(unmasked, True, actor="test")
        return root, store.segments("h264aac")
    finally:
        store.close()


def write_tmp(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pictures_of(jpeg: bytes) -> np.ndarray:
    with av.open(io.BytesIO(jpeg), "r") as container:
        frame = next(container.decode(video=0))
        out: np.ndarray = frame.to_ndarray(format="gray").astype(np.int16)
        return out


def pictures(data: bytes) -> list[np.ndarray]:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        with av.open(f.name) as container:
            return [
                fr.to_ndarray(format="gray").astype(np.int16) for fr in container.decode(video=0)
            ]


def test_mask_points_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"within 0\.\.1"):
        PrivacyMask(points=[(0.0, 0.0), (1.5, 0.0), (0.5, 0.5)])
    with pytest.raises(ValidationError):
        PrivacyMask(points=[(0.0, 0.0), (1.0, 0.0)])
    cam = CameraConfig.model_validate(
        {"name": "c", "url": "rtsp://127.0.0.1/x", "privacy_masks": [{"points": MASK}]}
    )
    assert cam.privacy_masks[0].points[1] == (0.5, 0.0)


def test_masked_users_see_the_areas_filled_and_others_todays_bytes(
    footage_template: Path, tmp_path: Path
) -> None:
    root, segments = footage_copy(footage_template, tmp_path, "root")
    first = segments[0]
    originals = {s.path: s.path.read_bytes() for s in segments}
    span = {"start": first.start_ms + 2_000, "end": first.start_ms + 12_000}
    # Today's playback: the same store served without masks.
    for api in serve(root, []):
        with api.as_user("root") as c:
            r = c.get("/api/cameras/h264aac/recording.mp4", params=span)
            assert r.status_code == 200, r.text
            today = r.content
    for api in serve(root, [PrivacyMask(points=MASK)]):
        with api.as_user("root") as c:
            r = c.get("/api/cameras/h264aac/recording.mp4", params=span)
            assert r.status_code == 200 and "x-privacy-masks" not in r.headers
            assert r.content == today  # byte for byte
        with api.as_user("vera") as c:
            r = c.get("/api/cameras/h264aac/recording.mp4", params=span)
            assert r.status_code == 200, r.text
            assert r.headers["x-privacy-masks"] == "1"
            masked = r.content
            assert masked != today
            part = c.get(
                "/api/cameras/h264aac/recording.mp4",
                params=span,
                headers={"Range": "bytes=100-1099", "If-Range": r.headers["etag"]},
            )
            assert part.status_code == 206 and part.content == masked[100:1100]
            hour = {"start": first.start_ms, "end": first.start_ms + 3_600_000}
            too_long = c.get("/api/cameras/h264aac/recording.mp4", params=hour)
            assert too_long.status_code == 422 and "15 minutes" in too_long.text
            again = c.get(
                "/api/cameras/h264aac/recording.mp4",
                params=span,
                headers={"If-None-Match": r.headers["etag"]},
            )
            assert again.status_code == 304
        entries = [
            e for e in api.store.audit.entries() if e.actor == "vera" and e.action == "playback"
        ]
        assert entries and all(e.detail.get("masked") is True for e in entries)
        # A picture finding's snapshot (issue 18): on the timeline, masked for vera.
        with av.open(io.BytesIO(today), "r") as container:
            frame = next(container.decode(video=0))
        jpeg = jpeg_snapshot(frame, width=frame.width)
        at = first.start_ms + 3_000
        snap = api.store.save_snapshot("h264aac", at, "covered", jpeg)
        event = api.store.pictures.open("h264aac", "covered", at, at + 30_000, 0.1, "t", snap)
        with api.as_user("vera") as c:
            tl = c.get("/api/cameras/h264aac/timeline", params=span).json()
            assert [(p["id"], p["kind"], p["snapshot"]) for p in tl["pictures"]] == [
                (event.id, "covered", True)
            ]
            url = f"/api/cameras/h264aac/pictures/{event.id}/snapshot.jpg"
            seen = c.get(url)
            assert seen.status_code == 200 and seen.headers["content-type"] == "image/jpeg"
            assert c.get(f"/api/cameras/bframes/pictures/{event.id}/snapshot.jpg").status_code in (
                403,
                404,
            )
        with api.as_user("root") as c:
            assert c.get(url).content == jpeg  # unmasked: the stored file itself
        with av.open(io.BytesIO(seen.content), "r") as container:
            shown = next(container.decode(video=0)).to_ndarray(format="gray").astype(np.int16)
        sh, sw = shown.shape
        assert shown[2 : sh // 2 - 2, 2 : sw // 2 - 2].max() <= 3
        assert np.abs(shown[sh // 2 + 2 :] - pictures_of(jpeg)[sh // 2 + 2 :]).mean() < 3
        # An export requested by a masked user: only the masked recording, the originals'
        # hashes in the manifest, and it says so.
        _eid, package = approved_export(api, export_body(span["start"], span["end"]))
        with zipfile.ZipFile(io.BytesIO(package)) as zf:
            names = zf.namelist()
            manifest = json.loads(zf.read("manifest.json"))
            exported = zf.read("recording.mp4")
            readme_text = zf.read("README.txt").decode()
            cover_text = zf.read("cover.html").decode()
        assert not [n for n in names if n.startswith("segments/")], names
        masks = manifest["privacy_masks"]
        assert masks["applied"] is True and masks["polygons"] == [[list(p) for p in MASK]]
        assert [o["sha256"] for o in masks["originals"]] == [
            s.sha256 for s in api.store.segments("h264aac", span["start"], span["end"])
        ]
        assert manifest["segments"] == []
        # The cover sheet says what this package holds, in both its languages: no segments/,
        # a masked re-encoded recording, the originals' hashes and the masked areas.
        for text in (readme_text, cover_text):
            assert "segments/" not in text
            assert "privacy masks applied" in text.lower()
            assert "已加隐私遮挡" in text and "re-encoded" in text and "重新编码" in text
            assert "(0,0) (0.5,0) (0.5,0.5) (0,0.5)" in text
            for o in masks["originals"]:
                assert o["sha256"] in text
        assert verify_package(write_tmp(tmp_path / "pkg.zip", package)).problems == []
    plain, hidden = pictures(today), pictures(masked)
    assert len(hidden) == len(plain) >= 50
    exported_pictures = pictures(exported)
    assert len(exported_pictures) >= 50
    for b in exported_pictures:
        assert b[2 : b.shape[0] // 2 - 2, 2 : b.shape[1] // 2 - 2].max() <= 3
    h, w = plain[0].shape
    for a, b in zip(plain, hidden, strict=True):
        inner = b[2 : h // 2 - 2, 2 : w // 2 - 2]
        assert inner.max() <= 3, inner.max()  # black (Y 16, full range 0)
        assert a[2 : h // 2 - 2, 2 : w // 2 - 2].mean() > 20  # there was a picture there
        assert np.abs(a[h // 2 + 2 :, :] - b[h // 2 + 2 :, :]).mean() < 2.0
        assert np.abs(a[:, w // 2 + 2 :] - b[:, w // 2 + 2 :]).mean() < 2.0
    for path, data in originals.items():
        assert path.read_bytes() == data  # the originals are never altered


def test_an_export_is_masked_for_whoever_it_goes_to(footage_template: Path, tmp_path: Path) -> None:
    """The package goes to its requester and its approver: it is masked unless both may see
    behind the masks, and a masked user (even an admin) never downloads an unmasked one."""
    root, (first, *_) = footage_copy(footage_template, tmp_path, "olga")
    span = {"start": first.start_ms + 2_000, "end": first.start_ms + 6_000}

    def build(api: Api) -> tuple[int, dict[str, Any]]:
        eid, package = approved_export(api, export_body(span["start"], span["end"]))
        with zipfile.ZipFile(io.BytesIO(package)) as zf:
            return eid, json.loads(zf.read("manifest.json"))

    for api in serve(root, [PrivacyMask(points=MASK)]):
        # The requester may see behind the masks, the approver may not: masked.
        eid, manifest = build(api)
        assert manifest.get("privacy_masks", {}).get("applied") is True, manifest.keys()
        assert manifest["segments"] == []
        with api.as_user("oscar") as oscar:
            assert oscar.get(f"/api/exports/{eid}/download").status_code == 200
        # Both may: the originals.
        api.store.accounts.set_unmasked("oscar", True, actor="test")
        eid, manifest = build(api)
        assert "privacy_masks" not in manifest and manifest["segments"]
        # Once the approver is masked again, and for a masked admin: refused, audited.
        api.store.accounts.set_unmasked("oscar", False, actor="test")
        for name in ("oscar", "root"):
            with api.as_user(name) as c:
                r = c.get(f"/api/exports/{eid}/download")
                assert r.status_code == 403 and "privacy-masked" in r.text, r.text
        refused = [
            e
            for e in api.store.audit.entries()
            if e.action == "export-download" and e.outcome == "refused"
        ]
        assert sorted(e.actor for e in refused) == ["oscar", "root"]
        with api.as_user("olga") as olga:
            assert olga.get(f"/api/exports/{eid}/download").status_code == 200


def test_masked_playback_streams_while_the_copy_is_being_made(
    footage_template: Path, tmp_path: Path
) -> None:
    """A masked user's playback begins before the masked copy of the whole range is encoded:
    the first bytes arrive while the job is held in progress (`ApiContext.mask_hold`, its
    unfinished file on disk, no finished copy yet); the stream, once let go, is a fragmented
    MP4 whose pictures are masked and otherwise intact; then the cached copy answers Range."""
    root, (first, *_) = footage_copy(footage_template, tmp_path, "root")
    span = {"start": first.start_ms + 2_000, "end": first.start_ms + 12_000}
    hold = threading.Event()
    cache = root / ".masked"
    for api in serve(root, [PrivacyMask(points=MASK)], mask_hold=hold):
        try:
            with api.as_user("root") as c:  # unmasked: today's bytes
                today = c.get("/api/cameras/h264aac/recording.mp4", params=span)
                assert today.status_code == 200
            with api.as_user("vera") as c:
                with c.stream("GET", "/api/cameras/h264aac/recording.mp4", params=span) as r:
                    assert r.status_code == 200, r.read()
                    assert r.headers["x-privacy-masks"] == "1"
                    assert r.headers["accept-ranges"] == "none"
                    chunks = r.iter_bytes()
                    got = bytearray(next(chunks))
                    # the copy is still being made: its unfinished file, no finished one
                    assert list(cache.glob("*.masked.tmp")) and not list(cache.glob("*.masked"))
                    assert b"ftyp" in got[:16]
                    hold.set()
                    for chunk in chunks:
                        got += chunk
                masked = bytes(got)
                finished = list(cache.glob("*.masked"))
                assert len(finished) == 1 and finished[0].read_bytes() == masked
                part = c.get(
                    "/api/cameras/h264aac/recording.mp4",
                    params=span,
                    headers={"Range": "bytes=100-1099", "If-Range": r.headers["etag"]},
                )
                assert part.status_code == 206 and part.content == masked[100:1100]
            entries = [
                e for e in api.store.audit.entries() if e.actor == "vera" and e.action == "playback"
            ]
            assert [e.detail.get("progressive") for e in entries] == [True, None]
            assert all(e.detail.get("masked") is True for e in entries)
        finally:
            hold.set()  # an encoder left held would outlive a failed test
    assert b"moof" in masked  # fragmented: each fragment was sent as it was encoded
    plain, hidden = pictures(today.content), pictures(masked)
    assert len(hidden) == len(plain) >= 50
    h, w = plain[0].shape
    for a, b in zip(plain, hidden, strict=True):
        assert b[2 : h // 2 - 2, 2 : w // 2 - 2].max() <= 3  # the masked quarter is black
        assert a[2 : h // 2 - 2, 2 : w // 2 - 2].mean() > 20
        assert np.abs(a[h // 2 + 2 :, :] - b[h // 2 + 2 :, :]).mean() < 2.0
        assert np.abs(a[:, w // 2 + 2 :] - b[:, w // 2 + 2 :]).mean() < 2.0


@pytest.mark.parametrize("masked", [False, True])
def test_an_h264_copy_of_h265_is_scaled_down_and_masked_when_asked(
    tmp_path: Path, masked: bool
) -> None:
    """The copy `recording.mp4?h264=true` plays for an H.265 recording (issue 17): H.264 at
    most `max_height` lines, same aspect, same pictures; the masks filled only if given."""
    src = tmp_path / "h265.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx265", rate=10)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        for i in range(10):
            grey = np.full((720, 1280, 3), 200, dtype=np.uint8)
            grey[:, :, 0] = (i * 20) % 256
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    dest = tmp_path / "copy.mp4"
    mask_file(str(src), dest, [PrivacyMask(points=MASK)] if masked else [], max_height=360)
    with av.open(str(dest)) as copy:
        video = copy.streams.video[0]
        assert video.codec_context.name == "h264"
        pictures = [f.to_ndarray(format="gray") for f in copy.decode(video)]
    assert len(pictures) == 10 and pictures[0].shape == (360, 640)
    corner = float(pictures[-1][:170, :310].mean())
    assert (corner < 30) == masked, corner
    assert float(pictures[-1][190:, 330:].mean()) > 100
