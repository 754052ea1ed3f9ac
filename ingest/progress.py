"""Progress of the recorder thread that runs the calling code.

A recorder binds its own `_progress` hook to its thread (`bind`); code deep inside a source
that waits deliberately while media keeps arriving (the first keyframe of a long-GOP camera,
inside `StreamOpener.open`) calls `report()`, so the supervisor's stuck check sees a live
thread instead of replacing it. Any thread may call `report()`; a thread with no hook bound
(tests, benchmarks) makes it a no-op. Each thread sees only its own hook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_local = threading.local()


def bind(hook: Callable[[], object] | None) -> None:
    """Make `hook` the progress report of the calling thread (None: unbind)."""
    _local.hook = hook


def report() -> None:
    """Tell the calling thread's recorder that it is making progress."""
    hook: Callable[[], object] | None = getattr(_local, "hook", None)
    if hook is not None:
        hook()
