"""The admin API's plumbing, shared by every part that adds routes under /api/v1/.

JSON in and out: `body()` reads a bounded JSON object and refuses unknown or
missing fields, `fail()` raises an `ApiError` that `error_response()` turns
into `{"error", "error_description"}` with its status. Who is calling is
answered by `AppContext.api_auth` (the tokens part offers it: bearer tokens);
a part's routes ask it through `caller()`. The OpenAPI document at
/api/v1/openapi.json is this module's frame with every part's paths and
schemas in it (Contribution.openapi), so the schemathesis test drives every
part's API from one document.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from aiohttp import web

from forwardauth.web.bodies import MAX_JSON_BYTES, BodyError, read_json
from forwardauth.web.context import CTX, ApiCaller

MAX_BODY = MAX_JSON_BYTES
OPENAPI_PATH = "/api/v1/openapi.json"


class ApiError(Exception):
    def __init__(self, status: int, code: str, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.headers = headers or {}


def fail(status: int, code: str, description: str, **headers: str) -> NoReturn:
    raise ApiError(status, code, description, headers)


def error_response(exc: ApiError) -> web.Response:
    body = json.dumps({"error": exc.code, "error_description": exc.description})
    return web.Response(status=exc.status, text=body, content_type="application/json", headers=exc.headers)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


async def body(request: web.Request, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
               ) -> dict[str, Any]:
    """The JSON object body (web.bodies: bounded size, time and nesting, no key twice), with unknown
    and missing fields refused."""
    if request.content_type != "application/json":
        fail(415, "invalid_request", "the body must be application/json")
    try:
        data = await read_json(request, MAX_BODY)
    except BodyError as exc:
        fail(exc.status, "invalid_request", exc.description)
    if not isinstance(data, dict):
        fail(400, "invalid_request", "the body must be a JSON object")
    unknown = set(data) - allowed
    if unknown:
        fail(400, "invalid_request", f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}")
    missing = set(required) - set(data)
    if missing:
        fail(400, "invalid_request", f"missing field(s): {', '.join(sorted(missing))}")
    return data


# --- who is calling ------------------------------------------------------------------------


async def caller(request: web.Request) -> ApiCaller:
    """Who calls, or a 401/503 ApiError; 401 when no part authenticates API callers."""
    auth = request.app[CTX].api_auth
    if auth is None:
        fail(401, "unauthorized", "no way to authenticate API callers is configured")
    return await auth(request)


# --- the OpenAPI document ------------------------------------------------------------------


def document(server_url: str, fragments: list[Any]) -> dict[str, Any]:
    """The admin API's OpenAPI 3.0 document: this frame, and each part's
    `{"paths": ..., "schemas": ...}`."""
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "forwardauth admin API", "version": "1",
                 "description": "Accounts, roles, API tokens and service-account database credentials. "
                                "Authenticate with `Authorization: Bearer <forwardauth token>`: admin tokens "
                                "for account management, any account's own token for what the summary "
                                "of each operation allows it. Host caveats are checked against the "
                                "server's public_url host."},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "an error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "error_description"],
                          "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}}},
            },
        },
    }
    for fragment in fragments:
        doc["paths"].update(fragment.get("paths", {}))
        doc["components"]["schemas"].update(fragment.get("schemas", {}))
    return doc


async def openapi_json(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.Response(text=json.dumps(document(ctx.runtime.config.server.public_url, ctx.openapi)),
                        content_type="application/json")
