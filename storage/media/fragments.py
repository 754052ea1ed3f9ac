"""Reading the top-level box structure of a fragmented MP4, to salvage a file that was being
written when the process died. Pure functions on a file path; run on whichever thread salvages
(the store's start-up recovery, before recorders start)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BoxScan:
    """Where the playable part of a fragmented MP4 ends."""

    has_moov: bool
    fragments: int
    """Complete moof+mdat pairs."""
    good_bytes: int
    """Length of the prefix made only of complete boxes and complete fragments."""
    size: int
    media_seen: bool = False
    """A `moof` or `mdat` box was begun, complete or cut short: the file may hold samples.
    False for a header-only file (`ftyp`/`moov`, possibly cut), which holds no footage."""

    @property
    def complete(self) -> bool:
        """Every byte belongs to a complete box, with a `moov` and at least one fragment."""
        return self.has_moov and self.fragments > 0 and self.good_bytes == self.size


def scan_fragments(path: Path) -> BoxScan:
    """Walk top-level boxes; stop at the first one that is cut short or malformed."""
    size = path.stat().st_size
    has_moov = False
    fragments = 0
    good = 0
    pending_moof = False
    media_seen = False
    with path.open("rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            header = f.read(16)
            box_len, kind = struct.unpack(">I4s", header[:8])
            if kind in (b"moof", b"mdat"):
                media_seen = True
            header_len = 8
            if box_len == 1:
                if len(header) < 16:
                    break
                box_len = struct.unpack(">Q", header[8:16])[0]
                header_len = 16
            elif box_len == 0:
                box_len = size - pos  # "to end of file": only valid for the last box
            if box_len < header_len or pos + box_len > size:
                break
            pos += box_len
            if kind == b"moov":
                has_moov = True
                good = pos
            elif kind == b"moof":
                pending_moof = True
            elif kind == b"mdat":
                if pending_moof:
                    fragments += 1
                    pending_moof = False
                    good = pos
            elif not pending_moof:
                good = pos  # ftyp, free, sidx, mfra...: complete boxes between fragments
    return BoxScan(
        has_moov=has_moov, fragments=fragments, good_bytes=good, size=size, media_seen=media_seen
    )
