"""Picture findings in the store (issue 18): rows in `picture_events`, snapshot JPEGs beside
the footage of their hour, deleted by the purge that deletes that footage (and never before:
the delete door's window applies to the footage), the finding rows kept without them. And the
supervisor's picture monitor across reloads."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from nvr.config import NvrConfig
from nvr.config.models import CameraConfig, PictureConfig, StorageConfig
from nvr.ingest.picture import references
from nvr.ingest.picture.monitor import PictureMonitor
from nvr.ingest.supervisor import Supervisor
from nvr.ingest.tap import PacketTap, TapFrame, TapStream, tap_stream
from nvr.retention import RetentionService
from nvr.storage import SegmentStore
from nvr.storage.timestamps import DAY_MS
from tests.camsim.scenes import Scene
from tests.recording_rig import wait_for
from tests.store_clock import NVR, T0, FakeClock, add_segment, open_store


def test_snapshots_are_purged_with_their_footage(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    store = open_store(tmp_path / "store", clock)
    try:
        for day in range(40):
            add_segment(store, "cam", T0 + day * DAY_MS)  # 1 s of footage a day
        inside = store.save_snapshot("cam", T0 + 500, "covered", b"\xff\xd8jpeg-1")
        after = store.save_snapshot("cam", T0 + 5_000, "frozen", b"\xff\xd8jpeg-2")
        young = store.save_snapshot("cam", T0 + 35 * DAY_MS + 500, "repointed", b"\xff\xd8j3")
        assert Path(inside).parent == Path(after).parent  # the hour folder of day 0
        assert inside.endswith(".covered.jpg") and inside.startswith("cam/")
        rows = [
            store.pictures.open("cam", kind, at, at + 30_000, 0.1, "test", snap)
            for kind, at, snap in (
                ("covered", T0 + 500, inside),
                ("frozen", T0 + 5_000, after),
                ("repointed", T0 + 35 * DAY_MS + 500, young),
            )
        ]
        store.pictures.close(rows[0].id, T0 + 60_000)
        clock.now = T0 + 40 * DAY_MS
        service = RetentionService(NvrConfig(storage=StorageConfig(root=store.root)), store)
        assert service.purge_once() == 10  # days 0..9
        assert store.snapshot_file(inside) is None
        assert store.snapshot_file(after) is None  # no footage left in its hour
        assert not (store.root / inside).parent.exists()  # the emptied folders went too
        kept = store.snapshot_file(young)
        assert kept is not None and kept.read_bytes() == b"\xff\xd8j3"
        found = store.pictures.find("cam")
        assert [(e.kind, e.snapshot) for e in found] == [
            ("covered", None),
            ("frozen", None),
            ("repointed", young),
        ]
        assert found[0].end_ms == T0 + 60_000 and found[1].end_ms is None
        assert store.pictures.close_open("cam", clock.now, "ended: test") == 2
        assert all(e.end_ms is not None for e in store.pictures.find("cam"))
        assert store.snapshot_file("../../etc/passwd") is None
    finally:
        store.close()


async def test_a_reload_of_picture_settings_alone_restarts_no_recorder(tmp_path: Path) -> None:
    """Tuning `[cameras.picture]` retunes the checks at once (no gap in the footage); any other
    change of the camera restarts its recorder as before; a camera removed is forgotten."""
    root = tmp_path / "store"
    cam = CameraConfig(name="demo", url="builtin:testpattern", segment_seconds=10)
    config = NvrConfig(storage=StorageConfig(root=root, reserve_bytes=0), cameras=[cam])
    store = SegmentStore(root, config.storage.index_url())
    supervisor = Supervisor(config, store)
    supervisor.start()
    try:
        first = supervisor.recorders["demo"]
        assert supervisor.picture_states()["demo"].state == "learning"
        tuned = cam.model_copy(update={"picture": PictureConfig(persist_seconds=5.0)})
        await supervisor.reconfigure(config.model_copy(update={"cameras": [tuned]}))
        assert supervisor.recorders["demo"] is first
        watched = supervisor.pictures._cameras["demo"]
        assert watched.settings.persist_seconds == 5.0
        assert watched.detector.settings.persist_seconds == 5.0
        moved = tuned.model_copy(update={"segment_seconds": 20})
        await supervisor.reconfigure(config.model_copy(update={"cameras": [moved]}))
        assert supervisor.recorders["demo"] is not first
        off = moved.model_copy(update={"picture": PictureConfig(enabled=False)})
        await supervisor.reconfigure(config.model_copy(update={"cameras": [off]}))
        assert "demo" not in supervisor.picture_states()
        assert supervisor.tap("demo").subscribers == 0
    finally:
        await supervisor.stop()
        store.close()


def _keyframes(count: int, blur: int = 0) -> tuple[TapStream, list[bytes]]:
    """`count` H.264 IDR access units (Annex B, parameter sets in band) of a moving scene
    (blurred by `blur`: a defocused camera)."""
    ctx = av.CodecContext.create("libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = 320, 180, "yuv420p"
    ctx.time_base = Fraction(1, 10)
    ctx.gop_size = 1
    ctx.options = {"preset": "ultrafast", "x264-params": "keyint=1:repeat-headers=1"}
    scene = Scene(320, 180)
    chroma = np.full((90, 320), 128, dtype=np.uint8)
    units: list[bytes] = []
    for i in range(count):
        y = np.clip(scene.picture(float(i), blur=blur), 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
        frame.pts = i
        units += [bytes(p) for p in ctx.encode(frame)]
    units += [bytes(p) for p in ctx.encode(None)]
    return tap_stream("h264", 320, 180, b"", Fraction(1, 90_000)), units


def test_the_monitor_drops_the_oldest_when_behind_and_survives_bad_data(tmp_path: Path) -> None:
    """The recorder's side only queues (bounded, oldest dropped); the worker decodes each
    keyframe alone; an undecodable one is skipped (logged once), the next is checked."""
    clock = FakeClock(T0)
    store = open_store(tmp_path / "store", clock)
    monitor = PictureMonitor(store, wall_ms=clock, queue_size=4, nice=0)
    tap = PacketTap("cam")
    monitor.watch(
        CameraConfig(
            name="cam",
            url="rtsp://127.0.0.1:9/cam",
            picture=PictureConfig(check_seconds=1.0, learn_seconds=2.0),
        ),
        tap,
    )
    stream, units = _keyframes(8)
    try:
        for i, unit in enumerate(units):  # the worker is not running yet: it is "behind"
            tap.publish(TapFrame(stream, unit, True, i, i, 9000, float(i)))
        assert monitor.dropped == 4 and not monitor.idle()
        monitor.start()
        wait_for(monitor.idle, 30, "the queued keyframes checked")
        status = monitor.states()["cam"]
        assert status.checks == 4 and status.state == "ok" and status.cpu_seconds > 0
        tap.publish(TapFrame(stream, b"\x00\x00\x01\x65garbage", True, 9, 9, 9000, 9.0))
        tap.publish(TapFrame(stream, units[0], True, 10, 10, 9000, 10.0))
        tap.publish(TapFrame(stream, units[1], True, 10, 10, 9000, 10.5))  # too soon: skipped
        wait_for(monitor.idle, 30, "the bad and the good keyframe handled")
        assert monitor.states()["cam"].checks == 5
    finally:
        monitor.stop()
        monitor.thread.join(10)
        store.close()


def test_status_shows_an_open_finding_from_the_index(tmp_path: Path) -> None:
    """With the daemon stopped, `nvr status` still shows a camera's last picture finding from
    the index: an open one as a WARNING line."""
    root = tmp_path / "store"
    store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
    try:
        at = store.now() - 60_000
        store.pictures.open("gate", "covered", at, at + 30_000, 0.1, "dark and flat", None)
        old = store.pictures.open("yard", "frozen", at - 90_000, at - 60_000, 0.0, "same", None)
        store.pictures.close(old.id, at - 30_000)
    finally:
        store.close()
    config = tmp_path / "nvr.toml"
    config.write_text(
        f'[storage]\nroot = "{root}"\n'
        '[[cameras]]\nname = "gate"\nurl = "rtsp://127.0.0.1:9/gate"\n'
        '[[cameras]]\nname = "yard"\nurl = "rtsp://127.0.0.1:9/yard"\n'
    )
    out = subprocess.run(
        [*NVR, "--utc", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "  WARNING picture: covered since " in out.stdout, out.stdout + out.stderr
    assert "dark and flat" in out.stdout
    assert "  picture: last finding frozen " in out.stdout, out.stdout


def test_references_outlive_a_restart(tmp_path: Path) -> None:
    """A camera's learned references are kept in the store and reloaded by the next run's
    monitor: a camera defocused while the daemon was down is raised, not learned as normal."""
    clock = FakeClock(T0)
    store = open_store(tmp_path / "store", clock)
    settings = PictureConfig(
        check_seconds=1.0, learn_seconds=2.0, persist_seconds=2.0, clear_seconds=2.0
    )
    cam = CameraConfig(name="cam", url="rtsp://127.0.0.1:9/cam", picture=settings)
    stream, units = _keyframes(6)
    _, blurred = _keyframes(8, blur=3)
    try:
        first = PictureMonitor(store, wall_ms=clock, nice=0)
        tap = PacketTap("cam")
        first.watch(cam, tap)
        first.start()
        for i, unit in enumerate(units):
            tap.publish(TapFrame(stream, unit, True, i, i, 9000, float(i)))
            wait_for(first.idle, 30, "the keyframe checked")
        assert first.states()["cam"].state == "ok"
        first.stop()
        first.thread.join(10)
        saved = references.load(store.root, "cam")
        assert set(saved) == {"day"} and saved["day"].picture.shape == (72, 128)
        # The next run: judged against the saved reference at once.
        second = PictureMonitor(store, wall_ms=clock, nice=0)
        tap = PacketTap("cam")
        second.watch(cam, tap)
        assert second.states()["cam"].state == "ok"
        second.start()
        for i, unit in enumerate(blurred):
            tap.publish(TapFrame(stream, unit, True, i, i, 9000, 100.0 + i))
            wait_for(second.idle, 30, "the keyframe checked")
        assert second.states()["cam"].state == "defocused"
        assert [e.kind for e in store.pictures.find("cam")] == ["defocused"]
        second.stop()
        second.thread.join(10)
        # A damaged file is no reference: the camera learns afresh.
        references.path_of(store.root, "cam").write_bytes(b"not numpy")
        assert references.load(store.root, "cam") == {}
    finally:
        store.close()
