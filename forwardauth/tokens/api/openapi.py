"""The tokens part's paths and schemas in the admin API's OpenAPI 3.0 document
(web.api frames it and serves it at /api/v1/openapi.json).

Written by hand next to the handlers and kept exact: the schemathesis test
drives the API from this document, so a route or status missing here fails.
"""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_NAME = {"name": "name", "in": "path", "required": True,
         "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._@+-]{0,63}$"}}
# The routes about an existing account also take an upstream identity's account
# ("oidc:<sub>", the sub exactly as the provider gave it), as the list shows it.
_ACCOUNT = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": r"^(?:[a-z0-9][a-z0-9._@+-]{0,63}"
                                                    r"|[a-z0-9][a-z0-9_-]{0,31}:[^\s\x00-\x1f\x7f]{1,255})$"}}
_TID = {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_ROLES = {"type": "array", "maxItems": 64,
          "items": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,63}$"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERR for c in codes}


def _op(summary: str, ok: dict[str, Any], *codes: int, body: dict | None = None, params: list | None = None,
        secure: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **_errors(*codes)}}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    if not secure:
        op["security"] = []
    return op


_AUTH = (400, 401, 403, 503)


def fragment() -> dict[str, Any]:
    """{"paths": ..., "schemas": ...} of the accounts, tokens, database credentials and exchange routes."""
    account_new = {"type": "object", "additionalProperties": False, "required": ["username"], "properties": {
        "username": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._@+-]{0,63}$"},
        "kind": {"type": "string", "enum": ["human", "system"]},
        "display_name": {"type": "string", "minLength": 1, "maxLength": 256},
        "email": {"type": "string", "minLength": 1, "maxLength": 256},
        "roles": _ROLES}}
    issue = {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "lifetime": {"oneOf": [{"type": "string", "example": "30d"}, {"type": "number", "minimum": 60}]},
        "level": {"type": "string"},
        "host": {"type": "string", "description": "restrict to this host"},
        "path": {"type": "string", "description": "restrict to this path prefix"},
        "method": {"type": "string", "description": "restrict to these methods, e.g. GET,HEAD"}}}
    creds = {"type": "object", "additionalProperties": False,
             "required": ["host", "database", "username", "password"], "properties": {
                 "host": {"type": "string", "minLength": 1, "maxLength": 512},
                 "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                 "database": {"type": "string", "minLength": 1, "maxLength": 512},
                 "username": {"type": "string", "minLength": 1, "maxLength": 512},
                 "password": {"type": "string", "minLength": 1, "maxLength": 512},
                 "sslmode": {"type": "string",
                             "enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]}}}
    exchange = {"type": "object", "additionalProperties": False, "required": ["username", "password"],
                "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                               "totp": {"type": "string"}}}
    return {
        "paths": {
            "/api/v1/token": {"post": {
                "summary": "Exchange a bearer token (header) or a password (+ TOTP) for a short-lived JWT. "
                           "The JWT's level and expiry are at most the token's; a token limited to hosts, "
                           "paths or methods is refused (403).",
                "security": [{"bearer": []}, {}],
                "requestBody": {"required": False, **_json(exchange)},
                "responses": {"200": {"description": "a JWT", **_json(_ref("Jwt"))},
                              **_errors(400, 401, 403, 413, 415, 429, 503)}}},
            "/api/v1/accounts": {
                "get": _op("List accounts (admin)", {"200": {"description": "accounts",
                                                              **_json({"type": "array", "items": _ref("Account")})}},
                           *_AUTH),
                "post": _op("Create an account (admin)", {"201": {"description": "created", **_json(_ref("Account"))}},
                            *_AUTH, 409, 413, 415, body=account_new)},
            "/api/v1/accounts/{name}": {
                "get": _op("Read an account (admin or self)", {"200": {"description": "the account",
                                                                        **_json(_ref("Account"))}},
                           *_AUTH, 404, params=[_ACCOUNT]),
                "delete": _op("Delete an account (admin): its tokens are revoked, its sessions end (epoch; for "
                              "an upstream identity's account, that identity's sessions too), its database "
                              "credentials are deleted", {"204": {"description": "deleted"}},
                              *_AUTH, 404, params=[_ACCOUNT])},
            "/api/v1/accounts/{name}/roles": {"put": _op(
                "Set an account's roles (admin)", {"200": {"description": "the account", **_json(_ref("Account"))}},
                *_AUTH, 404, 413, 415, params=[_ACCOUNT],
                body={"type": "object", "additionalProperties": False, "required": ["roles"],
                      "properties": {"roles": _ROLES}})},
            "/api/v1/accounts/{name}/lock": {"post": _op(
                "Lock an account: every session and token dies, the epoch goes to the far future (admin)",
                {"200": {"description": "the account", **_json(_ref("Account"))}}, *_AUTH, 404, params=[_ACCOUNT])},
            "/api/v1/accounts/{name}/unlock": {"post": _op(
                "Unlock an account: active again, any ban for failed sign-in attempts lifted, the epoch comes "
                "back to now, so sessions and tokens from before stay revoked (admin)",
                {"200": {"description": "the account", **_json(_ref("Account"))}}, *_AUTH, 404, params=[_ACCOUNT])},
            "/api/v1/accounts/{name}/revoke-sessions": {"post": _op(
                "Sign an account out everywhere: every session and token issued until now dies (admin, or the "
                "account itself)",
                {"200": {"description": "the new epoch", **_json(_ref("Epoch"))}}, *_AUTH, 404, params=[_ACCOUNT])},
            "/api/v1/accounts/{name}/tokens": {
                "get": _op("List an account's tokens with their last use",
                           {"200": {"description": "tokens", **_json({"type": "array", "items": _ref("Token")})}},
                           *_AUTH, 404, params=[_NAME]),
                "post": _op("Issue a token (admin, the human themselves, or a holder of the service account's "
                            "role), with a token as issued: a narrowed (attenuated or limited) token gets 403",
                            {"201": {"description": "the token, shown once", **_json(_ref("IssuedToken"))}},
                            *_AUTH, 404, 409, 413, 415, params=[_NAME], body=issue)},
            "/api/v1/tokens": {"get": _op(
                "List every token (admin)",
                {"200": {"description": "tokens", **_json({"type": "array", "items": _ref("Token")})}}, *_AUTH)},
            "/api/v1/tokens/{token_id}": {"delete": _op(
                "Revoke a token (admin, or its human owner)",
                {"200": {"description": "the revoked token", **_json(_ref("Token"))}}, *_AUTH, 404, params=[_TID])},
            "/api/v1/accounts/{name}/dbcreds": {
                "get": _op("Read a service account's database credentials (the account or its role holders)",
                           {"200": {"description": "credentials", **_json(creds)}}, *_AUTH, 404, params=[_NAME]),
                "put": _op("Set a service account's database credentials (admin)", {"204": {"description": "set"}},
                           *_AUTH, 404, 413, 415, params=[_NAME], body=creds)},
        },
        "schemas": {
                "Account": {"type": "object", "required": ["username", "kind", "roles", "status"], "properties": {
                    "username": {"type": "string"}, "kind": {"type": "string", "enum": ["human", "system"]},
                    "display_name": {"type": "string", "nullable": True},
                    "email": {"type": "string", "nullable": True},
                    "roles": {"type": "array", "items": {"type": "string"}},
                    "status": {"type": "string", "enum": ["active", "locked"]},
                    "has_password": {"type": "boolean"}, "has_totp": {"type": "boolean"},
                    "created": {"type": "number"}, "updated": {"type": "number"}}},
                "Token": {"type": "object", "required": ["id", "account", "name", "level", "created", "expires"],
                          "properties": {
                              "id": {"type": "string"}, "account": {"type": "string"}, "name": {"type": "string"},
                              "level": {"type": "string"}, "created": {"type": "number"},
                              "expires": {"type": "number"}, "created_by": {"type": "string"},
                              "last_used": {"type": "number", "nullable": True},
                              "revoked": {"type": "number", "nullable": True}}},
                "IssuedToken": {"allOf": [_ref("Token"), {"type": "object", "required": ["token"],
                                                          "properties": {"token": {"type": "string"}}}]},
                "Epoch": {"type": "object", "required": ["username", "epoch"], "properties": {
                    "username": {"type": "string"}, "epoch": {"type": "number"}}},
                "Jwt": {"type": "object", "required": ["access_token", "token_type", "expires_in"], "properties": {
                    "access_token": {"type": "string"}, "token_type": {"type": "string"},
                    "expires_in": {"type": "integer"}, "issued_token_type": {"type": "string"}}},
            },
    }
