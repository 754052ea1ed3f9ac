"""Each camera's learned picture references kept in the store, so that a daemon restart does
not learn them afresh (a camera covered, blurred or turned during the restart would otherwise
be learned as it is then, and never raised).

One file a camera, `<root>/.picture/<camera>.npz` (numpy, no pickles): per band ("day",
"night") the half-size grey reference picture and its four measures. Written atomically
(temporary file, fsync, rename) by the `picture-check` thread when a reference is learned and
then every `SAVE_SECONDS` while it drifts; read when the monitor starts watching the camera.
A missing, unreadable or foreign file is no reference (the camera learns as before).
Blocking file work: the `picture-check` worker or whoever calls `watch`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nvr.ingest.picture.detector import Measures, Reference

log = logging.getLogger("nvr.picture")

FOLDER = ".picture"
VERSION = 1
BANDS = ("day", "night")
SAVE_SECONDS = 600.0
"""A drifting reference is saved again at most this often (picture-clock seconds)."""


def path_of(root: Path, camera: str) -> Path:
    return root / FOLDER / f"{camera}.npz"


def save(root: Path, camera: str, refs: dict[str, Reference]) -> None:
    """Write the camera's references (raises OSError)."""
    arrays: dict[str, np.ndarray] = {"version": np.array(VERSION)}
    for band, ref in refs.items():
        if band not in BANDS:
            continue
        m = ref.measures
        arrays[f"{band}_picture"] = ref.picture.astype(np.float32)
        arrays[f"{band}_measures"] = np.array(
            [m.brightness, m.contrast, m.entropy, m.sharpness], dtype=np.float64
        )
    path = path_of(root, camera)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(root: Path, camera: str) -> dict[str, Reference]:
    """The camera's saved references; empty when there are none (or none usable)."""
    path = path_of(root, camera)
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != VERSION:
                return {}
            refs: dict[str, Reference] = {}
            for band in BANDS:
                if f"{band}_picture" not in data.files:
                    continue
                picture = np.asarray(data[f"{band}_picture"], dtype=np.float32)
                values = [float(v) for v in data[f"{band}_measures"]]
                if picture.ndim != 2 or len(values) != 4 or not np.isfinite(picture).all():
                    continue
                refs[band] = Reference(Measures(*values), picture)
            return refs
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("camera %s: saved picture reference not used: %s", camera, err)
        return {}
