"""Handlers of the admin API, the token exchange and the JWKS.

Thin: parse and validate the request, ask `TokenService` (which applies the
rules and writes the audit lines), shape the answer. Every refusal is a JSON
`{"error", "error_description"}` with the status the OpenAPI document lists.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from forwardauth.core.durations import parse_duration
from forwardauth.services.account_names import USERNAME_RE, check_account_name
from forwardauth.state.base import StoreUnavailable
from forwardauth.state.records import Account, AccountError, TokenMeta, check_groups
from forwardauth.tokens import rules
from forwardauth.tokens import settings as settings_mod
from forwardauth.tokens.api.auth import TOKENS, Caller, caller
from forwardauth.tokens.index import Principal
from forwardauth.tokens.jwt import JWKS_MAX_AGE, JwtError
from forwardauth.tokens.service import Conflict, Denied, Invalid, NotFound, TokenService, actor_of
from forwardauth.web.api import ApiError, body, error_response, fail, json_response
from forwardauth.web.context import CTX, AppContext, Route
from forwardauth.web.unavailable import report

_TOKEN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guard(fn: Handler) -> Handler:
    """Map the service's refusals to statuses; never a 500 for bad input."""

    async def run(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except ApiError as exc:
            return error_response(exc)
        except Denied as exc:
            return error_response(ApiError(403, "forbidden", str(exc)))
        except NotFound as exc:
            return error_response(ApiError(404, "not_found", str(exc)))
        except Conflict as exc:
            return error_response(ApiError(409, "conflict", str(exc)))
        except (Invalid, AccountError) as exc:
            return error_response(ApiError(400, "invalid_request", str(exc)))
        except StoreUnavailable as exc:
            report(request, exc)  # the log line, and the attempt's audit line (a token exchange)
            return error_response(ApiError(503, "unavailable", "the state store is unavailable", {"Retry-After": "5"}))

    return run


def _ctx(request: web.Request) -> AppContext:
    return request.app[CTX]


def _service(ctx: AppContext) -> TokenService:
    return TokenService(ctx.runtime.config, ctx.runtime.keyring, ctx.store, ctx.audit.emit)


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not USERNAME_RE.match(name):
        fail(400, "invalid_request", "account names are 1-64 of a-z 0-9 . _ @ + -")
    return name


def _account(request: web.Request) -> str:
    """The {name} of the routes about an existing account: a username, or an
    upstream identity's account exactly as listed ("oidc:<sub>")."""
    name = request.match_info["name"]
    try:
        return check_account_name(name)
    except AccountError:
        fail(400, "invalid_request", "account names are 1-64 of a-z 0-9 . _ @ + -, or <source>:<sub> for an "
                                     "upstream identity's account as listed")


async def _who(request: web.Request, svc: TokenService) -> tuple[rules.Actor, Caller]:
    c = await caller(request)
    acct = await svc.accounts.get_account(c.session.sub)
    if acct is None:
        fail(401, "invalid_token", "the token's account no longer exists")
    return actor_of(acct), c


async def _actor(request: web.Request, svc: TokenService) -> rules.Actor:
    return (await _who(request, svc))[0]


async def _sync(ctx: AppContext) -> None:
    """After an epoch write: this process's revocation snapshot is reloaded
    before the answer, so it is in force here at once (other replicas: pub/sub
    or their next refresh)."""
    await ctx.revocations.refresh(ctx.store)


def _remember(request: web.Request, a: Account) -> None:
    """This process knows at once what it just wrote (others learn through the index refresh)."""
    index = request.app[TOKENS].index
    index.accounts = {**index.accounts, a.username: Principal(a.username, a.kind, a.email, a.display_name,
                                                              tuple(a.groups), a.status == "active")}


def account_view(a: Account) -> dict[str, Any]:
    return {"username": a.username, "kind": a.kind, "display_name": a.display_name, "email": a.email,
            "roles": list(a.groups), "status": a.status, "has_password": a.password_hash is not None,
            "has_totp": a.totp_secret_enc is not None, "created": a.created, "updated": a.updated}


def token_view(t: TokenMeta) -> dict[str, Any]:
    return {"id": t.id, "account": t.account, "name": t.name, "level": t.level, "created": t.created,
            "expires": t.expires, "created_by": t.created_by, "last_used": t.last_used, "revoked": t.revoked}


def _str(d: dict, key: str, pattern: re.Pattern | None = None, max_len: int = 256) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not 0 < len(v) <= max_len or (pattern is not None and not pattern.match(v)):
        fail(400, "invalid_request", f"{key}: invalid value")
    return v


def _roles(d: dict) -> tuple[str, ...]:
    v = d.get("roles", [])
    if not isinstance(v, list):
        fail(400, "invalid_request", "roles: must be a list of role names")
    try:
        return check_groups(v)
    except AccountError as exc:
        fail(400, "invalid_request", f"roles: {exc}")


# --- accounts ----------------------------------------------------------------


@_guard
async def list_accounts(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    actor = await _actor(request, svc)
    if not rules.may_admin(actor):
        raise Denied("only admins may list accounts")
    return json_response([account_view(a) for a in await svc.accounts.list_accounts()])


@_guard
async def create_account(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    actor = await _actor(request, svc)
    if not rules.may_admin(actor):
        raise Denied("only admins may create accounts")
    d = await body(request, {"username", "kind", "display_name", "email", "roles"}, {"username"})
    username = _str(d, "username", USERNAME_RE, 64)
    kind = d.get("kind", "human")
    if kind not in ("human", "system"):
        fail(400, "invalid_request", "kind: must be human or system")
    acct = await svc.create_account(actor, username, kind=kind,  # type: ignore[arg-type]
                                    display_name=_str(d, "display_name"), email=_str(d, "email"), roles=_roles(d))
    _remember(request, acct)
    return json_response(account_view(acct), 201)


@_guard
async def get_account(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    name = _account(request)
    actor = await _actor(request, svc)
    if not (rules.may_admin(actor) or actor.name == name):
        raise Denied(f"{actor.name} may not read account {name}")
    return json_response(account_view(await svc.account(name)))


@_guard
async def delete_account(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    name = _account(request)
    actor = await _actor(request, svc)
    await svc.delete_account(actor, name)
    await _sync(ctx)
    index = request.app[TOKENS].index
    index.accounts = {k: v for k, v in index.accounts.items() if k != name}
    index.tokens = {k: v for k, v in index.tokens.items() if v.account != name}
    return web.Response(status=204)


@_guard
async def set_roles(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    name = _account(request)
    actor = await _actor(request, svc)
    if not rules.may_admin(actor):
        raise Denied("only admins may change roles")
    d = await body(request, {"roles"}, {"roles"})
    acct = await svc.set_roles(actor, name, _roles(d))
    await _sync(ctx)
    _remember(request, acct)
    return json_response(account_view(acct))


def _status_change(method: str) -> Handler:
    """POST /accounts/{name}/lock and /unlock: TokenService.lock / .unlock, then
    this replica's revocations and index at once (others follow by pub/sub)."""

    @_guard
    async def handler(request: web.Request) -> web.Response:
        ctx = _ctx(request)
        svc = _service(ctx)
        name = _account(request)
        actor = await _actor(request, svc)
        acct = await getattr(svc, method)(actor, name)
        await _sync(ctx)
        _remember(request, acct)
        return json_response(account_view(acct))

    return handler


lock_account = _status_change("lock")
unlock_account = _status_change("unlock")


@_guard
async def revoke_sessions(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    name = _account(request)
    actor = await _actor(request, svc)
    epoch = await svc.revoke_sessions(actor, name)
    await _sync(ctx)
    return json_response({"username": name, "epoch": epoch})


# --- tokens ------------------------------------------------------------------


@_guard
async def list_tokens(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    name = _name(request)
    actor = await _actor(request, svc)
    return json_response([token_view(t) for t in await svc.list(actor, name)])


@_guard
async def list_all_tokens(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    actor = await _actor(request, svc)
    return json_response([token_view(t) for t in await svc.list(actor, None)])


@_guard
async def issue_token(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    name = _name(request)
    actor, c = await _who(request, svc)
    if c.narrowed:
        # Its limits (expiry, level, host, path, method) would not pass to
        # what it issues: a narrowed token would mint a wider one.
        raise Denied("a narrowed token (attenuated, or issued with host, path or method limits) may not issue "
                     "tokens; use a token as it was issued")
    d = await body(request, {"name", "lifetime", "level", "host", "path", "method"})
    lifetime = d.get("lifetime")
    if lifetime is not None:
        try:
            lifetime = parse_duration(lifetime)
        except ValueError:
            fail(400, "invalid_request", "lifetime: a duration like 30d or a number of seconds")
    restrictions = []
    for key in ("host", "path", "method"):
        v = _str(d, key, None, 400)
        if v is not None:
            restrictions.append(f"{key}={v}")
    issued = await svc.issue(actor, name, name=_str(d, "name", None, 64) or "default", lifetime=lifetime,
                             level=_str(d, "level", None, 64), restrictions=tuple(restrictions))
    request.app[TOKENS].index.tokens = {**request.app[TOKENS].index.tokens, issued.meta.id: issued.meta}
    _remember(request, await svc.account(name))
    return json_response({"token": issued.token, **token_view(issued.meta)}, 201)


@_guard
async def revoke_token(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    svc = _service(ctx)
    token_id = request.match_info["token_id"]
    if not _TOKEN_ID_RE.match(token_id):
        fail(400, "invalid_request", "token ids are lower-case UUIDs")
    actor = await _actor(request, svc)
    meta = await svc.revoke(actor, token_id)
    index = request.app[TOKENS].index
    index.tokens = {k: v for k, v in index.tokens.items() if k != token_id}
    return json_response(token_view(meta))


# --- database credentials ------------------------------------------------------


@_guard
async def put_dbcreds(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    name = _name(request)
    actor = await _actor(request, svc)
    d = await body(request, {"host", "port", "database", "username", "password", "sslmode"},
                   {"host", "database", "username", "password"})
    await svc.set_dbcreds(actor, name, d)
    return web.Response(status=204)


@_guard
async def get_dbcreds(request: web.Request) -> web.Response:
    svc = _service(_ctx(request))
    name = _name(request)
    actor = await _actor(request, svc)
    return json_response(await svc.get_dbcreds(actor, name))


# --- exchange and JWKS ---------------------------------------------------------


@_guard
async def exchange(request: web.Request) -> web.Response:
    """A bearer token (or a human's password + TOTP) for a short-lived JWT."""
    ctx = _ctx(request)
    cfg = ctx.runtime.config
    s = settings_mod.settings(cfg)
    now = time.time()
    if request.headers.get("Authorization"):
        c = await caller(request)
        if c.restricted:
            fail(403, "forbidden", "a token limited to hosts, paths or methods cannot be exchanged: "
                                   "a JWT could not carry those limits")
        # Level and expiry do pass: the JWT's level is the token's lowest, and
        # it expires no later than the token.
        session = c.session
        claims: dict[str, object] = {"sub": session.sub, "level": session.level, "tid": session.sid, "src": "token"}
        groups, email, until = session.groups, session.email, session.exp
        event_reason = f"token {session.sid} exchanged for a JWT"
    else:
        d = await body(request, {"username", "password", "totp"}, {"username", "password"})
        username, password, code = d.get("username"), d.get("password"), d.get("totp")
        if not isinstance(username, str) or not isinstance(password, str) or not 0 < len(password) <= 1024 \
                or not 0 < len(username) <= 64 or (code is not None and not isinstance(code, str)):
            fail(400, "invalid_request", "username and password must be strings (totp too, when given)")
        if ctx.password_grant is None:
            fail(400, "unsupported_grant_type", "password sign-in is off (local.enabled)")
        grant = await ctx.password_grant(request, username, password, code)
        claims = {"sub": grant.user, "level": grant.level, "src": "password"}
        groups, email, until = grant.groups, grant.email, now + 86400
        event_reason = "password exchanged for a JWT"
    if groups:
        claims["groups"] = list(groups)
    if email:
        claims["email"] = email
    life = min(s.jwt.lifetime, until - now)
    if life < 1:
        fail(401, "invalid_token", "the credential expires too soon to exchange")
    try:
        jwt = request.app[TOKENS].signer(ctx.runtime).sign(claims, audience=s.jwt.audience, lifetime=life, now=now)
    except JwtError as exc:
        fail(503, "unavailable", str(exc))
    ctx.audit.emit("token_exchanged", user=str(claims["sub"]), level=str(claims["level"]), reason=event_reason)
    return json_response({"access_token": jwt, "token_type": "Bearer", "expires_in": int(life),
                          "issued_token_type": "urn:ietf:params:oauth:token-type:jwt"})


async def jwks(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        keys = request.app[TOKENS].signer(ctx.runtime).public_jwks
    except JwtError:
        keys = {"keys": []}
    return web.Response(text=json.dumps(keys), content_type="application/json",
                        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})


def routes() -> tuple[Route, ...]:
    """The admin API, the token exchange and the JWKS."""
    return (
        Route("GET", "/.well-known/jwks.json", jwks),
        Route("POST", "/api/v1/token", exchange),
        Route("GET", "/api/v1/accounts", list_accounts),
        Route("POST", "/api/v1/accounts", create_account),
        Route("GET", "/api/v1/accounts/{name}", get_account),
        Route("DELETE", "/api/v1/accounts/{name}", delete_account),
        Route("PUT", "/api/v1/accounts/{name}/roles", set_roles),
        Route("POST", "/api/v1/accounts/{name}/lock", lock_account),
        Route("POST", "/api/v1/accounts/{name}/unlock", unlock_account),
        Route("POST", "/api/v1/accounts/{name}/revoke-sessions", revoke_sessions),
        Route("GET", "/api/v1/accounts/{name}/tokens", list_tokens),
        Route("POST", "/api/v1/accounts/{name}/tokens", issue_token),
        Route("GET", "/api/v1/tokens", list_all_tokens),
        Route("DELETE", "/api/v1/tokens/{token_id}", revoke_token),
        Route("PUT", "/api/v1/accounts/{name}/dbcreds", put_dbcreds),
        Route("GET", "/api/v1/accounts/{name}/dbcreds", get_dbcreds),
    )
