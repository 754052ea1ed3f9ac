"""Approval documents uploaded with an export request (R6: "work ID and an approval
document"): `POST /exports/documents` takes the file's bytes as the body (an operator, with
the page session and its CSRF token, or a bearer token), streams them to
`<exports_dir>/approval-documents/<sha256>` (temp file, fsync, rename, fsync directory) and
answers the sha256 that the export request's `approval_document` then names, so the signed
manifest binds the document. `GET /exports/documents/<sha256>` hands it back as an
attachment (never rendered by the browser) to operators, auditors and admins, so the second
person can read it before approving. Both are audited. Runs on the event loop; file I/O goes
through `asyncio.to_thread`; the body is never held in memory whole."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from pathlib import Path as FilePath
from typing import Annotated, BinaryIO
from urllib.parse import unquote

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, JSONResponse

from nvr.api.auth import OPERATE, has_role
from nvr.api.deps import ServicesDep, SessionDep
from nvr.api.errors import ApiError, BadRequest, Forbidden, NotFound
from nvr.api.middleware import printable
from nvr.api.models import DocumentOut
from nvr.api.routes import problems
from nvr.api.services import ApiServices

router = APIRouter(tags=["exports"])

DOCUMENT_PATH = "/exports/documents"
DOCUMENT_MAX_BYTES = 16 << 20
"""A scanned approval letter of a few pages fits; larger uploads get 413."""
Sha256Path = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]


class TooLarge(ApiError):
    status = 413
    code = "too-large"


def _folder(services: ApiServices) -> FilePath:
    return services.exports.directory / "approval-documents"


def _file_name(header: str | None) -> str:
    """The uploaded file's own name (percent-encoded in `X-Filename`), kept printable and
    short for the register; never used as a path."""
    name = unquote(header or "")[:200]
    name = re.sub(r"[\x00-\x1f\x7f/\\\\]", "_", name).strip() or "document"
    return name


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def _store(tmp: FilePath, final: FilePath) -> None:
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


UPLOAD_BODY = {
    "required": True,
    "description": "The document's bytes as they are (a scan, a PDF): the body is the file.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


@router.post(
    DOCUMENT_PATH,
    status_code=201,
    response_model=DocumentOut,
    responses=problems(400, 401, 403, 413),
    openapi_extra={
        "requestBody": UPLOAD_BODY,
        "parameters": [
            {
                "name": "X-Filename",
                "in": "header",
                "required": False,
                "description": "The file's own name, percent-encoded (kept for the register)",
                "schema": {"type": "string", "maxLength": 600},
            }
        ],
    },
)
async def upload(request: Request, session: SessionDep, services: ServicesDep) -> JSONResponse:
    """Upload an approval document for an export request (R6): the body is the file (at most
    16 MiB, streamed to disk), answered with its sha256 for the request's
    `approval_document`. Operators and admins; audited (`approval-document`)."""
    user = session.user
    if not has_role(user, OPERATE):
        raise Forbidden(
            "uploading an approval document needs the role operator or admin", code="role-forbidden"
        )
    name = _file_name(request.headers.get("x-filename"))
    folder = _folder(services)
    await asyncio.to_thread(lambda: folder.mkdir(parents=True, exist_ok=True))
    tmp = folder / f".upload-{secrets.token_hex(8)}"
    out = await asyncio.to_thread(tmp.open, "wb")
    digest = hashlib.sha256()
    size = 0
    done = False
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > DOCUMENT_MAX_BYTES:
                raise TooLarge(f"an approval document may be at most {DOCUMENT_MAX_BYTES} bytes")
            digest.update(chunk)
            await asyncio.to_thread(out.write, chunk)
        if size == 0:
            raise BadRequest("the approval document is empty")
        await asyncio.to_thread(_flush, out)
        done = True
    finally:
        await asyncio.to_thread(out.close)
        if not done:
            await asyncio.to_thread(lambda: tmp.unlink(missing_ok=True))
    sha = digest.hexdigest()
    await asyncio.to_thread(_store, tmp, folder / sha)
    await asyncio.to_thread(
        services.store.audit.append,
        user.name,
        "approval-document",
        f"document:{sha}",
        "ok",
        {"name": printable(name, 200), "bytes": size, "type": request.headers.get("content-type")},
    )
    return JSONResponse(
        {"sha256": sha, "bytes": size, "name": name, "url": f"{DOCUMENT_PATH}/{sha}"},
        status_code=201,
    )


@router.get(DOCUMENT_PATH + "/{sha256}", include_in_schema=False)
async def download(sha256: Sha256Path, session: SessionDep, services: ServicesDep) -> FileResponse:
    user = session.user
    if user.role not in ("operator", "auditor", "admin"):
        raise Forbidden(
            "approval documents need the role operator, auditor or admin", code="role-forbidden"
        )
    path = _folder(services) / sha256
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("no such approval document")
    await asyncio.to_thread(
        services.store.audit.append, user.name, "approval-document-view", f"document:{sha256}"
    )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"approval-{sha256[:12]}",
        headers={"Cache-Control": "private, no-store"},
    )
