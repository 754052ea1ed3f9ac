"""A real, small filesystem to fill, for the disk-full tests and benches: `tmpfs` (a fixture's
body: a tmpfs mounted for the test, skipped without root) and `fill_up` (write until not one
block is free). Runs on the test's (or the bench's) main thread."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1024 * 1024


def tmpfs(mnt: Path, size_mib: int) -> Iterator[Path]:
    """`mnt` as a tmpfs of `size_mib` MiB while the test runs, lazily unmounted after; the
    test is skipped where it cannot be mounted (needs root, as in CI). A fixture's body:
    `yield from tmpfs(tmp_path / "fs", 32)`."""
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a test tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_up(path: Path) -> None:
    """Write until the filesystem has not one free block left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (MIB, 4096, 512):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
