"""What changes between the running configuration and a new one (a reload: SIGHUP,
`systemctl reload nvr`, `POST /api/reload`): cameras added, removed, changed and unchanged,
other settings applied live, and settings that only a restart can change. Pure; runs on any
thread. Lists key names only, never values (a value may be a secret's location)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from nvr.config.models import CameraConfig, NvrConfig

LIVE_KEYS = ("log_level", "site")
"""Top-level settings a reload applies to the running daemon."""
RESTART_KEYS = ("storage", "api", "retention", "evidence", "events")
"""Top-level tables read once at start (the index, the HTTP server, the retention service, the
audit signing, the event publishers): a change in them is refused by a reload, naming the keys."""


@dataclass(frozen=True)
class ConfigDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Camera name -> the keys that differ (an `enabled` flip counts as added/removed)."""
    unchanged: tuple[str, ...] = ()
    """Enabled in both and identical: their recorders are not touched."""
    live: tuple[str, ...] = ()
    """Other keys that differ and are applied live (`log_level`, `site.name`, ...)."""
    restart_needed: tuple[str, ...] = ()
    """Keys that differ and need a restart (`storage.root`, `api.listen`, ...)."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.live or self.restart_needed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {name: list(keys) for name, keys in self.changed.items()},
            "unchanged": list(self.unchanged),
            "settings": list(self.live),
        }

    def summary(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", tuple(self.changed)),
                ("settings", self.live),
            )
            if names
        ]
        return "; ".join(parts) or "no changes"


def _keys(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted names of the fields that differ between two models (or values)."""
    if type(old) is not type(new) or not isinstance(old, BaseModel):
        return [prefix] if old != new else []
    out: list[str] = []
    for name in type(old).model_fields:
        out += _keys(getattr(old, name), getattr(new, name), f"{prefix}.{name}")
    return out


def _camera_keys(old: CameraConfig, new: CameraConfig) -> tuple[str, ...]:
    return tuple(k.removeprefix("camera.") for k in _keys(old, new, "camera"))


def diff_configs(old: NvrConfig, new: NvrConfig) -> ConfigDiff:
    """What a reload from `old` to `new` would do. Cameras are matched by name; a disabled
    camera has no recorder, so enabling one adds it and disabling one removes it."""
    before = {c.name: c for c in old.cameras if c.enabled}
    after = {c.name: c for c in new.cameras if c.enabled}
    changed = {
        name: _camera_keys(before[name], cam)
        for name, cam in after.items()
        if name in before and before[name] != cam
    }
    live: list[str] = []
    restart: list[str] = []
    for key in LIVE_KEYS:
        live += _keys(getattr(old, key), getattr(new, key), key)
    for key in RESTART_KEYS:
        restart += _keys(getattr(old, key), getattr(new, key), key)
    # Disabled cameras' settings (location, ...) are part of the config too.
    quiet = {c.name: c for c in old.cameras if not c.enabled}
    for cam in new.cameras:
        if not cam.enabled and cam.name in quiet and quiet[cam.name] != cam:
            live.append(f"cameras.{cam.name}")
    return ConfigDiff(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        unchanged=tuple(n for n in after if n in before and before[n] == after[n]),
        live=tuple(live),
        restart_needed=tuple(restart),
    )


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: applied (with its diff), or refused (with every problem; the
    running config is kept)."""

    applied: bool
    diff: ConfigDiff | None
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"applied": self.applied, "problems": list(self.problems)}
        if self.diff is not None:
            out.update(self.diff.as_dict())
        return out
