"""The configuration: `POST /api/reload` (admins) reads the daemon's config file again and
applies it, as SIGHUP does (`nvr.reload`): 200 with what changed, or 409 with every problem
(the running configuration is kept). Audited by the daemon with the admin's name."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from nvr.api.deps import AdminDep, ServicesDep
from nvr.api.errors import Conflict
from nvr.api.routes import problems

router = APIRouter(tags=["config"])


class ReloadOut(BaseModel):
    """What a reload applied: cameras by name, other settings by key (never values)."""

    model_config = ConfigDict(extra="forbid")

    applied: bool
    added: list[str]
    """Cameras started."""
    removed: list[str]
    """Cameras whose recorder finished its segment and stopped."""
    changed: dict[str, list[str]]
    """Cameras restarted with new settings -> the keys that changed."""
    unchanged: list[str]
    """Cameras recording on, untouched."""
    settings: list[str]
    """Other keys applied at once (`log_level`, `site.name`, ...)."""


@router.post(
    "/api/reload",
    response_model=ReloadOut,
    responses=problems(401, 403, 409),
)
async def reload(user: AdminDep, services: ServicesDep) -> ReloadOut:
    """Reload the daemon's config file; refused (409, every problem named) if it is invalid
    or changes a setting that needs a restart (storage, database, API listen address)."""
    if services.reloader is None:
        raise Conflict("this API runs without the recording daemon: there is nothing to reload")
    outcome = await services.reloader.reload(actor=user.name)
    if not outcome.applied or outcome.diff is None:
        raise Conflict(
            "the new configuration was refused; the running one is kept: "
            + "; ".join(outcome.problems)
        )
    diff = outcome.diff.as_dict()
    return ReloadOut(applied=True, **diff)
