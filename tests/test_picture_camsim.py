"""Picture health end to end (issue 18): the GStreamer camera simulator serves a scene that a
command turns black, blurred, shifted and frozen at known times (`CameraSim.scene`, the scene
clips of tests/camsim/clips.py); real recorders record it over RTSP, and the picture monitor
(`nvr.ingest.picture.monitor`) judges the keyframes their packet taps hand it. Each condition
is raised as its kind within persist_seconds + 2 x check_seconds of the switch (by the times
the monitor recorded, plus the up to 1 s the switch waits for a keyframe), cleared after the
scene is normal again, and kept in the index with its JPEG snapshot beside the footage; a
second camera on the normal scene raises nothing over the whole test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from nvr.config.models import CameraConfig, PictureConfig
from nvr.ingest.picture.detector import COVERED, DEFOCUSED, FROZEN, OK, REPOINTED
from nvr.ingest.picture.monitor import PictureMonitor
from nvr.ingest.recorder import CameraRecorder
from nvr.ingest.sources import RtspOpener
from nvr.ingest.tap import PacketTap
from nvr.storage import SegmentStore
from nvr.storage.timestamps import iso, now_ms
from tests.camsim import CameraSim
from tests.camsim.clips import SCENES, make_scene_clips, scene_mount
from tests.recording_rig import wait_for
from tests.store_clock import NVR

pytestmark = pytest.mark.slow

SETTINGS = PictureConfig(
    check_seconds=2.0, persist_seconds=4.0, clear_seconds=4.0, learn_seconds=6.0
)
SWITCH_S = 1.0
"""A scene switch waits for the next keyframe (one a second)."""


@pytest.fixture
def scene_clips(camsim_clips: Path) -> Path:
    make_scene_clips(camsim_clips)
    return camsim_clips


class Cameras:
    def __init__(self, root: Path, sim: CameraSim) -> None:
        self.store = SegmentStore(root, f"sqlite:///{root / 'index.db'}")
        self.monitor = PictureMonitor(self.store)
        self.recorders: list[CameraRecorder] = []
        for name in ("tamper", "calm"):
            tap = PacketTap(name)
            url = sim.url(name)
            opener = RtspOpener(
                url, username=None, password=None, transport="tcp", timeout_s=3.0, camera=name
            )
            rec = CameraRecorder(
                name, opener, self.store, segment_seconds=10, stall_seconds=3.0, tap=tap
            )
            self.recorders.append(rec)
            self.monitor.watch(CameraConfig(name=name, url=url, picture=SETTINGS), tap)
            rec.start()
        self.monitor.start()

    def state(self, name: str) -> str:
        return self.monitor.states()[name].state

    def stop_recording(self) -> None:
        for rec in self.recorders:
            rec.stop()
        for rec in self.recorders:
            rec.thread.join(15)

    def close(self) -> None:
        self.stop_recording()
        self.monitor.stop()
        self.monitor.thread.join(15)
        self.store.close()


@pytest.fixture
def cameras(scene_clips: Path, tmp_path: Path) -> Iterator[tuple[CameraSim, Cameras]]:
    sim = CameraSim(scene_clips, mounts=[scene_mount("tamper"), scene_mount("calm", ("normal",))])
    sim.start()
    cams = None
    try:
        cams = Cameras(tmp_path / "store", sim)
        yield sim, cams
    finally:
        if cams is not None:
            cams.close()
        sim.stop()


def test_tampering_is_raised_and_cleared_and_a_normal_scene_is_not(
    cameras: tuple[CameraSim, Cameras],
) -> None:
    sim, cams = cameras
    started = now_ms()
    wait_for(lambda: cams.state("tamper") == OK, 60, "the reference picture learned")
    wait_for(lambda: cams.state("calm") == OK, 30, "the calm camera's reference learned")
    expected = {"black": COVERED, "blur": DEFOCUSED, "shift": REPOINTED, "frozen": FROZEN}
    limit_ms = (SETTINGS.persist_seconds + 2 * SETTINGS.check_seconds + SWITCH_S) * 1000
    for scene, kind in expected.items():
        switched = now_ms()
        sim.scene("tamper", SCENES.index(scene))

        def raised(k: str = kind) -> bool:
            return cams.state("tamper") == k

        wait_for(raised, 60, f"{scene}: {kind} raised")
        back = now_ms()
        sim.scene("tamper", SCENES.index("normal"))
        wait_for(lambda: cams.state("tamper") == OK, 60, f"{scene}: {kind} cleared")
        found = cams.store.pictures.find("tamper", switched)
        assert [e.kind for e in found] == [kind], found
        event = found[0]
        assert switched <= event.start_ms <= event.raised_ms <= switched + limit_ms, (
            scene,
            event,
        )
        assert event.end_ms is not None
        assert back <= event.end_ms <= back + (SETTINGS.check_seconds + SWITCH_S) * 1000 + 500
        assert event.snapshot is not None
        jpeg = cams.store.snapshot_file(event.snapshot)
        assert jpeg is not None and jpeg.parent.parent.parent.parent.parent.name == "tamper"
        with av.open(str(jpeg)) as container:  # a real picture of the camera's size
            frame = next(container.decode(video=0))
            assert (frame.width, frame.height) == (640, 360)
    assert cams.store.pictures.find("calm") == []
    assert cams.monitor.states()["calm"].checks >= 20
    assert cams.monitor.dropped == 0

    # `nvr tamper-check` replays the detector over what was recorded and finds the same.
    cams.stop_recording()
    root = cams.store.root
    config = root.parent / "nvr.toml"
    picture = "\n".join(
        f"{k} = {float(getattr(SETTINGS, k))!r}"
        for k in ("check_seconds", "persist_seconds", "clear_seconds", "learn_seconds")
    )
    cams_toml = "".join(
        f'[[cameras]]\nname = "{n}"\nurl = "rtsp://127.0.0.1:9/{n}"\n[cameras.picture]\n{picture}\n'
        for n in ("tamper", "calm")
    )
    config.write_text(f'[storage]\nroot = "{root}"\n[retention]\ndays = 30\n{cams_toml}')
    span = ["--from", iso(started - 60_000), "--to", iso(now_ms() + 60_000)]

    def tamper_check(camera: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*NVR, "tamper-check", "-c", str(config), camera, *span],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    out = tamper_check("tamper")
    assert out.returncode == 1, out.stdout + out.stderr
    for kind in expected.values():
        assert f"  {kind} raised" in out.stdout, out.stdout
        assert f"  {kind} cleared" in out.stdout, out.stdout
    calm = tamper_check("calm")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    assert "0 findings" in calm.stdout and "state at the end: ok" in calm.stdout, calm.stdout
