"""Writing one segment: a fragmented MP4 (fragments of about 1 s) muxed by PyAV into a temp
file, hashed with sha256 as the bytes are written, then made durable (fsync file, rename,
fsync directory). Runs on the recorder thread of one camera; never on the event loop.

The output is deliberately non-seekable: the muxer then cannot go back and rewrite earlier
bytes, so the hash computed while writing is the hash of the final file and a crash leaves a
prefix of complete fragments that start-up recovery can keep.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from av.container import OutputContainer

from nvr.storage.errors import PacketRejected, StorageError, StorageFullError, StorageIOError

FRAGMENT_MICROSECONDS = 1_000_000
WRITE_BUFFER_BYTES = 128 * 1024
"""PyAV's I/O buffer per segment. The MP4 muxer keeps a fragment in memory and hands it over
at the fragment's end; `flush_packets` then pushes it out at once, in writes of this size:
four writes and hash updates for a fragment of a 4 Mbit/s camera (1 s, ~512 KB) instead of
16 with PyAV's default 32 KiB. A buffer holding the whole fragment (512 KiB until issue 12)
saved three calls a second but kept 384 KiB more resident per camera: every page of it is
written once a second."""
QUICKTIME_AUDIO = frozenset({"pcm_alaw", "pcm_mulaw"})
"""Audio codecs written as QuickTime (FFmpeg's `mov` muxer) instead of ISO MP4: G.711, the
usual audio of Hikvision and Dahua cameras, has no MP4 sample entry, but QuickTime's
`alaw`/`ulaw` entries are read by FFmpeg (so PyAV, ffprobe, VLC, mpv) and QuickTime itself.
Same fragmented layout, same H.264/H.265 sample entries, same `.mp4` name: readers go by the
boxes, not the name. Browsers play neither form of G.711: playback that must play in a
browser converts the audio (recordings themselves are never re-encoded)."""

MUX_OPTIONS = {
    "movflags": "empty_moov+default_base_moof+frag_keyframe",
    "frag_duration": str(FRAGMENT_MICROSECONDS),
    "flush_packets": "1",
}


def container_format(audio_codec: str | None) -> str:
    """The muxer for a segment whose audio is `audio_codec` (None: no audio)."""
    return "mov" if audio_codec in QUICKTIME_AUDIO else "mp4"


class _HashingSink:
    """A write-only file object for PyAV: every byte goes to the file and to the hash."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        total = len(view)
        done = 0
        while done < total:
            done += os.write(self.fd, view[done:])
        self.hash.update(view)
        self.size += total
        return total

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class WrittenFile:
    """A durable segment file, ready to be indexed."""

    path: Path
    bytes: int
    sha256: str


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(err: OSError | av.FFmpegError, what: str) -> StorageError:
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{what}: no space left on device")
    if _refused_by_muxer(err):
        return PacketRejected(f"{what}: the muxer refused the stream ({err.strerror or err})")
    return StorageIOError(f"{what}: {err.strerror or err}")


def _refused_by_muxer(err: BaseException) -> bool:
    """FFmpeg's own EINVAL or invalid-data verdict on what it was given (missing dimensions,
    bad timestamps): not a disk failure. An OSError of our file sink never counts: PyAV
    re-raises it as it was."""
    return isinstance(err, av.FFmpegError) and (
        err.errno == errno.EINVAL or isinstance(err, av.error.InvalidDataError)
    )


class SegmentWriter:
    """Mux packets of one video (and optional audio) stream into a `.part` temp file; an
    audio-only camera's segments have the audio stream alone.

    `finish()` writes the trailer, fsyncs, renames to the final path and fsyncs the directory.
    `abandon()` closes what was written without renaming (the `.part` file stays for salvage:
    footage is never deleted because a write failed).
    """

    def __init__(
        self,
        temp_path: Path,
        video: av.video.stream.VideoStream | None,
        audio: av.audio.stream.AudioStream | None,
    ) -> None:
        if video is None and audio is None:
            raise PacketRejected(f"{temp_path}: a segment needs a video or an audio stream")
        self.temp_path = temp_path
        try:
            temp_path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = _HashingSink(self.temp_path)
        except OSError as err:
            raise _os_error(err, f"cannot create {self.temp_path}") from err
        try:
            self._out: OutputContainer = av.open(
                self._sink,
                "w",
                format=container_format(audio.codec_context.name if audio is not None else None),
                options=MUX_OPTIONS,
                buffer_size=WRITE_BUFFER_BYTES,
            )
            self.video = (
                self._out.add_stream_from_template(video) if video is not None else None
            )
            self.audio = self._out.add_stream_from_template(audio) if audio is not None else None
        except (av.FFmpegError, OSError) as err:
            self._sink.close()
            self.temp_path.unlink(missing_ok=True)  # we made it a moment ago: still empty
            if isinstance(err, av.FFmpegError):
                raise PacketRejected(f"cannot start muxing {self.temp_path}: {err}") from err
            raise StorageIOError(f"cannot start muxing {self.temp_path}: {err}") from err
        self.packets = 0

    def mux(self, packet: av.Packet[Any]) -> None:
        """Write one packet whose `stream` is already `self.video` or `self.audio`."""
        try:
            self._out.mux_one(packet)
        except (OSError, av.FFmpegError) as err:
            raise _os_error(err, f"writing {self.temp_path}") from err
        self.packets += 1

    @property
    def bytes_written(self) -> int:
        return self._sink.size

    def finish(self, final_path: Path) -> WrittenFile:
        """Trailer, fsync, rename to `final_path`, fsync its directory. The caller then
        indexes the file."""
        try:
            self._out.close()
            os.fsync(self._sink.fd)
        except (OSError, av.FFmpegError) as err:
            self._sink.close()
            raise _os_error(err, f"finishing {self.temp_path}") from err
        self._sink.close()
        try:
            os.rename(self.temp_path, final_path)
            fsync_dir(final_path.parent)
            if final_path.parent != self.temp_path.parent:
                fsync_dir(self.temp_path.parent)
        except OSError as err:
            raise _os_error(err, f"renaming {self.temp_path}") from err
        return WrittenFile(final_path, self._sink.size, self._sink.hash.hexdigest())

    def abandon(self) -> None:
        """Stop writing after a failure; keep the `.part` file for start-up salvage."""
        try:
            self._out.close()
        except (av.FFmpegError, OSError):
            pass  # the write already failed; what reached the disk is salvaged later
        self._sink.close()
