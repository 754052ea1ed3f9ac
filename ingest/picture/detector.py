"""`PictureDetector`: one camera's picture health from occasional small grey pictures.

Pure numpy and pure decisions: no PyAV, no threads, no clock of its own (each picture comes
with its time in seconds), so unit tests drive it with synthetic scenes and replay drives it
with recorded footage. It runs on whatever thread calls `feed` (the `picture-check` worker in
the daemon, the CLI's thread in `nvr tamper-check`).

Each picture is measured (`measure`: brightness, contrast, histogram entropy, sharpness) and
judged, in this order of precedence:

- **no-signal**: a uniform picture (contrast below `uniform_contrast`) that is not dark: a
  blue or grey "no video" screen; or a test card (colour bars, a flat "NO VIDEO" screen with
  text): a picture made of a few flat regions (`card`: at least `card_flat_fraction` of it
  without gradient, nearly all of it in a few grey levels) that stays the same between checks;
- **covered**: dark and flat (below `dark_brightness` and `covered_contrast`; a uniform dark
  picture too), or its histogram entropy collapsed below `covered_entropy_ratio` of the
  reference's;
- **frozen**: the same picture as the previous check (mean difference below
  `frozen_difference`) while keyframes keep arriving;
- **defocused**: sharpness (Laplacian energy over contrast, so lighting does not move it)
  below `defocus_ratio` of the reference's;
- **repointed**: the scene no longer lies where the reference has it: zero-shift correlation
  with the reference picture below `match_min` (a turn, a tilt, a rotation, another scene),
  or phase correlation finds it shifted by more than `shift_fraction` of the width or the
  height, or it matches the reference turned by `rotation_degrees` or more (about the
  centre, every 2 degrees up to 20) clearly better than unturned.

References are the camera's own: learned from normal pictures over its first `learn_seconds`
(kept apart for day and night by brightness, `night_brightness`), then drifting slowly towards
what it sees while healthy (time constant `refresh_hours`). A finding is raised only after it
has lasted `persist_seconds`, and cleared once it has been absent `clear_seconds`; while it is
raised its own threshold is relaxed by `hysteresis`, so a picture hovering at the threshold
does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from nvr.config.models import PictureConfig

F32 = npt.NDArray[np.float32]

OK = "ok"
LEARNING = "learning"
NO_SIGNAL = "no-signal"
COVERED = "covered"
FROZEN = "frozen"
DEFOCUSED = "defocused"
REPOINTED = "repointed"
CONDITIONS = (NO_SIGNAL, COVERED, FROZEN, DEFOCUSED, REPOINTED)
"""In order of precedence: the first one found is the picture's finding."""
STATES = (OK, LEARNING, *CONDITIONS)

HIST_BINS = 64
MIN_LEARN_PICTURES = 3


@dataclass(frozen=True)
class Measures:
    """What one small grey picture looks like."""

    brightness: float
    """Mean grey level, 0..255."""
    contrast: float
    """Standard deviation of the grey levels."""
    entropy: float
    """Of the 64-bin grey histogram, in bits (0..6)."""
    sharpness: float
    """Mean squared Laplacian over variance: edge energy that lighting does not change."""


def measure(grey: F32) -> Measures:
    mean = float(grey.mean())
    var = float(grey.var())
    hist, _ = np.histogram(grey, bins=HIST_BINS, range=(0.0, 256.0))
    p = hist[hist > 0].astype(np.float64) / grey.size
    entropy = float(-(p * np.log2(p)).sum())
    lap = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    sharp = float(np.mean(lap * lap)) / (var + 1.0)
    return Measures(mean, var**0.5, entropy, sharp)


CARD_FLAT_STEP = 1.5
"""Grey levels between neighbours that still count as flat (a card's encoding noise)."""
CARD_LEVELS = 16
CARD_LEVEL_SHARE = 0.9
"""A card: its `CARD_LEVELS` fullest of the 64 histogram bins hold this share of it."""
CARD_STATIC = 2.0
"""... and it differs from the previous check by less than this (mean grey levels)."""


def card(grey: F32) -> tuple[float, float]:
    """(flat share, share in the fullest few grey levels) of a picture: both near 1 for a
    test card or a "no video" screen (a few flat regions), far lower for a camera's scene
    (texture, sensor noise, gradients spread over many levels)."""
    dx = np.abs(grey[:-1, 1:] - grey[:-1, :-1])
    dy = np.abs(grey[1:, :-1] - grey[:-1, :-1])
    flat = float(np.mean((dx < CARD_FLAT_STEP) & (dy < CARD_FLAT_STEP)))
    hist, _ = np.histogram(grey, bins=HIST_BINS, range=(0.0, 256.0))
    levels = float(np.sort(hist)[-CARD_LEVELS:].sum()) / grey.size
    return flat, levels


def _small(grey: F32) -> F32:
    """Half size (2x2 means): what the scene match compares."""
    h, w = (grey.shape[0] // 2) * 2, (grey.shape[1] // 2) * 2
    g = grey[:h, :w]
    out: F32 = 0.25 * (g[0::2, 0::2] + g[1::2, 0::2] + g[0::2, 1::2] + g[1::2, 1::2])
    return out


def correlation(a: F32, b: F32) -> float:
    """Zero-shift normalised cross-correlation (-1..1; gain and offset do not change it)."""
    da = a - a.mean()
    db = b - b.mean()
    den = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum()) / den if den > 1e-6 else 0.0


def phase_shift(a: F32, b: F32) -> tuple[float, float, float]:
    """(dx, dy, peak): how far `a`'s content lies from `b`'s (pixels), by phase correlation
    with a Hann window; peak near 1 for a pure shift, near 0 for unrelated pictures."""
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fa = np.fft.rfft2((a - a.mean()) * win)
    fb = np.fft.rfft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= np.abs(cross) + 1e-9
    r = np.fft.irfft2(cross, s=(h, w))
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)
    dy = iy - h if iy > h // 2 else iy
    dx = ix - w if ix > w // 2 else ix
    return float(dx), float(dy), float(r[iy, ix])


ROTATION_STEP = 2
ROTATION_MAX = 20
"""Rotations tried against the reference: every `ROTATION_STEP` degrees up to this."""
ROTATION_GATE = 0.9
"""The rotation search runs only when the zero-shift match is below this (a rotated scene
always lowers it; most healthy pictures do not)."""
ROTATION_GAIN = 0.1
"""A rotation is found when matching rotated beats the unrotated match by at least this."""

_rotation_maps: dict[tuple[int, int], list[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.bool_]]]]
_rotation_maps = {}


def _rotations(
    shape: tuple[int, int],
) -> list[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.bool_]]]:
    """Per angle (degrees, not 0): flat indices into a picture of `shape` that rotate it
    about its centre (nearest pixel), and which of its pixels have a source inside it."""
    maps = _rotation_maps.get(shape)
    if maps is None:
        h, w = shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        cx, cy = w / 2, h / 2
        maps = []
        for angle in range(-ROTATION_MAX, ROTATION_MAX + 1, ROTATION_STEP):
            if angle == 0:
                continue
            a = np.radians(angle)
            x = np.round((xs - cx) * np.cos(a) - (ys - cy) * np.sin(a) + cx).astype(np.intp)
            y = np.round((xs - cx) * np.sin(a) + (ys - cy) * np.cos(a) + cy).astype(np.intp)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            maps.append((angle, (y * w + x)[inside], inside))
        _rotation_maps[shape] = maps
    return maps


def rotation(a: F32, b: F32) -> tuple[int, float]:
    """(degrees, match): the rotation of `b` about its centre that best matches `a` and the
    correlation there, over the overlap (0 and `correlation(a, b)` when none beats it)."""
    best = (0, correlation(a, b))
    flat_b = b.reshape(-1)
    for angle, source, inside in _rotations((a.shape[0], a.shape[1])):
        c = correlation(a[inside], flat_b[source])
        if c > best[1]:
            best = (angle, c)
    return best


@dataclass
class Reference:
    """One learned picture of the scene (day or night) and its measures."""

    measures: Measures
    picture: F32
    """Half-size grey picture (mean of the learning pictures: moving content averages out)."""

    def blend(self, m: Measures, small: F32, alpha: float) -> None:
        """Drift towards a healthy picture (`alpha` of the way)."""
        r = self.measures
        self.measures = Measures(
            r.brightness + alpha * (m.brightness - r.brightness),
            r.contrast + alpha * (m.contrast - r.contrast),
            r.entropy + alpha * (m.entropy - r.entropy),
            r.sharpness + alpha * (m.sharpness - r.sharpness),
        )
        self.picture = self.picture + np.float32(alpha) * (small - self.picture)


@dataclass
class _Learner:
    started: float
    measures: list[Measures] = field(default_factory=list)
    total: F32 | None = None

    def add(self, m: Measures, small: F32) -> None:
        self.measures.append(m)
        self.total = small.copy() if self.total is None else self.total + small

    def reference(self) -> Reference:
        assert self.total is not None
        med = {
            k: float(np.median([getattr(m, k) for m in self.measures]))
            for k in ("brightness", "contrast", "entropy", "sharpness")
        }
        return Reference(Measures(**med), self.total / np.float32(len(self.measures)))


@dataclass(frozen=True)
class Finding:
    """A condition seen in one picture."""

    kind: str
    score: float
    """The measure that decided it (see `PictureChange.score`)."""
    detail: str


@dataclass(frozen=True)
class PictureChange:
    """The camera's picture state changed at `at` (seconds, the caller's clock)."""

    state: str
    """ok | learning | no-signal | covered | frozen | defocused | repointed"""
    previous: str
    at: float
    onset: float
    """When the new state's run began: the first picture that showed the condition (raised),
    or the first picture without it (cleared)."""
    score: float | None
    """Of a raised condition: no-signal contrast (a test card: its flat share); covered
    entropy over the reference's (or brightness when dark and flat); frozen mean difference;
    defocused sharpness over the reference's; repointed correlation with the reference."""
    detail: str


class PictureDetector:
    """One camera's picture state (see the module docstring). Not thread-safe: one caller."""

    def __init__(self, settings: PictureConfig) -> None:
        self.settings = settings
        self.state = LEARNING
        self.since: float | None = None
        """When the current state began (None before the first picture)."""
        self.refs: dict[str, Reference] = {}
        """By band: "day" | "night"."""
        self._learners: dict[str, _Learner] = {}
        self._previous: F32 | None = None
        self._previous_at = 0.0
        self._pending: Finding | None = None
        """The finding of the current run of pictures (None: healthy pictures)."""
        self._pending_since = 0.0
        self._absent_since: float | None = None
        """While a condition is raised: since when it has not been seen."""
        self.last: Measures | None = None
        self.last_finding: Finding | None = None
        self.pictures = 0
        self._refreshed: float | None = None

    def reconfigure(self, settings: PictureConfig) -> None:
        self.settings = settings

    def restore(self, refs: dict[str, Reference]) -> None:
        """Start from references learned before (a daemon restart): judged against them at
        once, state `ok` rather than `learning`."""
        self.refs = dict(refs)
        if self.refs and self.state == LEARNING:
            self.state = OK

    # --- judging one picture ------------------------------------------------------------------

    def _band(self, m: Measures) -> str:
        return "night" if m.brightness < self.settings.night_brightness else "day"

    def findings(self, grey: F32, m: Measures, small: F32) -> list[Finding]:
        """Every condition this picture shows, in order of precedence; the raised
        condition's own threshold relaxed by `hysteresis`."""
        s = self.settings
        active = self.state

        def relax(kind: str, value: float, upward: bool = True) -> float:
            if kind != active:
                return value
            return value * (1 + s.hysteresis) if upward else value * (1 - s.hysteresis)

        out: list[Finding] = []
        if m.contrast < relax(NO_SIGNAL, s.uniform_contrast) and m.brightness >= s.dark_brightness:
            out.append(
                Finding(
                    NO_SIGNAL,
                    m.contrast,
                    f"uniform picture: grey {m.brightness:.0f}, contrast {m.contrast:.1f}",
                )
            )
        elif m.brightness >= s.dark_brightness and (
            self._previous is not None
            and self._previous.shape == grey.shape
            and float(np.mean(np.abs(grey - self._previous))) < CARD_STATIC
        ):
            flat, levels = card(grey)
            if flat >= relax(NO_SIGNAL, s.card_flat_fraction, upward=False) and (
                levels >= CARD_LEVEL_SHARE
            ):
                out.append(
                    Finding(
                        NO_SIGNAL,
                        flat,
                        f"test card: {flat:.0%} flat, {levels:.0%} in {CARD_LEVELS} grey levels",
                    )
                )
        dark_flat = m.brightness < relax(COVERED, s.dark_brightness) and m.contrast < relax(
            COVERED, s.covered_contrast
        )
        band = self._band(m)
        ref = self.refs.get(band) or self.refs.get("day") or self.refs.get("night")
        if dark_flat:
            out.append(
                Finding(
                    COVERED,
                    m.brightness,
                    f"dark and flat: grey {m.brightness:.0f}, contrast {m.contrast:.1f}",
                )
            )
        elif ref is not None and ref.measures.entropy > 0:
            ratio = m.entropy / ref.measures.entropy
            if ratio < relax(COVERED, s.covered_entropy_ratio):
                out.append(
                    Finding(
                        COVERED,
                        ratio,
                        f"histogram entropy {m.entropy:.2f} bits, {ratio:.0%} of the reference's",
                    )
                )
        if self._previous is not None and self._previous.shape == grey.shape:
            diff = float(np.mean(np.abs(grey - self._previous)))
            if diff < relax(FROZEN, s.frozen_difference):
                out.append(Finding(FROZEN, diff, f"picture unchanged (mean difference {diff:.3f})"))
        ref = self.refs.get(band)
        if ref is not None and ref.picture.shape == small.shape:
            sharp = m.sharpness / ref.measures.sharpness if ref.measures.sharpness > 0 else 1.0
            if sharp < relax(DEFOCUSED, s.defocus_ratio):
                out.append(Finding(DEFOCUSED, sharp, f"sharpness {sharp:.0%} of the reference's"))
            match = correlation(small, ref.picture)
            dx, dy, peak = phase_shift(small, ref.picture)
            moved = max(abs(dx) / small.shape[1], abs(dy) / small.shape[0])
            shifted = peak > 0.1 and moved > relax(REPOINTED, s.shift_fraction, upward=False)
            angle, turned_match = 0, match
            if match < ROTATION_GATE and not shifted:
                angle, turned_match = rotation(small, ref.picture)
            turned = (
                abs(angle) >= relax(REPOINTED, s.rotation_degrees, upward=False)
                and turned_match - match >= ROTATION_GAIN
            )
            if match < relax(REPOINTED, s.match_min) or shifted or turned:
                out.append(
                    Finding(
                        REPOINTED,
                        match,
                        f"scene match {match:.2f}, shifted {dx:+.0f},"
                        f"{dy:+.0f} px of {small.shape[1]}x{small.shape[0]} "
                        f"(peak {peak:.2f}), turned {angle:+d} deg (match {turned_match:.2f})",
                    )
                )
        return out

    # --- the state machine ---------------------------------------------------------------------

    def feed(self, at: float, grey: F32) -> list[PictureChange]:
        """Judge one picture (grey levels 0..255, float32, any fixed size) taken at `at`
        seconds; returns the state changes it caused (none, one, or an end and a start)."""
        s = self.settings
        grey = grey.astype(np.float32, copy=False)
        m = measure(grey)
        small = _small(grey)
        found = self.findings(grey, m, small)
        previous_at = self._previous_at
        self._previous = grey
        self._previous_at = at
        self.last = m
        self.pictures += 1
        if self.since is None:
            self.since = at
        kinds = [f.kind for f in found]
        if self.state in CONDITIONS and self.state in kinds:
            finding: Finding | None = found[kinds.index(self.state)]
        else:
            finding = found[0] if found else None
        self.last_finding = finding
        now_kind = finding.kind if finding else None
        then_kind = self._pending.kind if self._pending else None
        if now_kind != then_kind:
            # A frozen run began with the picture before: the first that stayed the same.
            self._pending_since = previous_at if now_kind == FROZEN else at
        self._pending = finding
        changes: list[PictureChange] = []
        if self.state in CONDITIONS:
            if now_kind == self.state:
                self._absent_since = None
            else:
                if self._absent_since is None:
                    self._absent_since = at
                if finding is not None and at - self._pending_since >= s.persist_seconds:
                    changes.append(self._set(self._healthy_state(), at, self._absent_since))
                    changes.append(self._set(finding.kind, at, self._pending_since, finding))
                elif finding is None and at - self._absent_since >= s.clear_seconds:
                    changes.append(self._set(self._healthy_state(), at, self._absent_since))
        elif finding is not None and at - self._pending_since >= s.persist_seconds:
            changes.append(self._set(finding.kind, at, self._pending_since, finding))
        if finding is None and self.state not in CONDITIONS:
            learned = self._learn(at, m, small)
            if learned and self.state == LEARNING:
                changes.append(self._set(OK, at, at))
        return changes

    def _healthy_state(self) -> str:
        return OK if self.refs else LEARNING

    def _set(
        self, state: str, at: float, onset: float, finding: Finding | None = None
    ) -> PictureChange:
        change = PictureChange(
            state,
            self.state,
            at,
            onset,
            finding.score if finding else None,
            finding.detail if finding else "",
        )
        self.state = state
        self.since = onset
        self._absent_since = None
        return change

    def _learn(self, at: float, m: Measures, small: F32) -> bool:
        """Learn or refresh the reference of this picture's band; True when one was made."""
        band = self._band(m)
        ref = self.refs.get(band)
        if ref is not None:
            last = at if self._refreshed is None else self._refreshed
            alpha = min(1.0, max(0.0, at - last) / (self.settings.refresh_hours * 3600))
            ref.blend(m, small, alpha)
            self._refreshed = at
            return False
        learner = self._learners.get(band)
        if learner is None:
            learner = self._learners[band] = _Learner(at)
        learner.add(m, small)
        if (
            at - learner.started >= self.settings.learn_seconds
            and len(learner.measures) >= MIN_LEARN_PICTURES
        ):
            self.refs[band] = learner.reference()
            del self._learners[band]
            self._refreshed = at
            return True
        return False
