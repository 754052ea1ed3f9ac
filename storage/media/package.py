"""Evidence export packages: the signing key, writing a package, and verifying one offline.

A package is one ZIP file (stored, not compressed; ZIP64 when large) holding:

- `segments/<name>.mp4`: the original segment files, byte for byte (their sha256 is the one
  indexed when they were recorded, and their chain values link them to the camera's chain);
  absent from an export with privacy masks (R10), whose manifest names them by their hashes
  under `privacy_masks.originals` and whose cover sheet says so;
- `recording.mp4`: the requested range as one standard MP4 (from the keyframe at or before
  the start), for viewing;
- `README.txt`, `cover.html`: the cover sheet for the recipient, in Chinese and English
  (see `storage.media.cover`);
- `manifest.json`: site, camera (name, location, description), range (UTC and local time
  with its offset), the outages inside the range with their causes, segments with hashes and
  chain values, requester, approver, work ids, purpose, recipient, approval document, times,
  and every other file of the package with its size and sha256;
- `SHA256SUMS`: every file but itself and the signature, for `sha256sum -c`;
- `manifest.sig`: the raw 64-byte Ed25519 signature over the exact bytes of `manifest.json`
  (`openssl pkeyutl -verify -pubin -inkey signing-key.pub -rawin -in manifest.json
  -sigfile manifest.sig`);
- `signing-key.pub`: the public key (PEM), for convenience. Verification should use a key
  obtained independently (`GET /api/signing-key`, `--key`): the embedded key only proves that
  the package is intact, not who made it.

`verify_package` takes the ZIP as built, the same files zipped again by any tool (directory
entries, another order, one folder around them) or an extracted folder.

Blocking file work; run on worker threads (the API's export builder) or the CLI's main thread
(`nvr verify-export`). No secrets are written except the private key, created once with mode
0600. Imports go down: `storage.media.cover`, `storage.signing`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvr.storage import signing
from nvr.storage.media.cover import COVER, README, SUMS, cover_html, readme

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# `cryptography` is imported where a key is used, not with this module: the daemon then
# carries its ~6 MiB only once something is exported or verified.

FORMAT = "nvr-export-2"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT_1 = "nvr-export-1"
PUBLIC_KEY = "signing-key.pub"
COPY_CHUNK = 1 << 20


class PackageError(Exception):
    """A package or key that cannot be read or written."""


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at `path`, created (mode 0600, atomically) if missing."""
    try:
        return signing.load_or_create_key(path)
    except signing.SigningKeyError as err:
        raise PackageError(str(err)) from err


public_pem = signing.public_pem
fingerprint = signing.fingerprint


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass(frozen=True)
class PackedFile:
    name: str
    bytes: int
    sha256: str


class Cancelled(Exception):
    """The package build was asked to stop (daemon shutting down)."""


def write_package(
    path: Path,
    key: Ed25519PrivateKey,
    manifest: dict[str, Any],
    files: Iterable[tuple[str, Callable[[], Iterator[bytes]], str | None]],
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[str, list[PackedFile]]:
    """Write the package to `path` (via `path.part`, fsynced, renamed). `files` gives
    (name in the package, chunk source, expected sha256 or None); a file whose bytes do not
    hash to the expected value aborts the package (an original changed on disk).
    Returns the manifest's sha256 and the files packed."""
    tmp = path.with_name(path.name + ".part")
    packed: list[PackedFile] = []
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, source, expected in files:
                digest = hashlib.sha256()
                size = 0
                info = _info(name)
                info.compress_type = zipfile.ZIP_STORED
                with zf.open(info, "w", force_zip64=True) as out:
                    for chunk in source():
                        if should_stop():
                            raise Cancelled("package build stopped")
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                sha = digest.hexdigest()
                if expected is not None and sha != expected:
                    raise PackageError(
                        f"{name}: the file on disk hashes to {sha}, the index says {expected}; "
                        "the original was altered, so it is not exported"
                    )
                packed.append(PackedFile(name, size, sha))
            doc = dict(manifest)
            doc["format"] = FORMAT
            doc["signing_key_sha256"] = fingerprint(key)
            if "camera_info" in doc:
                footage = [(p.name, p.bytes, p.sha256) for p in packed]
                for name, text in (
                    (README, readme(doc, footage)),
                    (COVER, cover_html(doc, footage)),
                ):
                    data = text.encode("utf-8")
                    zf.writestr(_info(name), data)
                    packed.append(PackedFile(name, len(data), hashlib.sha256(data).hexdigest()))
            doc["files"] = [{"name": p.name, "bytes": p.bytes, "sha256": p.sha256} for p in packed]
            body = canonical(doc)
            sums = "".join(f"{p.sha256}  {p.name}\n" for p in packed)
            sums += f"{hashlib.sha256(body).hexdigest()}  {MANIFEST}\n"
            zf.writestr(_info(MANIFEST), body)
            zf.writestr(_info(SUMS), sums.encode("ascii"))
            zf.writestr(_info(SIGNATURE), key.sign(body))
            zf.writestr(_info(PUBLIC_KEY), public_pem(key))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(body).hexdigest(), packed


def _info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16  # readable files once unzipped
    return info


def file_chunks(path: Path) -> Callable[[], Iterator[bytes]]:
    def read() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(COPY_CHUNK):
                yield chunk

    return read


@dataclass(frozen=True)
class Verification:
    problems: list[str]
    notes: list[str]
    manifest: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.problems


def _load_public(data: bytes, where: str) -> Ed25519PublicKey:
    try:
        return signing.load_public(data, where)
    except signing.SigningKeyError as err:
        raise PackageError(str(err)) from err


class _Source:
    """The files of a package: a ZIP (as built or zipped again) or an extracted folder.
    Names are relative to the package's top (a single folder around everything is skipped);
    directory entries are not files."""

    def __init__(self, package: Path) -> None:
        self._zip: zipfile.ZipFile | None = None
        self._dir: Path | None = None
        self.names: list[str] = []
        self._prefix = ""
        if package.is_dir():
            base = package
            entries = [p for p in base.iterdir() if not p.name.startswith(".")]
            if MANIFEST not in {p.name for p in entries}:
                subdirs = [p for p in entries if p.is_dir()]
                if len(subdirs) == 1 and (subdirs[0] / MANIFEST).exists():
                    base = subdirs[0]
            self._dir = base
            self.names = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
            return
        self._zip = zipfile.ZipFile(package)
        raw = [n for n in self._zip.namelist() if not n.endswith("/")]
        if MANIFEST not in raw:
            tops = {n.split("/", 1)[0] for n in raw}
            if len(tops) == 1 and "/" in raw[0]:
                self._prefix = raw[0].split("/", 1)[0] + "/"
        self.names = [n[len(self._prefix) :] for n in raw]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._prefix + name)
        assert self._dir is not None
        return (self._dir / name).read_bytes()

    def chunks(self, name: str) -> Iterator[bytes]:
        if self._zip is not None:
            with self._zip.open(self._prefix + name) as f:
                while chunk := f.read(COPY_CHUNK):
                    yield chunk
            return
        assert self._dir is not None
        with (self._dir / name).open("rb") as f:
            while chunk := f.read(COPY_CHUNK):
                yield chunk

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _signature(data: bytes) -> bytes:
    """The raw signature; packages of the first format kept it base64-encoded."""
    if len(data) == 64:
        return data
    return base64.b64decode(data.strip(), validate=True)


def verify_package(package: Path, key_pem: bytes | None = None) -> Verification:
    """Check a package offline: the manifest's signature (with `key_pem`, else the embedded
    key, which is noted), and every file's size and sha256. A problem says `missing` for a
    file that is not there and `altered` for one that differs; anything else (files added,
    directory entries, order, a folder around it all) is a note."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        src = _Source(package)
    except (OSError, zipfile.BadZipFile) as err:
        return Verification([f"{package}: not a readable package ({err})"], notes, None)
    try:
        names = src.names
        if len(set(names)) != len(names):
            problems.append("the archive lists a file twice (altered)")
        for required in (MANIFEST, SIGNATURE):
            if required not in names:
                problems.append(f"{required}: missing")
        if problems:
            return Verification(problems, notes, None)
        try:
            body = src.read(MANIFEST)
            signature = _signature(src.read(SIGNATURE))
            embedded = src.read(PUBLIC_KEY) if PUBLIC_KEY in names else None
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            return Verification(
                [f"cannot read the manifest or signature (altered): {err}"], notes, None
            )
        try:
            if key_pem is not None:
                pub = _load_public(key_pem, "--key")
                if embedded is not None and embedded.strip() != key_pem.strip():
                    notes.append("the package's embedded key differs from the given key")
            elif embedded is not None:
                pub = _load_public(embedded, PUBLIC_KEY)
                notes.append(
                    "checked against the key inside the package: this proves integrity, not "
                    "origin; pass --key with the recorder's key (GET /api/signing-key)"
                )
            else:
                return Verification([f"{PUBLIC_KEY}: missing, and no --key given"], notes, None)
        except PackageError as err:
            return Verification([str(err)], notes, None)
        if not signing.signature_ok(pub, signature, body):
            problems.append(
                f"{MANIFEST}: altered (its signature does not verify: manifest changed or "
                "wrong key)"
            )
        try:
            manifest: dict[str, Any] = json.loads(body)
        except ValueError:
            return Verification([*problems, f"{MANIFEST}: altered (not JSON)"], notes, None)
        listed = manifest.get("files")
        if not isinstance(listed, list):
            return Verification([*problems, "the manifest lists no files"], notes, manifest)
        expected = {MANIFEST, SIGNATURE, PUBLIC_KEY, SUMS}
        present = set(names)
        for entry in listed:
            try:
                name, size, sha = str(entry["name"]), int(entry["bytes"]), str(entry["sha256"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"malformed file entry in the manifest: {entry!r}")
                continue
            expected.add(name)
            if name not in present:
                problems.append(f"{name}: missing (listed in the manifest)")
                continue
            digest = hashlib.sha256()
            count = 0
            try:
                for chunk in src.chunks(name):
                    digest.update(chunk)
                    count += len(chunk)
            except (zipfile.BadZipFile, OSError) as err:
                problems.append(f"{name}: altered (cannot be read: {err})")
                continue
            if count != size or digest.hexdigest() != sha:
                problems.append(
                    f"{name}: altered ({count} bytes, sha256 {digest.hexdigest()}; the manifest "
                    f"says {size} bytes, sha256 {sha})"
                )
        for name in names:
            if name not in expected:
                notes.append(f"{name}: in the package but not in the manifest (ignored)")
        listed_hashes = {
            str(e.get("name")): str(e.get("sha256")) for e in listed if isinstance(e, dict)
        }
        for seg in manifest.get("segments", []):
            if not isinstance(seg, dict):
                continue
            fname = str(seg.get("file"))
            if listed_hashes.get(fname) != seg.get("sha256"):
                problems.append(f"{fname}: altered (its recorded segment hash differs)")
    finally:
        src.close()
    return Verification(problems, notes, manifest)
