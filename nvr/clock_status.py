"""What `nvr status` prints about time (R8): the server clock's synchronisation state and,
per camera, its device information and latest clock reading by each method, with `WARNING`
where it is off. Read from the kernel and the index; runs in the CLI process. Imports go
down: `ingest.timecheck`, `storage`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from nvr.ingest.timecheck.notes import DEVICE_INFO, camera_clocks
from nvr.storage import SegmentStore
from nvr.storage.server_clock import ServerClockState, read_server_clock


def server_status_line(read: Callable[[], ServerClockState] = read_server_clock) -> str:
    """`server clock: ...`, prefixed `WARNING` when it is not synchronised."""
    try:
        state = read()
    except OSError as err:
        return f"WARNING server clock: unknown (cannot read its synchronisation state: {err})"
    prefix = "" if state.synchronised else "WARNING "
    return f"{prefix}server clock: {state.describe()}"


def camera_status_lines(
    store: SegmentStore, camera: str, limit_s: float, when: Callable[[int], str]
) -> list[str]:
    """The camera's device information (ONVIF) and latest clock reading per method, with a
    `WARNING` where the offset is beyond `limit_s`; `when` formats a time (`show.when`)."""
    device: str | None = None
    kept = store.events.latest(camera, DEVICE_INFO, limit=1)
    if kept:
        device = kept[0].detail
    lines = []
    if device is not None:
        try:
            info = json.loads(device)
            profile = info.get("profile") or {}
            lines.append(
                f"device: {info.get('manufacturer', '?')} {info.get('model', '?')}, "
                f"firmware {info.get('firmware', '?')}, serial {info.get('serial', '?')}; "
                f"profile {profile.get('token', '?')} ({profile.get('width', '?')}x"
                f"{profile.get('height', '?')} {profile.get('encoding', '?')})"
            )
        except (ValueError, AttributeError):
            lines.append(f"device: {device}")
    for clock in camera_clocks(store, camera, limit_s):
        lines.append(
            f"{'WARNING ' if clock.warning else ''}camera clock ({clock.source}, "
            f"{when(clock.at_ms)}): {clock.describe()}"
        )
    return lines
