"""Pytest fixtures for the camera simulator, imported by conftest files and test modules.

This module owns where clips are cached for a test run and the lifetime of simulator processes
started for tests. Fixtures run on pytest's main thread.

- ``camsim_clips`` (session): the clip directory, encoded on first use and then reused across
  runs; ``NVR_CAMSIM_CLIPS`` overrides the default ``$XDG_CACHE_HOME/nvr-camsim``
  (``~/.cache/nvr-camsim``).
- ``camsim`` (function): a started `CameraSim` serving every mount on a free port, stopped
  after the test.
- ``quirks`` (module): a started `QuirkServer` (tests/camsim/quirks.py: the quirk camera's
  mounts, our own RTSP server in this process), stopped after the module's tests.

The first two skip, naming the Debian packages to install, when ``/usr/bin/python3`` cannot run
GStreamer's RTSP server.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.camsim import CameraSim, gst_rtsp_unavailable
from tests.camsim.clips import make_clips, make_quirk_clips
from tests.camsim.quirks import QuirkServer, clip_names

__all__ = ["camsim", "camsim_clips", "clips_cache_dir", "quirks"]


@functools.cache
def _unavailable() -> str | None:
    """The reason the server cannot run here, probed once per test process."""
    return gst_rtsp_unavailable()


def clips_cache_dir(fallback: Path) -> Path:
    """Where clips are cached: ``$NVR_CAMSIM_CLIPS``, the user cache, or `fallback`."""
    override = os.environ.get("NVR_CAMSIM_CLIPS")
    if override:
        return Path(override)
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    candidate = Path(cache_home) / "nvr-camsim"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError:
        return fallback
    return candidate if os.access(candidate, os.W_OK) else fallback


@pytest.fixture(scope="session")
def camsim_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of pre-encoded clips the simulator serves."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"camera simulator unavailable: {reason}")
    directory = clips_cache_dir(tmp_path_factory.getbasetemp().parent / "camsim-clips")
    make_clips(directory)
    return directory


@pytest.fixture
def camsim(camsim_clips: Path) -> Iterator[CameraSim]:
    """A running simulator with every mount; stopped when the test ends."""
    sim = CameraSim(camsim_clips)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def quirks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuirkServer]:
    clips = clips_cache_dir(tmp_path_factory.getbasetemp().parent / "camsim-clips")
    make_quirk_clips(clips, clip_names())
    with QuirkServer(clips) as server:
        yield server
