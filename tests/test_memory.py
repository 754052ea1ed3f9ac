"""The allocator controls (nvr/memory.py) do what they say on this machine's glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import re
from pathlib import Path

import pytest

from nvr import memory

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas and malloc_trim are glibc's"
)


def rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


@glibc
def test_trim_gives_freed_heap_back_to_the_kernel() -> None:
    """Many small blocks freed except the last keep the heap's top pinned, so glibc cannot
    shrink it by itself; `trim` returns the free pages in the middle."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024 - 64) for _ in range(2000)]  # ~128 MiB below mmap size
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024 - 64)
    for b in blocks[:-1]:
        libc.free(b)
    before = rss_kib()
    assert memory.trim()
    after = rss_kib()
    libc.free(blocks[-1])
    assert before - after > 64 * 1024, (before, after)  # most of the 128 MiB is back


@glibc
def test_arena_limit_is_accepted() -> None:
    assert memory.limit_arenas(8)  # the default on this machine's scale: a harmless setting
