"""`ExportService`: builds the evidence package of an approved export (R5, R6).

The register and the two-person rule live in the index (`SegmentStore.exports`); this service
builds the package once the second person has approved: the original segments (re-hashed
against the index while they are copied), one MP4 of the range, a signed manifest (see
`storage.media.package`). Builds run one at a time on a worker thread, started from the event loop;
an approved export whose build was interrupted (daemon stopped) is built again at start-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvr.api.masking import VirtualFileIO, mask_file
from nvr.api.playback import PlaybackService, Recording, etag, gap_causes
from nvr.config import CameraConfig, NvrConfig
from nvr.config.models import SiteConfig
from nvr.storage import SegmentRefs, SegmentStore, StorageError
from nvr.storage.exports import Export, ExportFile
from nvr.storage.media.boxes import Mp4Error
from nvr.storage.media.cover import local_time, zone, zone_label
from nvr.storage.media.package import (
    Cancelled,
    PackageError,
    file_chunks,
    fingerprint,
    load_or_create_key,
    public_pem,
    write_package,
)
from nvr.storage.timestamps import iso

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger("nvr.api.exports")


def package_masked(path: Path) -> bool:
    """Whether a built package carries privacy masks (its manifest's `privacy_masks.applied`).
    Blocking (reads the ZIP's manifest); a worker thread."""
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    masks = manifest.get("privacy_masks")
    return isinstance(masks, dict) and masks.get("applied") is True


class ExportService:
    def __init__(
        self,
        store: SegmentStore,
        playback: PlaybackService,
        key_path: Path,
        directory: Path,
        config: NvrConfig | None = None,
    ) -> None:
        """`key_path`: the Ed25519 signing key, read (or created, mode 0600) when first
        needed, so a daemon that never exports never loads the crypto library."""
        self._store = store
        self._playback = playback
        self._key_path = key_path
        self._loaded_key: Ed25519PrivateKey | None = None
        self._key_lock = threading.Lock()
        self.directory = directory
        self._config = config
        """Site, time zone and camera locations for the cover sheet."""
        self._stop = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()

    def reconfigure(self, config: NvrConfig) -> None:
        """A reloaded config (on the event loop; readers see the old or the new one)."""
        self._config = config

    def key(self) -> Ed25519PrivateKey:
        """The signing key (blocking the first time: file I/O). PackageError if unusable."""
        with self._key_lock:
            if self._loaded_key is None:
                self._loaded_key = load_or_create_key(self._key_path)
            return self._loaded_key

    def public_key_pem(self) -> bytes:
        return public_pem(self.key())

    def key_fingerprint(self) -> str:
        return fingerprint(self.key())

    def package_path(self, export: Export) -> Path | None:
        if export.package is None:
            return None
        return self._store.root / export.package

    def schedule(self, export_id: int) -> None:
        """Build the package of an approved export in the background."""
        task = asyncio.get_running_loop().create_task(
            self._run(export_id), name=f"export-{export_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Start builds that were interrupted by a stop."""
        for export in await asyncio.to_thread(self._store.exports.interrupted):
            log.warning(
                "export %d: building its package again after an interrupted build", export.id
            )
            self.schedule(export.id)

    async def wait_idle(self) -> None:
        """Until no build is running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Ask running builds to stop at the next chunk (they resume at the next start)."""
        self._stop.set()
        await self.wait_idle()

    async def _run(self, export_id: int) -> None:
        async with self._one_at_a_time:
            if self._stop.is_set():
                return
            try:
                await asyncio.to_thread(self.build, export_id)
            except Cancelled:
                log.info("export %d: build stopped; it resumes at the next start", export_id)
            except (StorageError, PackageError, Mp4Error, OSError) as err:
                log.error("export %d: package failed: %s", export_id, err)
                await asyncio.to_thread(self._store.exports.mark_failed, export_id, str(err))
            except Exception as err:
                # A bug must not leave an approved export "building" for ever: record it.
                log.exception("export %d: unexpected error while building the package", export_id)
                await asyncio.to_thread(
                    self._store.exports.mark_failed, export_id, f"internal error: {err!r}"
                )

    def _camera(self, name: str) -> CameraConfig | None:
        if self._config is None:
            return None
        try:
            return self._config.camera(name)
        except KeyError:
            return None

    def build(self, export_id: int) -> Export:
        """Build and register the package of an approved export. Blocking."""
        export = self._store.exports.get(export_id)
        segments = self._store.segments(export.camera, export.start_ms, export.end_ms)
        if not segments:
            raise PackageError("no footage is left in the range")
        rec = Recording(
            export.camera,
            export.start_ms,
            export.end_ms,
            SegmentRefs.of(segments),
            etag(export.camera, export.start_ms, export.end_ms, segments),
        )
        vf = self._playback.file_sync(rec)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"export-{export.id:06d}.zip"
        site = self._config.site if self._config is not None else SiteConfig()
        tz = zone(site.timezone)
        cam = self._camera(export.camera)
        built = self._store.now()
        outages = [
            {
                "start": iso(o.start_ms),
                "end": iso(o.end_ms) if o.end_ms is not None else None,
                "start_local": local_time(o.start_ms, tz),
                "end_local": local_time(o.end_ms, tz) if o.end_ms is not None else None,
                "seconds": (o.end_ms - o.start_ms) / 1000 if o.end_ms is not None else None,
                "cause": o.cause,
                "detail": o.detail,
            }
            for o in self._store.ledger.outages(export.camera, export.start_ms)
            if o.start_ms < export.end_ms
        ]
        gaps = [
            {
                "start": iso(g.start_ms),
                "end": iso(g.end_ms),
                "start_local": local_time(g.start_ms, tz),
                "end_local": local_time(g.end_ms, tz),
                "seconds": (g.end_ms - g.start_ms) / 1000,
                "causes": [{"cause": c, "detail": d} for c, d in g.causes],
            }
            for g in gap_causes(self._store, export.camera, vf.gaps)
        ]
        manifest: dict[str, Any] = {
            "export_id": export.id,
            "store_id": self._store.store_id,
            "site": {"name": site.name, "timezone": site.timezone},
            "camera": export.camera,
            "camera_info": {
                "name": export.camera,
                "location": cam.location if cam is not None else "",
                "description": cam.description if cam is not None else "",
            },
            "range": {
                "start_ms": export.start_ms,
                "end_ms": export.end_ms,
                "start": iso(export.start_ms),
                "end": iso(export.end_ms),
                "zone": zone_label(site.timezone, export.start_ms),
                "start_local": local_time(export.start_ms, tz),
                "end_local": local_time(export.end_ms, tz),
            },
            "outages": outages,
            "requester": {
                "user": export.requester,
                "work_id": export.requester_work_id,
                "at_ms": export.requested_ms,
                "at_local": local_time(export.requested_ms, tz),
            },
            "approver": {
                "user": export.approver,
                "work_id": export.approver_work_id,
                "at_ms": export.approved_ms,
                "at_local": local_time(export.approved_ms or built, tz),
            },
            "purpose": export.purpose,
            "recipient": export.recipient,
            "approval_document": export.approval_document,
            "built_at_ms": built,
            "built_local": local_time(built, tz),
            "segments": [
                {
                    "file": f"segments/{seg.path.name}",
                    "start_ms": seg.start_ms,
                    "end_ms": seg.end_ms,
                    "bytes": seg.bytes,
                    "sha256": seg.sha256,
                    "chain": seg.chain,
                    "recovered": seg.recovered,
                }
                for seg in segments
            ],
            "recording": {
                "file": "recording.mp4",
                "start_ms": vf.start_ms,
                "end_ms": vf.end_ms,
                "note": "one MP4 of the range, from the keyframe at or before the start; "
                "no picture during a gap (an empty edit keeps the time line true); "
                "the original segments are the evidence",
                "gaps": gaps,
            },
        }
        files: list[tuple[str, Callable[[], Iterator[bytes]], str | None]] = [
            (f"segments/{seg.path.name}", file_chunks(seg.path), seg.sha256) for seg in segments
        ]
        files.append(("recording.mp4", lambda: vf.chunks(0, vf.size - 1), None))
        masks = list(cam.privacy_masks) if cam is not None else []
        # Masked unless both people who released it may see behind the masks: the package goes
        # to the requester and the approver (and a masked one may not download an unmasked
        # package: `package_masked`, checked on download).
        people = [export.requester, *([export.approver] if export.approver else [])]
        users = [self._store.accounts.user(name) for name in people]
        masked = bool(masks) and not all(u is not None and u.unmasked for u in users)
        copy = self.directory / f"export-{export.id:06d}.masked.tmp"
        if masked:
            # Privacy masks (R10): someone it goes to may not see behind them, so it holds
            # only a masked re-encoded recording; the originals stay on the recorder, named
            # by their hashes (which still prove what the copy was made from).
            mask_file(VirtualFileIO(vf), copy, masks)
            manifest["privacy_masks"] = {
                "applied": True,
                "polygons": [m.points for m in masks],
                "note": "recording.mp4 was decoded and re-encoded (H.264) with these areas "
                "(normalised coordinates) filled black; the original segments are not in the "
                "package; their hashes below identify them on the recorder",
                "originals": manifest.pop("segments"),
            }
            manifest["segments"] = []
            manifest["recording"]["note"] = (
                "one MP4 of the range with the privacy masks filled, re-encoded from the "
                "original segments listed under privacy_masks.originals"
            )
            files = [("recording.mp4", file_chunks(copy), None)]
        try:
            manifest_sha, packed = write_package(
                path, self.key(), manifest, files, should_stop=self._stop.is_set
            )
        finally:
            copy.unlink(missing_ok=True)
        rel = (
            str(path.relative_to(self._store.root))
            if path.is_relative_to(self._store.root)
            else str(path)
        )
        return self._store.exports.mark_ready(
            export.id,
            package=rel,
            manifest_sha256=manifest_sha,
            files=[ExportFile(p.name, p.bytes, p.sha256) for p in packed],
        )
