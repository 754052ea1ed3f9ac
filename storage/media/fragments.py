"""Reading the top-level box structure of a fragmented MP4, to salvage a file that was being
written when the process died: how much of it is complete fragments. Walks with
`storage.media.boxes.file_boxes`, as the segment reader does. Blocking reads of a file path;
run on whichever thread salvages (the store's start-up recovery, before recorders start).
Imports go down to `storage.media.boxes`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nvr.storage.media.boxes import file_boxes


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
    has_moov = False
    fragments = 0
    good = 0
    pending_moof = False
    media_seen = False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for box in file_boxes(fd, size):
            if box.kind in (b"moof", b"mdat"):
                media_seen = True
            if not box.complete:
                break
            if box.kind == b"moov":
                has_moov = True
                good = box.end
            elif box.kind == b"moof":
                pending_moof = True
            elif box.kind == b"mdat":
                if pending_moof:
                    fragments += 1
                    pending_moof = False
                    good = box.end
            elif not pending_moof:
                good = box.end  # ftyp, free, sidx, mfra...: complete boxes between fragments
    finally:
        os.close(fd)
    return BoxScan(
        has_moov=has_moov, fragments=fragments, good_bytes=good, size=size, media_seen=media_seen
    )
