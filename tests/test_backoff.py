"""Reconnect back-off and rotation stagger: pure decisions, no clock needed."""

from __future__ import annotations

import subprocess
import sys

from nvr.ingest.recorder import Backoff, stagger_phase


def test_backoff_doubles_to_cap_and_never_gives_up() -> None:
    b = Backoff()
    delays = [b.failure(connected_for=0.0) for _ in range(12)]
    assert delays[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert delays[6:] == [10.0] * 6


def test_backoff_resets_after_a_stable_minute() -> None:
    b = Backoff()
    for _ in range(5):
        b.failure(connected_for=1.0)
    assert b.failure(connected_for=59.0) == 10.0  # not stable long enough
    assert b.failure(connected_for=60.0) == 0.5


def test_stagger_spreads_cameras_over_half_a_segment() -> None:
    names = [f"cam{i:02d}" for i in range(32)]
    phases = [stagger_phase(n, 60) for n in names]
    assert all(0 <= p < 30 for p in phases)
    assert len({round(p, 1) for p in phases}) >= 28  # distinct rotation instants


def test_stagger_is_the_same_in_another_process() -> None:
    """A restart (a new interpreter, another hash seed) rotates each camera at the same phase,
    so a restart does not bunch rotations together; `hash()` would fail this."""
    names = ["gate", "lobby", "cam07", "门口"]
    here = [stagger_phase(n, 60) for n in names]
    code = (
        "import sys; from ingest.recorder import stagger_phase; "
        "print(repr([stagger_phase(n, 60) for n in sys.argv[1:]]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, *names],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == repr(here)
