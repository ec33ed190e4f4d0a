"""A state store that fails under a page or an API route: a clear 503, never a 500.

Every page and route but the decision endpoints (which never touch the
store) runs inside `middleware`: a `StoreUnavailable` that escapes a handler
becomes a 503 page (or, for the API and clients that ask for JSON, a 503
JSON error), with `Retry-After`, one warning in the log (the store's own
message: a path or "redis unreachable (ConnectionError)", never a secret),
and, where the handler said an attempt was under way (`attempting`), its
audit line with the reason `state store unavailable`. Nothing was decided:
the person is asked to try again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from forwardauth.state.base import StoreUnavailable
from forwardauth.web.pages import page

log = logging.getLogger("forwardauth")

RETRY_AFTER = "5"
REASON = "state store unavailable"
TITLE = "Please try again in a moment"
MESSAGE = ("This service cannot reach its data store right now, so it could not do what you asked. "
           "Nothing was changed. Please try again in a few seconds.")
API_MESSAGE = "the state store is unavailable; nothing was changed; try again in a few seconds"

Audit = Callable[[str], object]
_ATTEMPT: web.RequestKey[Audit] = web.RequestKey("forwardauth.attempt")  # what to audit if the store fails
_LOG_EVERY = 10.0  # seconds between two warnings of a store that keeps failing
_last_logged = [0.0]


def attempting(request: web.Request, audit: Audit) -> None:
    """The handler is about to check a credential: `audit(reason)` writes the line
    for it (sign-in, TOTP, enrolment, token exchange), called if the store fails."""
    request[_ATTEMPT] = audit


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def response(request: web.Request) -> web.Response:
    """The 503 for `request`: JSON for the API (and JSON clients), else a page."""
    if wants_json(request):
        return web.Response(status=503, text=json.dumps({"error": "temporarily_unavailable",
                                                         "error_description": API_MESSAGE}),
                            content_type="application/json", headers={"Retry-After": RETRY_AFTER})
    resp = page(503, TITLE, MESSAGE)
    resp.headers["Retry-After"] = RETRY_AFTER
    return resp


def report(request: web.Request, exc: StoreUnavailable) -> None:
    """A warning (at most one every 10 s) and the attempt's audit line, if there is one."""
    now = time.monotonic()
    if now - _last_logged[0] >= _LOG_EVERY:
        _last_logged[0] = now
        log.warning("state store unavailable under %s %s: %s", request.method, request.path, exc)
    audit = request.get(_ATTEMPT)
    if audit is not None:
        try:
            audit(REASON)
        except Exception:  # noqa: BLE001 - the answer goes out whatever happens to its audit line
            log.exception("could not write the audit line of an attempt the state store failed")


@web.middleware
async def middleware(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        report(request, exc)
        return response(request)
