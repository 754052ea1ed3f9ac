"""The API's routes, one module per area. Routes validate input, check permissions and call
service methods; blocking service calls go through `asyncio.to_thread`. They run on the
daemon's event loop. Imports go down: `api.deps`, `api.models`, `api.services`, `api.errors`;
only `api.app` imports the route modules.
"""

from nvr.api.models import Problem


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` for error answers with these status codes (RFC 9457 problems)."""
    return {code: {"model": Problem} for code in codes}


ERRORS = problems(400, 401, 403, 404, 409)
"""The error answers of a route that reads or changes a record: bad input, no login, not
allowed, no such record, conflict."""
