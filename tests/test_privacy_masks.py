"""Privacy masks (issue 18, R10): a user without the `unmasked` permission plays a camera's
footage as a re-encoded copy with the polygons filled black (decoded: the masked area black,
the rest the same picture); a user with it gets exactly the bytes of today's playback; the
originals are untouched; masked playback is audited as such."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from nvr.api.services import ApiContext
from nvr.config.models import CameraConfig, PrivacyMask
from nvr.storage import SegmentStore
from tests.api_rig import (
    SYNCHRONISED,
    Api,
    ServerThread,
    footage_end,
    free_port,
    make_config,
    open_store,
)

MASK = [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)]  # the top left quarter


def serve(root: Path, masks: list[PrivacyMask]) -> Iterator[Api]:
    offset = time.time_ns() // 1_000_000 - (footage_end(root) + 60_000)
    store = open_store(root, clock=lambda: time.time_ns() // 1_000_000 - offset)
    config = make_config(root, free_port())
    cams = [
        c.model_copy(update={"privacy_masks": masks}) if c.name == "h264aac" else c
        for c in config.cameras
    ]
    config = config.model_copy(update={"cameras": cams})
    server = ServerThread(ApiContext(config=config, store=store, server_clock=lambda: SYNCHRONISED))
    try:
        server.start()
        yield Api(server.base, store, root, config, server)
    finally:
        server.stop()
        store.close()


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
    cam = CameraConfig(name="c", url="rtsp://127.0.0.1/x", privacy_masks=[{"points": MASK}])
    assert cam.privacy_masks[0].points[1] == (0.5, 0.0)


def test_masked_users_see_the_areas_filled_and_others_todays_bytes(
    footage_template: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(footage_template, root)
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        store.accounts.set_unmasked("root", True, actor="test")
        first = store.segments("h264aac")[0]
        originals = {s.path: s.path.read_bytes() for s in store.segments("h264aac")}
    finally:
        store.close()
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
    plain, hidden = pictures(today), pictures(masked)
    assert len(hidden) == len(plain) >= 50
    h, w = plain[0].shape
    for a, b in zip(plain, hidden, strict=True):
        inner = b[2 : h // 2 - 2, 2 : w // 2 - 2]
        assert inner.max() <= 3, inner.max()  # black (Y 16, full range 0)
        assert a[2 : h // 2 - 2, 2 : w // 2 - 2].mean() > 20  # there was a picture there
        assert np.abs(a[h // 2 + 2 :, :] - b[h // 2 + 2 :, :]).mean() < 2.0
        assert np.abs(a[:, w // 2 + 2 :] - b[:, w // 2 + 2 :]).mean() < 2.0
    for path, data in originals.items():
        assert path.read_bytes() == data  # the originals are never altered
