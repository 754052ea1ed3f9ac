"""ISO BMFF (MP4) boxes: the one box walker and the box writer every format here uses.

Reading: `boxes` walks the boxes inside a buffer (a `moov`, a `moof`, a sample entry) and
refuses a malformed one (`Mp4Error`); `file_boxes` walks the top-level boxes of an open file
up to the first one that is cut short or malformed, which it reports and stops at (a file
being written, or cut by a crash, ends so). Both decode headers with `_header`: 32-bit,
64-bit (`size == 1`) and to-the-end (`size == 0`) sizes alike. The segment reader
(`storage.media.segment`), the fragment scanner (`storage.media.fragments`) and the planner's
sample-entry rewrite (`storage.media.hevc`) walk with these.

Writing: `box`/`full_box` make a box as bytes; `Node` is a box whose children are written once
at the end (a 24-hour `moov` is tens of MB: joined a single time, never copied per level).

Pure, but for `file_boxes`' `pread`s; any thread. Imports nothing of the project.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

_HEAD = struct.Struct(">I4s")
_LARGE = struct.Struct(">Q")
_FULL = struct.Struct(">I")


class Mp4Error(Exception):
    """A segment that cannot be indexed, or a range that cannot become one MP4 file."""


def _header(buf: bytes | memoryview, at: int, room: int) -> tuple[bytes, int, int]:
    """(type, header length, box length) of the box whose header starts at `buf[at]`, with
    `room` bytes from there to the end of the space it lies in. The length is 0 when the
    header is cut short, or the box is malformed or runs past `room`."""
    size, kind = _HEAD.unpack_from(buf, at)
    header = 8
    if size == 1:
        header = 16
        if room < 16 or len(buf) - at < 16:
            return kind, header, 0
        size = _LARGE.unpack_from(buf, at + 8)[0]
    elif size == 0:
        size = room
    if size < header or size > room:
        return kind, header, 0
    return kind, header, size


def boxes(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, box end) of each box in `data[start:end]`; Mp4Error at a
    malformed one."""
    pos = start
    while pos + 8 <= end:
        kind, header, size = _header(data, pos, end - pos)
        if size == 0:
            raise Mp4Error(f"malformed {kind!r} box")
        yield kind, pos + header, pos + size
        pos += size


def child(data: bytes | memoryview, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """(body start, box end) of the first `kind` box in `data[start:end]`, or None."""
    for k, body, box_end in boxes(data, start, end):
        if k == kind:
            return body, box_end
    return None


@dataclass(frozen=True, slots=True)
class FileBox:
    """One top-level box of a file."""

    kind: bytes
    pos: int
    """Offset of its header in the file."""
    header: int
    """Length of its header (8, or 16 with a 64-bit size)."""
    size: int
    """Its whole length; 0 for a box that is cut short or malformed (the last one walked)."""
    data: bytes | None = None
    """The whole box (header included) when its type was asked for."""

    @property
    def complete(self) -> bool:
        return self.size > 0

    @property
    def end(self) -> int:
        return self.pos + self.size


def file_boxes(fd: int, size: int, read: frozenset[bytes] = frozenset()) -> Iterator[FileBox]:
    """The top-level boxes of the open file `fd` of `size` bytes, in order, up to and
    including the first one that is cut short or malformed (then the walk ends). Boxes whose
    type is in `read` come with their bytes, read together with the next box's header
    (one `pread` per box). Blocking."""
    pos = 0
    head = os.pread(fd, 16, 0)
    while pos + 8 <= size and len(head) >= 8:
        kind, header, length = _header(head, 0, size - pos)
        if length == 0:
            yield FileBox(kind, pos, header, 0)
            return
        if kind in read:
            buf = os.pread(fd, length + 16, pos)
            yield FileBox(kind, pos, header, length, buf[:length])
            head = buf[length:]
        else:
            yield FileBox(kind, pos, header, length)
            head = os.pread(fd, 16, pos + length)
        pos += length


# --- writing ------------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return _HEAD.pack(8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, _FULL.pack((version << 24) | flags), *payload)


class Node:
    """A box whose body is bytes and other boxes, written once at the end: a 24-hour
    `moov` (tens of MB) is joined a single time instead of being copied at every level."""

    __slots__ = ("kind", "parts", "size")

    def __init__(self, kind: bytes, parts: Sequence[bytes | Node], prefix: bytes = b"") -> None:
        self.kind = kind
        self.parts: list[bytes | Node] = [prefix, *parts] if prefix else list(parts)
        total = 8
        for x in self.parts:
            total += len(x) if isinstance(x, bytes) else x.size
        self.size: int = total

    def emit(self, out: list[bytes]) -> None:
        out.append(_HEAD.pack(self.size, self.kind))
        for x in self.parts:
            if isinstance(x, bytes):
                out.append(x)
            else:
                x.emit(out)


def node(kind: bytes, *parts: bytes | Node) -> Node:
    return Node(kind, parts)


def full_node(kind: bytes, version: int, flags: int, *parts: bytes | Node) -> Node:
    return Node(kind, parts, _FULL.pack((version << 24) | flags))
