"""Pre-encoded loops for the camera simulator: encoded once with PyAV, served without encoding.

This module owns the clip files the RTSP simulator serves. `make_clips()` runs in the test
process (the venv, which has PyAV), on whatever thread calls it; it encodes each clip once and
leaves it in a cache directory, where later calls find it complete and return at once.

On-disk form, one clip per RTSP mount name:

- ``<name>.<stream>.<digest>.es``: the stream's packets back to back in decode order. Video
  is an Annex-B elementary stream (H.264 or H.265, parameter sets repeated before every
  keyframe); audio is raw AAC access units (no ADTS headers).
- ``<name>.json``: the index, written last. For each stream: codec and caps metadata (size and
  frame rate; for AAC the AudioSpecificConfig as hex, sample rate and channels), the time base,
  the loop duration and one ``[offset, size, pts, dts, duration, keyframe]`` row per packet.

The server (`rtsp_server.py`, on Debian's Python without PyAV) reads only these files. Every
stream loops on its own duration; video loops start with a keyframe so the seam is clean. Files
are written to temporary names and renamed into place, the index last, so a clip is complete
exactly when its index exists and names files of the recorded sizes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 3
VIDEO_TIME_BASE = 90_000  # ticks per second for video rows in the index
LOOP_SECONDS = 10
STALE_AFTER_S = 600  # data files of a replaced encode are removed after this long

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class VideoSpec:
    """How one video stream is encoded."""

    codec: str  # "libx264" or "libx265"
    width: int
    height: int
    fps: int
    bit_rate: int
    b_frames: int
    noise: int  # amplitude of per-frame luma noise, so the encoder has to spend bits
    preset: str


@dataclass(frozen=True)
class AudioSpec:
    """How one AAC stream is encoded."""

    sample_rate: int
    bit_rate: int
    tone_hz: float


@dataclass(frozen=True)
class ClipSpec:
    """A clip: one video stream and optionally one audio stream."""

    video: VideoSpec
    audio: AudioSpec | None = None


_SD_H264 = VideoSpec("libx264", 640, 360, 10, 500_000, 0, 0, "veryfast")

CLIPS: dict[str, ClipSpec] = {
    "h264aac": ClipSpec(_SD_H264, AudioSpec(16_000, 32_000, 440.0)),
    "h264": ClipSpec(_SD_H264),
    "h265": ClipSpec(VideoSpec("libx265", 640, 360, 10, 500_000, 0, 0, "ultrafast")),
    "bframes": ClipSpec(VideoSpec("libx264", 640, 360, 10, 500_000, 2, 0, "veryfast")),
    "hd4m": ClipSpec(VideoSpec("libx264", 1280, 720, 25, 4_000_000, 0, 24, "veryfast")),
}


def make_clips(directory: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Encode the clips that are missing or stale in `directory`; return name -> index path.
    Several test processes (pytest-xdist workers) may ask at once: the first encodes while
    the others wait on an exclusive lock of `directory/.lock`, then find the clips complete."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _make_clips_locked(directory, names)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_clips_locked(directory: Path, names: list[str] | None) -> dict[str, Path]:
    wanted = list(CLIPS) if names is None else names
    unknown = sorted(set(wanted) - set(CLIPS))
    if unknown:
        raise ValueError(f"unknown clip names {unknown}; known: {sorted(CLIPS)}")
    encoded_video: dict[VideoSpec, tuple[bytes, list[list[int]]]] = {}
    result: dict[str, Path] = {}
    for name in wanted:
        spec = CLIPS[name]
        index_path = directory / f"{name}.json"
        if not _is_complete(index_path, _spec_key(spec)):
            if spec.video not in encoded_video:
                encoded_video[spec.video] = _encode_video(spec.video)
            _write_clip(directory, name, spec, encoded_video[spec.video])
        result[name] = index_path
    return result


def _spec_key(spec: ClipSpec) -> str:
    """A digest of everything that shapes a clip, so a changed spec re-encodes."""
    blob = json.dumps(
        {"format": FORMAT_VERSION, "loop": LOOP_SECONDS, "spec": asdict(spec)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_complete(index_path: Path, key: str) -> bool:
    """True when the index exists, matches `key` and every data file has its recorded size."""
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict) or index.get("key") != key:
        return False
    for stream in index.get("streams", []):
        data = index_path.parent / stream["file"]
        try:
            if data.stat().st_size != stream["file_size"]:
                return False
        except OSError:
            return False
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_clip(
    directory: Path, name: str, spec: ClipSpec, video: tuple[bytes, list[list[int]]]
) -> None:
    """Write the data files of one clip, then its index."""
    v = spec.video
    video_data, video_rows = video
    video_file = _data_name(name, "video", video_data)
    streams: list[dict[str, Any]] = [
        {
            "kind": "video",
            "codec": "h264" if v.codec == "libx264" else "h265",
            "file": video_file,
            "file_size": len(video_data),
            "width": v.width,
            "height": v.height,
            "fps": v.fps,
            "time_base": [1, VIDEO_TIME_BASE],
            "loop_duration": LOOP_SECONDS * VIDEO_TIME_BASE,
            "packets": video_rows,
        }
    ]
    _atomic_write(directory / video_file, video_data)
    if spec.audio is not None:
        a = spec.audio
        audio_data, audio_rows, codec_data, loop_samples = _encode_audio(a)
        audio_file = _data_name(name, "audio", audio_data)
        _atomic_write(directory / audio_file, audio_data)
        streams.append(
            {
                "kind": "audio",
                "codec": "aac",
                "file": audio_file,
                "file_size": len(audio_data),
                "sample_rate": a.sample_rate,
                "channels": 1,
                "codec_data": codec_data.hex(),
                "time_base": [1, a.sample_rate],
                "loop_duration": loop_samples,
                "packets": audio_rows,
            }
        )
    index = {"format": FORMAT_VERSION, "key": _spec_key(spec), "name": name, "streams": streams}
    _atomic_write(directory / f"{name}.json", json.dumps(index).encode())
    # Drop data of older encodes; recent ones may belong to a concurrent encoder's index.
    current = {s["file"] for s in streams}
    for stale in directory.glob(f"{name}.*.es"):
        if stale.name not in current and _age(stale) > STALE_AFTER_S:
            stale.unlink(missing_ok=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _data_name(name: str, kind: str, data: bytes) -> str:
    """A data file name carrying a digest of its content.

    Concurrent encoders (pytest-xdist workers) then never pair an index with another run's data.
    """
    return f"{name}.{kind}.{hashlib.sha256(data).hexdigest()[:12]}.es"


# --- video -------------------------------------------------------------------------------------


def _encoder_options(v: VideoSpec, gop: int = 0, slices: int = 1) -> dict[str, str]:
    """Encoder options giving a fixed GOP (one second unless `gop` frames) of closed,
    IDR-started groups, one slice per picture unless `slices`."""
    gop = gop or v.fps
    if v.codec == "libx264":
        params = [
            f"keyint={gop}",
            f"min-keyint={gop}",
            "scenecut=0",
            f"bframes={v.b_frames}",
            "b-pyramid=none",
            "repeat-headers=1",
            "sliced-threads=0",  # one slice per picture, as most cameras send
        ]
        if slices > 1:
            params.append(f"slices={slices}")
        if v.noise:
            # A steady rate near the target, as a camera in CBR-like mode would send.
            kbit = v.bit_rate // 1000
            params += [f"vbv-maxrate={kbit}", f"vbv-bufsize={kbit}"]
        return {"preset": v.preset, "x264-params": ":".join(params)}
    params = [
        "log-level=none",
        f"keyint={gop}",
        f"min-keyint={gop}",
        "scenecut=0",
        f"bframes={v.b_frames}",
        "open-gop=0",
        "repeat-headers=1",
        "info=0",
    ]
    return {"preset": v.preset, "x265-params": ":".join(params)}


def _encode_video(
    v: VideoSpec,
    seconds: int = LOOP_SECONDS,
    gop_seconds: int = 1,
    slices: int = 1,
    pictures: Iterator[U8] | None = None,
) -> tuple[bytes, list[list[int]]]:
    """Encode one loop of `seconds` (of `pictures`, yuv420p, default `_pictures`); return the
    elementary stream and its index rows in 1/90000 s."""
    frames = seconds * v.fps
    ctx = av.CodecContext.create(v.codec, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = v.width
    ctx.height = v.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, v.fps)
    ctx.framerate = Fraction(v.fps, 1)
    ctx.bit_rate = v.bit_rate
    ctx.gop_size = v.fps * gop_seconds
    ctx.max_b_frames = v.b_frames
    ctx.options = _encoder_options(v, v.fps * gop_seconds, slices)
    packets: list[av.Packet[Any]] = []
    for i, picture in enumerate(pictures or _pictures(v, frames)):
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = i
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))

    tick = VIDEO_TIME_BASE // v.fps
    data = bytearray()
    rows: list[list[int]] = []
    for p in packets:
        if p.pts is None or p.dts is None:
            raise RuntimeError(f"{v.codec} produced a packet without timestamps")
        payload = bytes(p)
        rows.append([len(data), len(payload), p.pts * tick, p.dts * tick, tick, int(p.is_keyframe)])
        data += payload
    if len(rows) != frames or not rows[0][5]:
        raise RuntimeError(f"{v.codec}: expected {frames} packets starting with a keyframe")
    return bytes(data), rows


def _pictures(v: VideoSpec, frames: int) -> Iterator[U8]:
    """Yield yuv420p pictures (shape (h*3/2, w)): a drifting gradient, a box and a counter.

    Motion is periodic in the loop length, so only the counter jumps at the seam.
    """
    w, h = v.width, v.height
    rng = np.random.default_rng(7)
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    u = np.tile(np.linspace(64, 192, w // 2, dtype=np.float32), (h // 2, 1)).astype(np.uint8)
    chroma_rows = np.arange(h // 2, dtype=np.float32)[:, None] / (h // 2)
    box = max(h // 6, 8)
    for i in range(frames):
        phase = i / frames
        luma = 40 + 80 * (
            0.5 + 0.5 * np.sin(2 * np.pi * (xs[None, :] / w + ys[:, None] / h - phase))
        )
        if v.noise:
            luma += rng.normal(0, v.noise, size=(h, w)).astype(np.float32)
        y = np.clip(luma, 0, 255).astype(np.uint8)
        bx = int((w - box) * (0.5 + 0.5 * math.sin(2 * math.pi * phase)))
        by = int((h - box) * (0.5 + 0.5 * math.cos(2 * math.pi * phase)))
        y[by : by + box, bx : bx + box] = 235
        _draw_number(y, i, x=box // 4, top=box // 4, scale=max(h // 90, 2))
        v_col = 128 + 64 * np.cos(2 * np.pi * (chroma_rows - phase))
        vv = np.broadcast_to(v_col, (h // 2, w // 2)).astype(np.uint8)
        yield np.concatenate([y, u.reshape(h // 4, w), vv.reshape(h // 4, w)])


# Seven segments per digit: a (top), b (top right), c (bottom right), d (bottom),
# e (bottom left), f (top left), g (middle).
_SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg",
    "5": "acdfg", "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}  # fmt: skip


def _draw_number(y: U8, n: int, *, x: int, top: int, scale: int) -> None:
    """Draw `n` as white seven-segment digits on a black plate into the luma plane `y`."""
    digit_w, digit_h, t = 6 * scale, 10 * scale, scale
    text = f"{n:04d}"
    plate_w = len(text) * (digit_w + 2 * scale) + 2 * scale
    y[top : top + digit_h + 4 * scale, x : x + plate_w] = 16
    for k, ch in enumerate(text):
        left = x + 2 * scale + k * (digit_w + 2 * scale)
        up = top + 2 * scale
        mid = up + digit_h // 2
        bars = {
            "a": (up, up + t, left, left + digit_w),
            "d": (up + digit_h - t, up + digit_h, left, left + digit_w),
            "g": (mid - t // 2, mid - t // 2 + t, left, left + digit_w),
            "f": (up, mid, left, left + t),
            "e": (mid, up + digit_h, left, left + t),
            "b": (up, mid, left + digit_w - t, left + digit_w),
            "c": (mid, up + digit_h, left + digit_w - t, left + digit_w),
        }
        for seg in _SEGMENTS[ch]:
            r0, r1, c0, c1 = bars[seg]
            y[r0:r1, c0:c1] = 235


# --- audio -------------------------------------------------------------------------------------


def _encode_audio(a: AudioSpec) -> tuple[bytes, list[list[int]], bytes, int]:
    """Encode a seamless AAC tone loop; return data, rows (in samples), ASC and loop samples.

    The loop is a whole number of 1024-sample frames close to the video loop, and the tone a
    whole number of periods in it. Two loops are encoded and the second kept, so the encoder's
    priming and the MDCT overlap at the seam both see the end of the previous loop.
    """
    frame_samples = 1024
    loop_frames = math.ceil(LOOP_SECONDS * a.sample_rate / frame_samples)
    loop_samples = loop_frames * frame_samples
    periods = round(a.tone_hz * loop_samples / a.sample_rate)
    ctx = av.CodecContext.create("aac", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = a.sample_rate
    ctx.layout = "mono"
    ctx.format = "fltp"
    ctx.bit_rate = a.bit_rate
    ctx.time_base = Fraction(1, a.sample_rate)
    ctx.open()
    codec_data = bytes(ctx.extradata or b"")
    if not codec_data:
        raise RuntimeError("aac encoder gave no AudioSpecificConfig")
    packets: list[av.Packet[Any]] = []
    total_frames = 2 * loop_frames + 2
    for k in range(total_frames):
        n = np.arange(k * frame_samples, (k + 1) * frame_samples, dtype=np.float64)
        tone = 0.3 * np.sin(2 * np.pi * periods * n / loop_samples)
        frame = av.AudioFrame.from_ndarray(
            tone.astype(np.float32)[None, :], format="fltp", layout="mono"
        )
        frame.sample_rate = a.sample_rate
        frame.pts = k * frame_samples
        packets.extend(ctx.encode(frame))
    packets.extend(ctx.encode(None))

    data = bytearray()
    rows: list[list[int]] = []
    for p in packets:
        if p.pts is None or not loop_samples <= p.pts < 2 * loop_samples:
            continue
        pts = p.pts - loop_samples
        payload = bytes(p)
        rows.append([len(data), len(payload), pts, pts, frame_samples, 1])
        data += payload
    if len(rows) != loop_frames:
        raise RuntimeError(f"aac: expected {loop_frames} packets in the loop, got {len(rows)}")
    return bytes(data), rows, codec_data, loop_samples


# --- quirk clips (tests/camsim/quirks.py) -------------------------------------------------------

QUIRK_CLIPS_DIR = "quirks"
"""Subdirectory of the clip directory for the clips only the quirk camera serves. They stay
out of the GStreamer server's way: it mounts every index of the directory it is given (when
told no mounts) and serves H.264, H.265 and AAC only."""


@dataclass(frozen=True)
class QuirkClipSpec:
    """A clip of one stream that only the quirk camera serves: video or G.711/G.726 audio."""

    video: VideoSpec | None = None
    seconds: int = LOOP_SECONDS
    gop_seconds: int = 1
    slices: int = 1
    """Slices per picture (x264 `slices=N`), each its own NAL unit."""
    resize_to: tuple[int, int] | None = None
    """The second half of the loop is encoded at this size: a new SPS at its first keyframe,
    and the old one again at the loop's seam."""
    audio: str = ""
    """"pcma", "pcmu" or "g726" (G.726-32): a 440 Hz tone at 8 kHz mono, 20 ms packets."""


QUIRK_CLIPS: dict[str, QuirkClipSpec] = {
    "slices4": QuirkClipSpec(_SD_H264, slices=4),
    "longgop": QuirkClipSpec(_SD_H264, seconds=28, gop_seconds=14),
    "resize": QuirkClipSpec(_SD_H264, resize_to=(480, 272)),
    "pcma": QuirkClipSpec(audio="pcma"),
    "pcmu": QuirkClipSpec(audio="pcmu"),
    "g726": QuirkClipSpec(audio="g726"),
}
G7XX_RATE = 8000
G7XX_PACKET_SAMPLES = 160  # 20 ms, what cameras send


def quirk_clip_path(directory: Path, name: str) -> Path:
    """The index of a clip: quirk clips live in `QUIRK_CLIPS_DIR` under `directory`."""
    if name in QUIRK_CLIPS:
        return directory / QUIRK_CLIPS_DIR / f"{name}.json"
    return directory / f"{name}.json"


def make_quirk_clips(directory: Path, names: list[str]) -> dict[str, Path]:
    """Encode the quirk clips (of `QUIRK_CLIPS`) or camsim clips (of `CLIPS`) named `names`
    that are missing or stale; return name -> index path. Same cache rules as `make_clips`."""
    plain = [n for n in names if n not in QUIRK_CLIPS]
    result = make_clips(directory, plain) if plain else {}
    sub = directory / QUIRK_CLIPS_DIR
    sub.mkdir(parents=True, exist_ok=True)
    with open(sub / ".lock", "a+b") as lock:  # as in `make_clips`: one encoder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result.update(_make_quirk_clips_locked(sub, [n for n in names if n in QUIRK_CLIPS]))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return result


def _make_quirk_clips_locked(sub: Path, names: list[str]) -> dict[str, Path]:
    result: dict[str, Path] = {}
    for name in names:
        spec = QUIRK_CLIPS[name]
        blob = json.dumps({"format": FORMAT_VERSION, "quirk": asdict(spec)}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        index_path = sub / f"{name}.json"
        if not _is_complete(index_path, key):
            stream = _quirk_video(spec) if spec.video is not None else _g7xx_audio(spec.audio)
            data = stream.pop("data")
            stream["file"] = _data_name(name, stream["kind"], data)
            stream["file_size"] = len(data)
            _atomic_write(sub / stream["file"], data)
            index = {"format": FORMAT_VERSION, "key": key, "name": name, "streams": [stream]}
            _atomic_write(index_path, json.dumps(index).encode())
        result[name] = index_path
    return result


def _quirk_video(spec: QuirkClipSpec) -> dict[str, Any]:
    """One video loop of `spec` (two sizes back to back when it resizes), as an index entry
    with its data under "data"."""
    v = spec.video
    assert v is not None
    parts = [(v, spec.seconds)]
    if spec.resize_to is not None:
        half = spec.seconds // 2
        w, h = spec.resize_to
        parts = [(v, half), (replace(v, width=w, height=h), spec.seconds - half)]
    data = bytearray()
    rows: list[list[int]] = []
    t0 = 0
    for part, seconds in parts:
        chunk, part_rows = _encode_video(part, seconds, spec.gop_seconds, spec.slices)
        rows += [[o + len(data), n, pts + t0, dts + t0, d, k] for o, n, pts, dts, d, k in part_rows]
        data += chunk
        t0 += seconds * VIDEO_TIME_BASE
    return {
        "kind": "video",
        "codec": "h264",
        "data": bytes(data),
        "width": v.width,
        "height": v.height,
        "fps": v.fps,
        "time_base": [1, VIDEO_TIME_BASE],
        "loop_duration": spec.seconds * VIDEO_TIME_BASE,
        "packets": rows,
    }


def _g7xx_audio(kind: str) -> dict[str, Any]:
    """A seamless 440 Hz tone loop in G.711 A-law / mu-law or G.726-32, 20 ms packets."""
    rate, step = G7XX_RATE, G7XX_PACKET_SAMPLES
    samples = LOOP_SECONDS * rate
    t = np.arange(samples) / rate
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    codec = {"pcma": "pcm_alaw", "pcmu": "pcm_mulaw", "g726": "g726"}[kind]
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", "s16"
    if kind == "g726":
        ctx.bit_rate = 32_000
    ctx.open()
    out = bytearray()
    for i in range(0, samples, step):
        frame = av.AudioFrame.from_ndarray(tone[None, i : i + step], format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, i
        out += b"".join(bytes(p) for p in ctx.encode(frame))
    out += b"".join(bytes(p) for p in ctx.encode(None))
    size = step if kind != "g726" else step // 2  # G.726-32: 4 bits a sample
    if len(out) != samples * size // step:
        raise RuntimeError(f"{codec}: {len(out)} bytes for {samples} samples")
    rows = [[i * size, size, i * step, i * step, step, 1] for i in range(samples // step)]
    return {
        "kind": "audio",
        "codec": kind,
        "data": bytes(out),
        "sample_rate": rate,
        "channels": 1,
        "time_base": [1, rate],
        "loop_duration": samples,
        "packets": rows,
    }


# --- scene clips (picture health, issue 18) ------------------------------------------------------

SCENE_CLIPS_DIR = "scenes"
"""Subdirectory of the clip directory for the scene clips (out of the server's default glob)."""
SCENES = ("normal", "black", "blur", "shift", "frozen")
"""A mount `NAME=scenes/scene_normal+scenes/scene_black+...` serves them in this order and
switches between them with the server's `scene <mount> <k>` command (`CameraSim.scene`)."""
_SCENE_VIDEO = VideoSpec("libx264", 640, 360, 10, 600_000, 0, 3, "veryfast")
SCENE_FORMAT = 1


def scene_mount(name: str, scenes: tuple[str, ...] = SCENES) -> str:
    """The `--mounts` entry of a mount serving `scenes` (switch with `CameraSim.scene`)."""
    return f"{name}=" + "+".join(f"{SCENE_CLIPS_DIR}/scene_{s}" for s in scenes)


def _scene_pictures(kind: str) -> Iterator[U8]:
    """yuv420p pictures of one scene loop: tests.camsim.scenes.Scene, neutral chroma."""
    from tests.camsim.scenes import Scene  # numpy only; kept out of the server's imports

    v = _SCENE_VIDEO
    scene = Scene(v.width, v.height)
    chroma = np.full((v.height // 2, v.width), 128, dtype=np.uint8)
    for i in range(LOOP_SECONDS * v.fps):
        t = i / v.fps
        if kind == "black":
            luma = scene.picture(t, dark=True)
        elif kind == "blur":
            luma = scene.picture(t, blur=5, light_period=LOOP_SECONDS)
        elif kind == "shift":
            luma = scene.picture(t, shift=(0.15, 0.0), light_period=LOOP_SECONDS)
        elif kind == "frozen":
            luma = scene.picture(0.0, light_period=LOOP_SECONDS)
        else:
            luma = scene.picture(t, light_period=LOOP_SECONDS)
        y = np.clip(luma, 0, 255).astype(np.uint8)
        yield np.concatenate([y, chroma])


def make_scene_clips(directory: Path) -> dict[str, Path]:
    """Encode the scene clips (`SCENES`) that are missing or stale into
    `directory/scenes/`; return kind -> index path. Same cache rules as `make_clips`. The
    frozen clip repeats its first one-second group of pictures, bit for bit, as a camera
    whose picture froze sends the same picture again."""
    sub = directory / SCENE_CLIPS_DIR
    sub.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    with open(sub / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for kind in SCENES:
                name = f"scene_{kind}"
                blob = json.dumps(
                    {
                        "format": FORMAT_VERSION,
                        "scene": SCENE_FORMAT,
                        "kind": kind,
                        "video": asdict(_SCENE_VIDEO),
                    },
                    sort_keys=True,
                )
                key = hashlib.sha256(blob.encode()).hexdigest()[:16]
                index_path = sub / f"{name}.json"
                if not _is_complete(index_path, key):
                    data, rows = _encode_video(_SCENE_VIDEO, pictures=_scene_pictures(kind))
                    if kind == "frozen":
                        gop = [r for r in rows if r[3] < VIDEO_TIME_BASE]
                        rows = [
                            [o, n, pts + k * VIDEO_TIME_BASE, dts + k * VIDEO_TIME_BASE, d, key_]
                            for k in range(LOOP_SECONDS)
                            for o, n, pts, dts, d, key_ in gop
                        ]
                    v = _SCENE_VIDEO
                    file = _data_name(name, "video", data)
                    _atomic_write(sub / file, data)
                    stream = {
                        "kind": "video",
                        "codec": "h264",
                        "file": file,
                        "file_size": len(data),
                        "width": v.width,
                        "height": v.height,
                        "fps": v.fps,
                        "time_base": [1, VIDEO_TIME_BASE],
                        "loop_duration": LOOP_SECONDS * VIDEO_TIME_BASE,
                        "packets": rows,
                    }
                    index = {
                        "format": FORMAT_VERSION,
                        "key": key,
                        "name": name,
                        "streams": [stream],
                    }
                    _atomic_write(index_path, json.dumps(index).encode())
                result[kind] = index_path
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return result
