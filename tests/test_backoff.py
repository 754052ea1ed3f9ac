"""Reconnect back-off and rotation stagger: pure decisions, no clock needed."""

from __future__ import annotations

from ingest.recorder import Backoff, stagger_phase


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
    assert stagger_phase("gate", 60) == stagger_phase("gate", 60)  # stable across restarts
