"""The device-facing HTTP API (what `forwardauth device` and the phone page call).

    POST   /api/v1/device/pair            {"code", "name"}  -> 201 {"device", "credential"}
    GET    /api/v1/device/requests        Bearer; If-None-Match -> 200 + ETag {"requests"} | 304 + ETag
    POST   /api/v1/device/requests/{id}   Bearer; {"decision", "phrase"} -> 200 {"id", "state", "reason"}
    DELETE /api/v1/device                 Bearer -> 204 (the device removes itself)

Errors are JSON as on the admin API: {"error": code, "error_description": text},
with Retry-After on 429 and a Bearer challenge on 401. Independent of how the
app is put together: `routes()` takes how to find the service and the
client's address for a request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from forwardauth.devices.approvals import device_view, request_view
from forwardauth.devices.hub import Busy
from forwardauth.devices.longpoll import Reply
from forwardauth.devices.service import DeviceService, Refusal
from forwardauth.web.bodies import BodyError, read_json

MAX_BODY = 16 * 1024
NO_STORE = {"Cache-Control": "no-store"}

ServiceOf = Callable[[web.Request], DeviceService]
ClientOf = Callable[[web.Request], "str | None"]


def error(status: int, code: str, description: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": code, "error_description": description}),
                        content_type="application/json", headers={**NO_STORE, **(headers or {})})


def refusal_response(r: Refusal, realm: str) -> web.Response:
    headers: dict[str, str] = {}
    if r.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(r.retry_after)))
    if r.status == 401:
        headers["WWW-Authenticate"] = f'Bearer realm="{realm}", error="{r.error}"'
    return error(r.status, r.error, r.message, headers)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers={**NO_STORE, **(headers or {})})


async def _body(request: web.Request) -> Any:
    """The whole JSON body (web.bodies: bounded in size, depth and time, no key twice):
    `request.content.read(n)` returned only what had arrived, half of a body sent in two packets."""
    if request.content_type != "application/json":
        raise BodyError(415, "the body must be application/json")
    return await read_json(request, MAX_BODY)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes(service_of: ServiceOf, client_of: ClientOf, realm: str = "forwardauth") -> list[tuple[str, str, Handler]]:
    """(method, path, handler) of each route: the app adds them (web.py), and so does the tests' throwaway server."""
    async def guarded(request: web.Request, work: Callable[[DeviceService], Any]) -> web.StreamResponse:
        try:
            return await work(service_of(request))
        except Refusal as r:
            return refusal_response(r, realm)
        except BodyError as b:
            return error(b.status, "invalid_request", b.description)

    async def pair(request: web.Request) -> web.StreamResponse:
        async def work(svc: DeviceService) -> web.StreamResponse:
            device, token = await svc.pair(await _body(request), client_of(request))
            return _json({"device": device_view(device), "credential": token}, 201)
        return await guarded(request, work)

    async def poll(request: web.Request) -> web.StreamResponse:
        # Written out rather than through `guarded`: this frame is what each
        # waiting poll keeps alive, so no closures here (see hub.py).
        svc = service_of(request)
        try:
            device = await svc.authenticate(request.headers.get("Authorization"))
            reply = await svc.poll(device, request.headers.get("If-None-Match"), request.protocol)
        except Refusal as r:
            return refusal_response(r, realm)
        except Busy:
            return refusal_response(svc.busy(), realm)
        return _reply(reply, realm)

    async def answer(request: web.Request) -> web.StreamResponse:
        async def work(svc: DeviceService) -> web.StreamResponse:
            device = await svc.authenticate(request.headers.get("Authorization"))
            done = await svc.answer(device, request.match_info["id"], await _body(request))
            return _json({"id": done.id, "state": done.state.value, "reason": done.reason})
        return await guarded(request, work)

    async def remove_self(request: web.Request) -> web.StreamResponse:
        async def work(svc: DeviceService) -> web.StreamResponse:
            device = await svc.authenticate(request.headers.get("Authorization"))
            await svc.remove_device(device.id, device.user, by="the device itself", client=client_of(request))
            return web.Response(status=204, headers=NO_STORE)
        return await guarded(request, work)

    return [
        ("POST", "/api/v1/device/pair", pair),
        ("GET", "/api/v1/device/requests", poll),
        ("POST", "/api/v1/device/requests/{id}", answer),
        ("DELETE", "/api/v1/device", remove_self),
    ]


def _reply(reply: Reply | None, realm: str) -> web.StreamResponse:
    if reply is None:  # the client went away: nothing reads this
        return web.Response(status=204)
    if reply.status == 401:
        return refusal_response(Refusal(401, "invalid_token", "the device credential is no longer valid"), realm)
    headers = {"ETag": reply.etag or ""}
    if reply.status == 304:
        return web.Response(status=304, headers={**NO_STORE, **headers})
    return _json({"requests": [request_view(r) for r in reply.requests]}, 200, headers)
