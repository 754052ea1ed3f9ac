"""The HTTP API (R1 health, R5, R6, R7): FastAPI served by uvicorn inside the daemon's event
loop. `ApiServer` (the daemon's handle), `create_app` (tests run it under their own uvicorn),
`ApiContext` (what the daemon hands over: config, store, live recorder state, forecast).

Layout: `app` (application, lifespan, access log), `services` (what routes call), `deps`
(typed dependencies: services, the logged-in user, roles, camera permissions), `routes/*`,
`models` (request/response schemas), `playback` (virtual MP4 files of any range, with
caches), `cameras`, `health`, `metrics`, `exports` (building signed evidence packages),
`auth` (login throttle, signed playback links, the page session's CSRF token), `params`,
`errors`; `web` (the operator pages at `/`, their scripts and message catalogues); `live/`
(live view: hubs on the recorders' packet taps, WHEP with aiortc, the MSE WebSocket's fMP4,
H.265 transcodes and snapshots). The file formats they serve (MP4, the export package) are
`storage.media`'s. Imports go down: `storage`, `config`, `ingest` (`status`, `timecheck`'s
clock findings and `tap`'s frames only); nothing imports `api` but `nvr`.
"""

from nvr.api.app import create_app
from nvr.api.server import ApiServer
from nvr.api.services import ApiContext

__all__ = ["ApiContext", "ApiServer", "create_app"]
