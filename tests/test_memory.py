"""The allocator controls (nvr/memory.py) do what they say on this machine's glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import re
import subprocess
import sys
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


ARENAS_SCRIPT = """
import ctypes, ctypes.util, sys, threading
from nvr import memory
if sys.argv[1] == "limit":
    assert memory.limit_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
barrier = threading.Barrier(8)
kept = []
def work():
    barrier.wait()  # all threads allocate at once: each wants an arena of its own
    for _ in range(200):
        kept.append(libc.malloc(1024))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.fflush.argtypes = [ctypes.c_void_p]
f = libc.fdopen(1, b"w")
libc.malloc_info(0, f)
libc.fflush(f)
"""


def arenas_used(mode: str) -> int:
    """Arenas glibc reports (malloc_info's `<heap nr=...>`) after 8 threads allocate at once."""
    out = subprocess.run(
        [sys.executable, "-c", ARENAS_SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout
    return len(re.findall(r"<heap nr=", out))


@glibc
def test_arena_limit_caps_the_arenas_threads_get() -> None:
    unlimited = arenas_used("free")
    limited = arenas_used("limit")
    assert limited <= 2, limited
    assert unlimited > limited, (unlimited, limited)  # the cap is what made the difference
