"""Synthetic camera scenes for picture-health checks (issue 18): numpy only, any thread.

A `Scene` is a fixed, textured background (rectangles, bars, discs and a gradient, bigger
than the view so that a re-pointed camera sees new content at its edges) with two moving
objects, a lighting gain that drifts, and sensor noise. `picture(t)` renders the luma plane
at time `t` seconds; its keyword arguments make the tampered variants: `dark` (covered or
blacked out), `blur` (defocused), `shift`/`rotate` (re-pointed), `uniform` (no signal). A
frozen camera is the same picture again (`picture(t0)` for every t).

Used by the detector's unit tests (tests/test_picture.py), by the camera simulator's scene
clips (`tests.camsim.clips.SCENE_CLIPS`) and by bench/tamper.py.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
MARGIN = 0.25
"""The background extends this share of the view beyond each edge."""


def box_blur(img: F32, radius: int, passes: int = 3) -> F32:
    """Separable box blur, `passes` times (close to a Gaussian of sigma ~ radius)."""
    out = img.astype(np.float32)
    if radius <= 0:
        return out
    k = 2 * radius + 1
    for _ in range(passes):
        for axis in (0, 1):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (radius + 1, radius)
            c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
            if axis == 0:
                out = ((c[k:, :] - c[:-k, :]) / k).astype(np.float32)
            else:
                out = ((c[:, k:] - c[:, :-k]) / k).astype(np.float32)
    return out


class Scene:
    """One camera's view (see the module docstring)."""

    def __init__(self, width: int, height: int, seed: int = 3) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        mx, my = int(width * MARGIN), int(height * MARGIN)
        self.mx, self.my = mx, my
        bw, bh = width + 2 * mx, height + 2 * my
        ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float32)
        bg = 70 + 60 * (xs / bw) + 20 * np.sin(ys / bh * 5.0)
        for _ in range(60):
            w = int(rng.integers(bw // 30, bw // 6))
            h = int(rng.integers(bh // 30, bh // 5))
            x = int(rng.integers(0, bw - w))
            y = int(rng.integers(0, bh - h))
            bg[y : y + h, x : x + w] = float(rng.integers(20, 230))
        for _ in range(15):
            cx, cy = float(rng.integers(0, bw)), float(rng.integers(0, bh))
            r = float(rng.integers(bh // 30 + 2, bh // 8 + 3))
            bg[(xs - cx) ** 2 + (ys - cy) ** 2 < r * r] = float(rng.integers(20, 230))
        for i in range(8):  # thin bars: fine detail that defocus wipes out
            x = int(rng.integers(0, bw - 8))
            bg[:, x : x + max(1, bw // 300)] = 30.0 if i % 2 else 220.0
        self.background = bg.astype(np.float32)
        self._ys, self._xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.noise_rng = np.random.default_rng(seed + 1)

    def picture(
        self,
        t: float,
        *,
        noise: float = 3.0,
        lighting: float = 0.3,
        moving: bool = True,
        dark: bool = False,
        blur: int = 0,
        shift: tuple[float, float] = (0.0, 0.0),
        rotate: float = 0.0,
        uniform: float | None = None,
        light_period: float = 37.0,
    ) -> F32:
        """The luma plane (float32 0..255) at `t` seconds. `shift` is in shares of the
        width and height (at most `MARGIN`), `rotate` in degrees, `uniform` a grey level."""
        w, h = self.width, self.height
        if uniform is not None:
            flat = np.full((h, w), uniform, dtype=np.float32)
            return flat + self.noise_rng.normal(0, 0.5, (h, w)).astype(np.float32)
        if dark:
            black = np.full((h, w), 16.0, dtype=np.float32)
            return black + self.noise_rng.normal(0, 1.0, (h, w)).astype(np.float32)
        dx, dy = shift[0] * w, shift[1] * h
        if rotate:
            a = math.radians(rotate)
            cx, cy = w / 2, h / 2
            x = (self._xs - cx) * math.cos(a) - (self._ys - cy) * math.sin(a) + cx
            y = (self._xs - cx) * math.sin(a) + (self._ys - cy) * math.cos(a) + cy
        else:
            x, y = self._xs, self._ys
        xi = np.clip((x + self.mx + dx).astype(np.int32), 0, self.background.shape[1] - 1)
        yi = np.clip((y + self.my + dy).astype(np.int32), 0, self.background.shape[0] - 1)
        img = self.background[yi, xi].copy()
        if moving:  # a walker and a car, on paths periodic in 10 s
            for k, (size, speed) in enumerate(((h // 6, 0.1), (h // 4, 0.2))):
                phase = (t * speed + 0.3 * k) % 1.0
                bx = int((w - size) * (0.5 + 0.5 * math.sin(2 * math.pi * phase)))
                by = int((h - size) * (0.3 + 0.4 * k + 0.1 * math.cos(2 * math.pi * phase)))
                img[by : by + size, bx : bx + size // (2 - k)] = 200.0 - 150.0 * k
        if blur:
            img = box_blur(img, blur)
        gain = 1.0 + lighting * math.sin(2 * math.pi * t / light_period)
        img = img * np.float32(gain)
        if noise:
            img = img + self.noise_rng.normal(0, noise, (h, w)).astype(np.float32)
        out: F32 = np.clip(img, 0, 255).astype(np.float32)
        return out
