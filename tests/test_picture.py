"""The picture-health detector (`nvr.ingest.picture.detector`) on synthetic scenes
(tests/camsim/scenes.py) at the analysis size, on a simulated clock: normal scenes with moving
content, lighting changes and noise raise nothing; black, blur, shift, rotation, a frozen
picture and a uniform colour are each raised within `persist_seconds + 2 x check_seconds` of
their start, as the right kind, and cleared after they end."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from nvr.config.models import PictureConfig
from nvr.ingest.picture.detector import (
    COVERED,
    DEFOCUSED,
    FROZEN,
    LEARNING,
    NO_SIGNAL,
    OK,
    REPOINTED,
    PictureChange,
    PictureDetector,
)
from tests.camsim.scenes import Scene

W, H = 256, 144
SETTINGS = PictureConfig()  # the defaults: check 10 s, persist 30 s, clear 20 s, learn 60 s
CHECK = SETTINGS.check_seconds
Picture = Callable[[float], np.ndarray]


def run(det: PictureDetector, picture: Picture, start: float, end: float) -> list[PictureChange]:
    changes: list[PictureChange] = []
    t = start
    while t < end:
        changes += det.feed(t, picture(t))
        t += CHECK
    return changes


def learned(scene: Scene, settings: PictureConfig = SETTINGS) -> PictureDetector:
    det = PictureDetector(settings)
    changes = run(det, scene.picture, 0, 120)
    assert [(c.previous, c.state) for c in changes] == [(LEARNING, OK)]
    assert det.state == OK
    return det


def test_normal_scene_raises_nothing_for_half_an_hour() -> None:
    scene = Scene(W, H)
    det = PictureDetector(SETTINGS)

    def normal(t: float) -> np.ndarray:
        noise = 2.0 + 6.0 * (int(t / 300) % 2)  # the sensor's noise doubles every 5 minutes
        return scene.picture(t, noise=noise, lighting=0.35)

    changes = run(det, normal, 0, 1800)
    assert [(c.previous, c.state) for c in changes] == [(LEARNING, OK)]
    assert changes[0].at >= SETTINGS.learn_seconds
    assert det.state == OK and det.pictures == 180


def test_lights_switched_and_dusk_raise_nothing() -> None:
    scene = Scene(W, H)
    det = learned(scene)
    # Lights switched off in part of the day: the picture drops to 60 % at once ...
    changes = run(det, lambda t: scene.picture(t, lighting=0.0) * 0.6, 120, 400)

    # ... then dusk: the picture fades to a night picture (darker, noisier, still a scene).
    def dusk(t: float) -> np.ndarray:
        fade = max(0.25, 1.0 - (t - 400) / 600)
        return scene.picture(t, lighting=0.0, noise=4.0) * fade

    changes += run(det, dusk, 400, 1600)
    assert changes == []
    assert set(det.refs) == {"day", "night"}  # the night reference was learned apart
    # Covering the camera at night is still seen.
    changes = run(det, lambda t: scene.picture(t, dark=True), 1600, 1700)
    assert [c.state for c in changes] == [COVERED]


@pytest.mark.parametrize(
    ("kind", "tampered"),
    [
        (COVERED, lambda s, t: s.picture(t, dark=True)),
        (NO_SIGNAL, lambda s, t: s.picture(t, uniform=110.0)),
        (DEFOCUSED, lambda s, t: s.picture(t, blur=2)),
        (REPOINTED, lambda s, t: s.picture(t, shift=(0.15, 0.0))),
        (REPOINTED, lambda s, t: s.picture(t, shift=(0.0, -0.2))),
        (REPOINTED, lambda s, t: s.picture(t, rotate=12.0)),
        (FROZEN, lambda s, t: s.picture(130.0)),
    ],
    ids=["black", "uniform", "blur", "shift-x", "tilt", "rotate", "freeze"],
)
def test_each_condition_is_raised_then_cleared(
    kind: str, tampered: Callable[[Scene, float], np.ndarray]
) -> None:
    scene = Scene(W, H)
    det = learned(scene)
    frozen = tampered(scene, 130.0)  # a frozen camera sends one picture over and over
    begin, end = 125.0, 305.0  # between two checks, as real tampering is

    def picture(t: float) -> np.ndarray:
        if not begin <= t < end:
            return scene.picture(t)
        return frozen if kind == FROZEN else tampered(scene, t)

    changes = run(det, picture, 120, 500)
    assert [(c.previous, c.state) for c in changes] == [(OK, kind), (kind, OK)], changes
    raised, cleared = changes
    limit = SETTINGS.persist_seconds + 2 * SETTINGS.check_seconds
    assert begin < raised.at <= begin + limit
    assert begin <= raised.onset <= begin + CHECK
    assert raised.score is not None and raised.detail
    assert end < cleared.at <= end + SETTINGS.clear_seconds + 2 * CHECK
    assert end <= cleared.onset <= end + CHECK


def test_a_short_blackout_is_not_raised() -> None:
    scene = Scene(W, H)
    det = learned(scene)
    short = 125.0, 125.0 + SETTINGS.persist_seconds - CHECK  # seen on fewer checks than persist
    changes = run(det, lambda t: scene.picture(t, dark=short[0] <= t < short[1]), 120, 400)
    assert changes == []


def test_hysteresis_keeps_a_condition_that_hovers_at_its_threshold() -> None:
    scene = Scene(W, H)
    det = learned(scene)
    # Defocused well below the threshold, then hovering just above it (inside the margin).
    ratio = SETTINGS.defocus_ratio
    assert det.refs["day"].measures.sharpness > 0
    changes = run(det, lambda t: scene.picture(t, blur=2), 120, 200)
    assert [c.state for c in changes] == [DEFOCUSED]
    base = det.last.sharpness if det.last else 0.0
    assert base / det.refs["day"].measures.sharpness < ratio

    def hovering(t: float) -> np.ndarray:
        return scene.picture(t, blur=1) if int(t / CHECK) % 2 else scene.picture(t, blur=2)

    assert run(det, hovering, 200, 300) == []
    assert det.state == DEFOCUSED


def test_covered_from_the_start_is_raised_while_learning() -> None:
    scene = Scene(W, H)
    det = PictureDetector(SETTINGS)
    changes = run(det, lambda t: scene.picture(t, dark=True), 0, 60)
    assert [(c.previous, c.state) for c in changes] == [(LEARNING, COVERED)]
    # Uncovered: cleared to learning, and the reference is learned from the real scene only.
    changes = run(det, scene.picture, 60, 200)
    assert [(c.previous, c.state) for c in changes] == [(COVERED, LEARNING), (LEARNING, OK)]
    assert det.refs["day"].measures.entropy > 4.0


def test_a_condition_replaced_by_another_ends_then_starts() -> None:
    scene = Scene(W, H)
    det = learned(scene)
    changes = run(det, lambda t: scene.picture(t, blur=2), 120, 200)
    changes += run(det, lambda t: scene.picture(t, dark=True), 200, 300)
    assert [(c.previous, c.state) for c in changes] == [
        (OK, DEFOCUSED),
        (DEFOCUSED, OK),
        (OK, COVERED),
    ]
    assert changes[1].at == changes[2].at


def smpte_bars(noise: np.random.Generator) -> np.ndarray:
    """SMPTE-like colour bars (luma of the 75 % bars, the reverse bars, the PLUGE row) with
    the half grey level of encoding noise a decoded card has."""
    img = np.zeros((H, W), dtype=np.float32)
    top, mid = int(H * 0.67), int(H * 0.75)
    bars = [180, 162, 131, 112, 84, 65, 35]
    for i, level in enumerate(bars):
        x0, x1 = i * W // 7, (i + 1) * W // 7
        img[:top, x0:x1] = level
        img[top:mid, x0:x1] = bars[-1 - i] if i % 2 == 0 else 16
    for i, level in enumerate([29, 235, 44, 16, 16, 7, 16, 25, 16]):
        img[mid:, i * W // 9 : (i + 1) * W // 9] = level
    return img + noise.normal(0, 0.5, img.shape).astype(np.float32)


def no_video_card(noise: np.random.Generator) -> np.ndarray:
    """A camera's "NO VIDEO" screen: flat blue (luma 41) with white block letters."""
    img = np.full((H, W), 41.0, dtype=np.float32)
    stroke, top, bottom = 4, H // 2 - 12, H // 2 + 12
    x = W // 2 - 80
    for letter in "NO VIDEO":
        if letter != " ":
            img[top:bottom, x : x + stroke] = 235  # left stem
            img[top:bottom, x + 12 : x + 12 + stroke] = 235  # right stem
            img[top : top + stroke, x : x + 16] = 235  # top bar
            if letter in "DEO":
                img[bottom - stroke : bottom, x : x + 16] = 235
        x += 20
    return img + noise.normal(0, 0.5, img.shape).astype(np.float32)


@pytest.mark.parametrize("card", [smpte_bars, no_video_card], ids=["bars", "no-video"])
def test_a_test_card_is_no_signal(card: Callable[[np.random.Generator], np.ndarray]) -> None:
    """A test card is not a re-pointed camera: it is the camera's own "no signal"."""
    scene = Scene(W, H)
    det = learned(scene)
    rng = np.random.default_rng(7)
    begin, end = 125.0, 305.0

    def picture(t: float) -> np.ndarray:
        return card(rng) if begin <= t < end else scene.picture(t)

    changes = run(det, picture, 120, 500)
    assert [(c.previous, c.state) for c in changes] == [(OK, NO_SIGNAL), (NO_SIGNAL, OK)], changes
    raised, cleared = changes
    assert begin < raised.at <= begin + SETTINGS.persist_seconds + 2 * CHECK
    assert "test card" in raised.detail and raised.score is not None and raised.score > 0.8
    assert end < cleared.at <= end + SETTINGS.clear_seconds + 2 * CHECK
    # While learning, too: a camera that starts on its card never learns the card.
    det = PictureDetector(SETTINGS)
    changes = run(det, lambda _t: card(rng), 0, 60)
    assert [(c.previous, c.state) for c in changes] == [(LEARNING, NO_SIGNAL)]
    assert det.refs == {}


@pytest.mark.parametrize(
    "moved",
    [
        {"shift": (0.05, 0.0)},
        {"shift": (-0.05, 0.0)},
        {"shift": (0.0, 0.05)},
        {"shift": (0.0, -0.05)},
        {"rotate": 5.0},
        {"rotate": -5.0},
    ],
    ids=["right-5%", "left-5%", "down-5%", "up-5%", "rotate+5", "rotate-5"],
)
def test_a_small_repointing_is_raised(moved: dict[str, object]) -> None:
    """A 5 % shift or a 5 degree turn, either way, at the defaults."""
    scene = Scene(W, H)
    det = learned(scene)
    changes = run(det, lambda t: scene.picture(t, **moved), 125, 300)  # type: ignore[arg-type]
    assert [(c.previous, c.state) for c in changes] == [(OK, REPOINTED)], changes
    assert changes[0].at <= 125 + SETTINGS.persist_seconds + 2 * CHECK
