"""Shared fixtures: the loopback RTSP camera simulator (see tests/camsim)."""

from tests.camsim.fixtures import camsim, camsim_clips

__all__ = ["camsim", "camsim_clips"]
