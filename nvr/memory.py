"""The C allocator's share of the daemon's memory (glibc only; elsewhere these do nothing).

A recorder thread per camera means glibc gives most threads a malloc arena of their own
(up to 8 per core), and FFmpeg allocates its probe buffers and packets there. After many
cameras reconnect at once (a full disk, a switch rebooting) those arenas keep the freed
memory as a high-water mark instead of giving it back: the soak benchmark saw +10 MiB per
such event. `limit_arenas` caps the arenas before the threads start; `trim` hands free pages
back to the kernel and is called now and then from a worker thread.

Called from the event loop's start-up (`limit_arenas`) and from the status publisher's
worker thread (`trim`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("nvr.memory")

M_ARENA_MAX = -8
"""mallopt(3) parameter number of M_ARENA_MAX in glibc's malloc.h."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None  # not glibc (musl has neither)
    return libc


_LIBC = _libc()


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at `count` (before threads start). True if applied."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Return free heap pages of every arena to the kernel. True if any were released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
