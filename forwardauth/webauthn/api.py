"""The admin API's routes for passkeys and security keys, and their OpenAPI paths.

- GET /api/v1/accounts/{name}/webauthn: the account's keys (an admin, or the
  account itself): names, kinds, models, flags, dates; never a key.
- DELETE /api/v1/accounts/{name}/webauthn/{credential_id}: remove one (admins:
  a lost key is removed by someone else, so the user can add a new one).

Who calls is the tokens part's business (`web.api.caller`, bearer tokens);
an admin is an active account with the `admin` role, as everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from forwardauth.core.keyring import b64d
from forwardauth.services.account_names import ADMIN_ROLE, account_store, check_account_name
from forwardauth.services.audit import request_id
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.records import AccountError, WebAuthnCredential
from forwardauth.state.records import webauthn_fingerprint as fingerprint
from forwardauth.web.api import ApiError, caller, error_response, fail, json_response
from forwardauth.web.context import CTX, Route
from forwardauth.webauthn.common import current

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,1400}$")  # base64url of at most 1023 bytes (WebAuthn's limit)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guard(fn: Handler) -> Handler:
    async def run(request: web.Request) -> web.Response:
        try:
            if current(request) is None:
                fail(404, "not_found", "passkeys and security keys are not set up here (no webauthn section)")
            return await fn(request)
        except ApiError as exc:
            return error_response(exc)
        except StoreUnavailable:
            return error_response(ApiError(503, "unavailable", "the state store is unavailable", {"Retry-After": "5"}))

    return run


def credential_view(c: WebAuthnCredential) -> dict[str, Any]:
    return {"id": c.key, "name": c.name, "kind": "passkey" if c.discoverable else "security key",
            "aaguid": c.aaguid, "transports": list(c.transports), "user_verifying": c.user_verifying,
            "discoverable": c.discoverable, "backup_eligible": c.backup_eligible, "backed_up": c.backed_up,
            "sign_count": c.sign_count, "created": c.created, "last_used": c.last_used, "locked": c.locked}


def _name(request: web.Request) -> str:
    try:
        return check_account_name(request.match_info["name"])
    except AccountError:
        fail(400, "invalid_request", "account names are 1-64 of a-z 0-9 . _ @ + -, or <source>:<sub> for an "
                                     "upstream identity's account as listed")


async def _caller(request: web.Request) -> tuple[str, bool]:
    """(who calls, whether they are an admin): the account behind the token, as it is now."""
    c = await caller(request)
    acct = await account_store(request.app[CTX].store).get_account(c.session.sub)
    if acct is None:
        fail(401, "invalid_token", "the token's account no longer exists")
    return acct.username, acct.active and ADMIN_ROLE in acct.groups


@_guard
async def list_credentials(request: web.Request) -> web.Response:
    name = _name(request)
    who, admin = await _caller(request)
    if not (admin or who == name):
        fail(403, "forbidden", f"{who} may not read the security keys of {name}")
    creds = await request.app[CTX].store.webauthn_credentials(name)
    return json_response([credential_view(c) for c in creds])


@_guard
async def delete_credential(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = _name(request)
    raw = request.match_info["credential_id"]
    if not _ID_RE.match(raw):
        fail(400, "invalid_request", "a credential id is base64url, as the list shows it")
    who, admin = await _caller(request)
    if not admin:
        fail(403, "forbidden", f"{who} may not remove security keys (admins only)")
    cid = b64d(raw)
    cred = next((c for c in await ctx.store.webauthn_credentials(name) if c.id == cid), None)
    if cred is None or not await ctx.store.remove_webauthn_credential(name, cid):
        fail(404, "not_found", f"{name} has no such security key or passkey")
    ctx.audit.emit("webauthn_removed", user=name, client=ctx.client(request), request_id=request_id(request.headers),
                   reason=f"{cred.name!r} by {who} (api); key {fingerprint(cid)}")
    return web.Response(status=204)


def routes() -> tuple[Route, ...]:
    return (Route("GET", "/api/v1/accounts/{name}/webauthn", list_credentials),
            Route("DELETE", "/api/v1/accounts/{name}/webauthn/{credential_id}", delete_credential))


_ERR = {"$ref": "#/components/responses/Error"}
_ACCOUNT = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": r"^(?:[a-z0-9][a-z0-9._@+-]{0,63}"
                                                    r"|[a-z0-9][a-z0-9_-]{0,31}:[^\s\x00-\x1f\x7f]{1,255})$"}}
_CID = {"name": "credential_id", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,1400}$"}}
_CREDENTIAL = {"type": "object", "required": ["id", "name", "kind", "aaguid", "created"], "properties": {
    "id": {"type": "string"}, "name": {"type": "string"},
    "kind": {"type": "string", "enum": ["passkey", "security key"]},
    "aaguid": {"type": "string"}, "transports": {"type": "array", "items": {"type": "string"}},
    "user_verifying": {"type": "boolean"}, "discoverable": {"type": "boolean", "nullable": True},
    "backup_eligible": {"type": "boolean"}, "backed_up": {"type": "boolean"}, "sign_count": {"type": "integer"},
    "created": {"type": "number"}, "last_used": {"type": "number", "nullable": True},
    "locked": {"type": "string", "nullable": True}}}

OPENAPI: dict[str, Any] = {
    "paths": {
        "/api/v1/accounts/{name}/webauthn": {"get": {
            "summary": "List an account's security keys and passkeys (admin, or the account itself)",
            "parameters": [_ACCOUNT],
            "responses": {"200": {"description": "the keys", "content": {"application/json": {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/WebAuthnCredential"}}}}},
                **{str(c): _ERR for c in (400, 401, 403, 404, 503)}}}},
        "/api/v1/accounts/{name}/webauthn/{credential_id}": {"delete": {
            "summary": "Remove one of an account's security keys or passkeys (admin)",
            "parameters": [_ACCOUNT, _CID],
            "responses": {"204": {"description": "removed"}, **{str(c): _ERR for c in (400, 401, 403, 404, 503)}}}},
    },
    "schemas": {"WebAuthnCredential": _CREDENTIAL},
}
