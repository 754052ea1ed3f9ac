"""Evidence exports with two persons (R5, R6): request, approval by a second operator or
admin, the retrieval register, the package download (audited), and the signing key."""

from __future__ import annotations

import asyncio
import logging
import os
import zipfile
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse

from nvr.api.deps import OperatorDep, ServicesDep, UserDep, check_camera, sees_metadata
from nvr.api.errors import Conflict, Forbidden, NotFound, Unavailable
from nvr.api.exports import package_masked
from nvr.api.middleware import printable
from nvr.api.models import (
    ApproveIn,
    CancelIn,
    ExportIn,
    ExportOut,
    RejectIn,
    list_of,
)
from nvr.api.params import parse_range
from nvr.api.routes import ERRORS, problems
from nvr.api.routes.cameras import privacy_masks
from nvr.storage import StorageError
from nvr.storage.accounts import User
from nvr.storage.exports import READY, Export, ExportError, ExportRefused
from nvr.storage.media.package import PackageError

router = APIRouter(tags=["exports"])

ExportId = Annotated[int, Path(ge=1, le=2**62)]


def export_out(e: Export) -> ExportOut:
    return ExportOut.model_validate(e)


log = logging.getLogger("nvr.api.exports")


def _refusal(err: ExportRefused, what: str, who: str) -> Forbidden | Conflict:
    """403 when refused because of who asked, 409 when because of the request's state; the
    refusal is logged (it is audited by the store)."""
    log.warning("export %s by %s refused: %s", what, printable(who, 64), printable(err.reason))
    if err.person:
        return Forbidden(err.reason, code=err.code)
    return Conflict(err.reason, code=err.code)


def _decided(export: Export, verb: str, who: str) -> None:
    """Log an export decision beside its audit entry (who, which range, why, to whom)."""
    log.info(
        "export %d %s by %s: camera %s, %s .. %s ms, purpose %s, recipient %s",
        export.id,
        verb,
        printable(who, 64),
        export.camera,
        export.start_ms,
        export.end_ms,
        printable(export.purpose, 200),
        printable(export.recipient, 200),
    )


async def _visible_export(services: ServicesDep, user: User, export_id: int) -> Export:
    try:
        export = await asyncio.to_thread(services.store.exports.get, export_id)
    except ExportError as err:
        raise NotFound(str(err)) from err
    if user.role not in ("operator", "auditor", "admin") or not sees_metadata(user, export.camera):
        raise Forbidden("you are not permitted to see this export")
    return export


async def _export_to_decide(services: ServicesDep, user: User, export_id: int) -> Export:
    """An export `user` may approve or reject: one whose camera's footage it may see."""
    export = await _visible_export(services, user, export_id)
    if not user.may_view(export.camera):
        raise Forbidden("you are not permitted to see this camera", code="camera-forbidden")
    return export


@router.post("/api/exports", response_model=ExportOut, status_code=201, responses=ERRORS)
async def request_export(body: ExportIn, user: OperatorDep, services: ServicesDep) -> ExportOut:
    """Register a pending export request. A second, different operator or admin must
    approve it before any package is built."""
    await check_camera(services, user, body.camera)
    rng = parse_range(body.start, body.end, services.settings.max_range_hours)
    segments = await asyncio.to_thread(
        services.store.segments, body.camera, rng.start_ms, rng.end_ms
    )
    if not segments:
        raise NotFound("no footage in this range")
    try:
        export = await asyncio.to_thread(
            lambda: services.store.exports.request(
                camera=body.camera,
                start_ms=rng.start_ms,
                end_ms=rng.end_ms,
                purpose=body.purpose,
                recipient=body.recipient,
                approval_document=body.approval_document,
                requester=user.name,
                requester_work_id=body.requester_work_id,
            )
        )
    except ExportRefused as err:
        raise _refusal(err, "request", user.name) from err
    _decided(export, "requested", user.name)
    services.tell_export(export, user.name)
    return export_out(export)


@router.post("/api/exports/{export_id}/approve", response_model=ExportOut, responses=ERRORS)
async def approve_export(
    export_id: ExportId, body: ApproveIn, user: OperatorDep, services: ServicesDep
) -> ExportOut:
    """The second person's approval. Refused for the requester (403) and for requests no
    longer pending (409). The package is then built in the background."""
    await _export_to_decide(services, user, export_id)
    try:
        approved = await asyncio.to_thread(
            lambda: services.store.exports.approve(
                export_id, approver=user.name, approver_work_id=body.approver_work_id
            )
        )
    except ExportRefused as err:
        raise _refusal(err, f"{export_id} approval", user.name) from err
    _decided(approved, "approved", user.name)
    services.exports.schedule(export_id)
    services.tell_export(approved, user.name, "approved")  # its build is already under way
    return export_out(approved)


@router.post("/api/exports/{export_id}/reject", response_model=ExportOut, responses=ERRORS)
async def reject_export(
    export_id: ExportId, body: RejectIn, user: OperatorDep, services: ServicesDep
) -> ExportOut:
    """A second person declines the request."""
    await _export_to_decide(services, user, export_id)
    try:
        rejected = await asyncio.to_thread(
            lambda: services.store.exports.reject(
                export_id,
                approver=user.name,
                approver_work_id=body.approver_work_id,
                reason=body.reason,
            )
        )
    except ExportRefused as err:
        raise _refusal(err, f"{export_id} rejection", user.name) from err
    _decided(rejected, "rejected", user.name)
    services.tell_export(rejected, user.name)
    return export_out(rejected)


@router.post("/api/exports/{export_id}/cancel", response_model=ExportOut, responses=ERRORS)
async def cancel_export(
    export_id: ExportId, body: CancelIn, user: OperatorDep, services: ServicesDep
) -> ExportOut:
    """The requester withdraws their own request while it is still pending (audited).
    Nobody else may (403); a decided request cannot be cancelled (409)."""
    await _visible_export(services, user, export_id)
    try:
        cancelled = await asyncio.to_thread(
            lambda: services.store.exports.cancel(
                export_id, requester=user.name, reason=body.reason
            )
        )
    except ExportRefused as err:
        raise _refusal(err, f"{export_id} cancellation", user.name) from err
    _decided(cancelled, "cancelled", user.name)
    services.tell_export(cancelled, user.name)
    return export_out(cancelled)


@router.get("/api/exports", response_model=list_of(ExportOut), responses=ERRORS)
async def export_register(
    user: UserDep,
    services: ServicesDep,
    camera: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    state: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
) -> list[ExportOut]:
    """The retrieval register, newest first: requester, approver, work ids, times, purpose,
    recipient, approval document, files and their hashes. Auditors and admins see all of it;
    operators the exports of their cameras."""
    if user.role not in ("operator", "auditor", "admin"):
        raise Forbidden(
            "the export register needs the role operator, auditor or admin", code="role-forbidden"
        )
    rows = await asyncio.to_thread(
        lambda: services.store.exports.entries(
            camera=camera, state=state, limit=limit, offset=offset
        )
    )
    return [export_out(e) for e in rows if sees_metadata(user, e.camera)]


@router.get("/api/exports/{export_id}", response_model=ExportOut, responses=ERRORS)
async def export_entry(export_id: ExportId, user: UserDep, services: ServicesDep) -> ExportOut:
    return export_out(await _visible_export(services, user, export_id))


@router.get(
    "/api/exports/{export_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, **ERRORS},
)
async def download_export(
    export_id: ExportId, request: Request, user: UserDep, services: ServicesDep
) -> Response:
    """The signed package (ZIP) of a built export, for its requester, its approver or an
    admin. Audited."""
    export = await _visible_export(services, user, export_id)

    async def audit(outcome: str, detail: dict[str, object]) -> None:
        try:
            await asyncio.to_thread(
                services.store.audit.append,
                user.name,
                "export-download",
                f"export:{export_id}",
                outcome,
                detail,
            )
        except StorageError as err:
            raise Unavailable(str(err)) from err

    if user.name not in (export.requester, export.approver) and user.role != "admin":
        raise Forbidden("only the requester, the approver or an admin may download the package")
    if export.state != READY:
        raise Conflict(f"the export is {export.state}; nothing to download")
    path = services.exports.package_path(export)
    if path is None:
        raise Conflict("the export has no package")
    try:
        size = await asyncio.to_thread(lambda: os.stat(path).st_size)
    except OSError as err:
        raise Unavailable(f"the package file is missing: {err.strerror}") from err
    if not user.unmasked and privacy_masks(services, export.camera):
        # Privacy masks (R10): whoever downloads gets no more than they may see.
        try:
            masked = await asyncio.to_thread(package_masked, path)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise Unavailable(f"the package cannot be read: {err}") from err
        if not masked:
            reason = "unmasked package, masked user"
            await audit("refused", {"camera": export.camera, "reason": reason})
            raise Forbidden(
                "this package is not privacy-masked and you may not see behind the camera's "
                "privacy masks; ask for an export of your own (it will be masked)"
            )
    await audit(
        "ok",
        {
            "camera": export.camera,
            "start_ms": export.start_ms,
            "end_ms": export.end_ms,
            "bytes": size,
            "range": request.headers.get("range"),
            "manifest_sha256": export.manifest_sha256,
        },
    )
    return FileResponse(
        path,
        media_type="application/zip",
        filename=path.name,
        headers={"Cache-Control": "private, no-store"},
    )


@router.get(
    "/api/signing-key",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}}, **problems(401)},
)
async def signing_key(user: UserDep, services: ServicesDep) -> Response:
    """The Ed25519 public key export manifests are signed with (PEM), for
    `nvr verify-export PACKAGE --key FILE`."""
    exports = services.exports
    try:
        pem, sha = await asyncio.to_thread(
            lambda: (exports.public_key_pem(), exports.key_fingerprint())
        )
    except PackageError as err:
        raise Unavailable(f"the export signing key is not usable: {err}") from err
    return Response(
        content=pem,
        media_type="application/x-pem-file",
        headers={"X-Key-Sha256": sha},
    )
