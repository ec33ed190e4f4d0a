"""Device approval in the app (composition.PARTS): routes, the factor, the hub's life.

- the device API (devices.api): pairing, the long-poll, answers, self-removal;
- the pages (devices.pages): the user's devices page with its pairing QR code,
  the phone page, and the browser's side of an approval (ask, wait, cancel);
- the factor "device": offered on the sign-in page (passwordless, when
  `devices.passwordless`) and on the step-up and TOTP pages, whenever the level a
  device proves is enough; /oauth2/start hands over to it when the person chose
  it (`via=device`), or when no other way can prove the level at all (a level
  that lists no acr, amr or local factor);
- the hub (one per app): its feed follower starts with the app, every waiting
  poll is answered (304) at shutdown; after each revocation refresh the polls of
  users whose epoch moved (a lock, `session revoke`, an account deleted) look
  again, and answer 401;
- the admin API: list and remove any user's devices (admins).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client.metrics_core import GaugeMetricFamily

from forwardauth.devices import api, pages
from forwardauth.devices.approvals import device_view
from forwardauth.devices.context import DEVICES, DevicesState, request_service
from forwardauth.devices.hub import Hub
from forwardauth.devices.service import Refusal
from forwardauth.devices.settings import DevicesSettings, settings
from forwardauth.state.base import PulledChanges, PushedChanges
from forwardauth.web.api import ApiError, error_response, fail, json_response
from forwardauth.web.api import caller as api_caller
from forwardauth.web.context import CTX, AppContext, Contribution, Route
from forwardauth.web.factors import Factor, Need, Offer, Page
from forwardauth.web.forms import query, redirect
from forwardauth.web.metrics import app_registry
from forwardauth.web.oauth2_start import start_url

ADMIN_ROLE = "admin"  # the admin API's administrators (the same role the tokens part's routes require)


def enabled(request: web.Request) -> DevicesSettings | None:
    s = settings(request.app[CTX].runtime.config)
    return s if s.enabled and s.level else None


# --- the factor ----------------------------------------------------------------------------

def _proves(request: web.Request, s: DevicesSettings, level: str) -> bool:
    return request.app[CTX].runtime.config.levels.at_least(s.level, level)


def offer(request: web.Request, need: Need, where: Page) -> Offer | None:
    s = enabled(request)
    if s is None or not _proves(request, s, need.level):
        return None
    if where == "step_up" and need.session is not None:
        return Offer("Approve on my device", start_url(need.rd, need.level, via="device"))
    if where == "sign_in" and s.passwordless:
        return Offer("Sign in by approving on my device", start_url(need.rd, need.level, via="device"))
    return None


async def start(request: web.Request, need: Need) -> web.StreamResponse | None:
    s = enabled(request)
    if s is None or not _proves(request, s, need.level):
        return None
    lv = request.app[CTX].runtime.config.levels[need.level]
    only_devices = not (lv.acr or lv.amr or lv.local_factor)
    if need.via == "device" or (only_devices and need.via in (None, "")):
        return redirect(query(pages.APPROVE_PATH, rd=need.rd, level=need.level))
    return None


# --- lifecycle -----------------------------------------------------------------------------

def wake_revoked(app: web.Application) -> Callable[[], Awaitable[None]]:
    """A job of the refresh loop, after the revocations: wake the polls of users
    whose epoch changed, so a device revoked on another replica answers 401 within
    one refresh (at once with Redis), not at its poll's timeout."""

    async def job() -> None:
        ctx, st = app[CTX], app[DEVICES]
        snap = ctx.revocations.snapshot
        before = st.epochs
        if before is snap:
            return
        st.epochs = snap
        if before is None:
            return
        for user, epoch in snap.epochs.items():
            if before.epochs.get(user) != epoch:
                st.hub.wake(user)

    return job


class WaitingPolls:
    """forwardauth_device_polls_waiting: the device long-polls waiting on this
    process's hub (this app's: its own registry, see web.metrics)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("forwardauth_device_polls_waiting",
                                "Device long-polls waiting for a change in this process.", value=len(self.hub))


def build(app: web.Application, ctx: AppContext) -> Contribution:
    st = app[DEVICES] = DevicesState()
    app_registry(app).register(WaitingPolls(st.hub))

    async def startup() -> None:
        if settings(ctx.runtime.config).enabled:
            store = ctx.store
            st.hub.start(store if isinstance(store, (PulledChanges, PushedChanges)) else None)

    async def shutdown() -> None:
        st.hub.end_all()  # every waiting poll answers now: stopping does not wait for the longest
        await st.hub.stop()

    device_api = [Route(method, path, _when_enabled(handler)) for method, path, handler in api.routes(
        request_service, lambda request: request.app[CTX].client(request), realm_of(ctx))]
    return Contribution(
        routes=(*device_api, *pages.routes(), *admin_routes()),
        factors=(Factor("device", start=start, offer=offer),),
        refresh=(wake_revoked(app),),
        startup=(startup,),
        shutdown=(shutdown,),
        openapi=openapi_fragment(),
    )


def realm_of(ctx: AppContext) -> str:
    return ctx.runtime.config.server.realm


def _when_enabled(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The device API answers 404 while approval is off (`devices.enabled: false` or no section)."""

    async def run(request: web.Request) -> web.StreamResponse:
        if enabled(request) is None:
            return api.error(404, "not_found", "device approval is not enabled here")
        return await handler(request)

    return run


# --- the admin API -------------------------------------------------------------------------

async def _admin(request: web.Request) -> str:
    who = await api_caller(request)
    s = who.session
    if ADMIN_ROLE not in s.groups or who.narrowed:
        fail(403, "forbidden", "only admins may manage other users' devices")
    return s.sub


def _guard(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]
           ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            if enabled(request) is None:
                fail(404, "not_found", "device approval is not enabled here")
            return await fn(request)
        except ApiError as exc:
            return error_response(exc)
        except Refusal as r:
            return api.refusal_response(r, request.app[CTX].runtime.config.server.realm)
    return run


@_guard
async def admin_list(request: web.Request) -> web.StreamResponse:
    await _admin(request)
    user = request.query.get("user", "")
    if not user or len(user) > 256:
        fail(400, "invalid_request", "the query parameter user is required")
    return json_response([device_view(d) for d in await request_service(request).devices(user)])


@_guard
async def admin_remove(request: web.Request) -> web.StreamResponse:
    who = await _admin(request)
    await request_service(request).remove_device(request.match_info["id"], None, by=who,
                                                 client=request.app[CTX].client(request))
    return web.Response(status=204)


def admin_routes() -> tuple[Route, ...]:
    return (Route("GET", "/api/v1/devices", admin_list), Route("DELETE", "/api/v1/devices/{id}", admin_remove))


def openapi_fragment() -> dict[str, object]:
    """The part's /api/v1 routes for the one OpenAPI 3.0 document (web.api): the
    admin routes, and the device API (whose bearer is a device credential)."""
    err = {"$ref": "#/components/responses/Error"}
    device = {"type": "object", "required": ["id", "user", "name", "created", "last_seen"], "properties": {
        "id": {"type": "string"}, "user": {"type": "string"}, "name": {"type": "string"},
        "created": {"type": "number"}, "last_seen": {"type": "number", "nullable": True}}}
    request = {"type": "object", "required": ["id", "host", "path", "client", "user_agent", "level", "created",
                                              "expires", "phrases"], "properties": {
        "id": {"type": "string"}, "host": {"type": "string"}, "path": {"type": "string"},
        "client": {"type": "string", "nullable": True}, "user_agent": {"type": "string"},
        "level": {"type": "string"}, "created": {"type": "number"}, "expires": {"type": "number"},
        "phrases": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3}}}
    etag = {"ETag": {"description": "names the set of pending requests", "schema": {"type": "string"}}}
    pending: dict[str, object] = {"type": "object", "required": ["requests"], "properties": {"requests": {
        "type": "array", "items": {"$ref": "#/components/schemas/ApprovalRequest"}}}}

    def body(schema: dict[str, object]) -> dict[str, object]:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def ok(description: str, schema: dict[str, object]) -> dict[str, object]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    return {
        "paths": {
            "/api/v1/devices": {"get": {
                "summary": "List a user's approving devices (admin)",
                "parameters": [{"name": "user", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": ok("the devices, oldest first", {"type": "array", "items": {
                    "$ref": "#/components/schemas/Device"}}), "400": err, "401": err, "403": err, "404": err}}},
            "/api/v1/devices/{id}": {"delete": {
                "summary": "Remove a device (admin): its credential stops at once, its polls end with 401",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"204": {"description": "removed"}, "401": err, "403": err, "404": err}}},
            "/api/v1/device/pair": {"post": {
                "summary": "Exchange a one-time pairing code for a device credential (shown once)",
                "security": [],
                "requestBody": body({"type": "object", "required": ["code", "name"], "properties": {
                    "code": {"type": "string"}, "name": {"type": "string"}}}),
                "responses": {"201": ok("paired", {"type": "object", "required": ["device", "credential"],
                                                   "properties": {"device": {"$ref": "#/components/schemas/Device"},
                                                                  "credential": {"type": "string"}}}),
                              "400": err, "403": err, "404": err, "409": err, "413": err, "415": err, "429": err}}},
            "/api/v1/device/requests": {"get": {
                "summary": "Long-poll the pending approval requests of the device's user (device credential): "
                           "200 at once when the set differs from If-None-Match, else when it changes; 304 at "
                           "devices.poll_timeout",
                "parameters": [{"name": "If-None-Match", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {**ok("the pending requests", pending), "headers": etag},
                              "304": {"description": "nothing changed", "headers": etag},
                              "401": err, "404": err, "429": err}}},
            "/api/v1/device/requests/{id}": {"post": {
                "summary": "Approve (with the phrase the browser shows) or deny a request (device credential); "
                           "a wrong phrase denies it",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": body({"type": "object", "required": ["decision"], "properties": {
                    "decision": {"type": "string", "enum": ["approve", "deny"]}, "phrase": {"type": "string"}}}),
                "responses": {"200": ok("decided", {"type": "object", "required": ["id", "state", "reason"],
                                                    "properties": {"id": {"type": "string"},
                                                                   "state": {"type": "string"},
                                                                   "reason": {"type": "string", "nullable": True}}}),
                              "400": err, "401": err, "404": err, "409": err, "413": err, "415": err}}},
            "/api/v1/device": {"delete": {
                "summary": "The device removes itself (device credential)",
                "responses": {"204": {"description": "removed"}, "401": err, "404": err}}},
        },
        "schemas": {"Device": device, "ApprovalRequest": request},
    }
